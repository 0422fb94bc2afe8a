"""The `autoresearch` commands as a user types them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

AUTORESEARCH = [sys.executable, "-m", "autoresearch.cli"]


def autoresearch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*AUTORESEARCH, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_init_makes_a_task_from_the_template(tmp_path):
    made = autoresearch("init", tmp_path / "my-task")
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in (tmp_path / "my-task").iterdir()) == [
        "prepare.py", "program.md", "train.py"]
    assert f"autoresearch check {tmp_path / 'my-task'}" in made.stdout  # the task doctor first


def test_init_refuses_a_folder_with_files_in_it(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    refused = autoresearch("init", tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"Error: {tmp_path} already exists and is not an empty folder"


def test_experiment_json_prints_one_object_with_status_and_objective(tmp_path):
    autoresearch("init", tmp_path / "task")
    ran = autoresearch("experiment", tmp_path / "task", "--budget", "2", "--json")
    assert ran.returncode == 0, ran.stderr
    record = json.loads(ran.stdout)
    assert record["status"] == "ok"
    assert record["val_bpb"] < 8.5
    assert record["metrics"]["params"] == 858_880


def test_experiment_memory_limit_kills_a_candidate_that_eats_memory(tmp_path):
    autoresearch("init", tmp_path / "task")
    (tmp_path / "task" / "train.py").write_text(
        "import time\nhoard = []\nwhile True:\n    hoard.append(bytearray(50 * 2**20))\n"
        "    time.sleep(0.01)\n")
    ran = autoresearch("experiment", tmp_path / "task", "--budget", "20", "--memory-limit", "0.5",
                       "--json")
    assert ran.returncode == 0, ran.stderr
    record = json.loads(ran.stdout)
    assert record["status"] == "invalid"
    assert "more than the memory limit of 0.5 GB" in record["message"]


def test_experiment_exits_0_for_a_crashed_candidate(tmp_path):
    autoresearch("init", tmp_path / "task")
    (tmp_path / "task" / "train.py").write_text("1 / 0\n")
    ran = autoresearch("experiment", tmp_path / "task", "--budget", "2")
    assert ran.returncode == 0, ran.stderr
    assert "status: crash" in ran.stdout
    assert "ZeroDivisionError" in ran.stdout


@pytest.mark.parametrize(("goal_file", "message"), [
    ("# Goal\nA model\n", "Error: line 2: the goal does not say whether to minimise or maximise"),
    ("# Goal\nMinimize loss\n# Constraints\n- Training time: later\n",
     "Error: line 4: cannot read a value from 'Training time: later'"),
])
def test_experiment_refuses_a_bad_goal_file_in_one_sentence(tmp_path, goal_file, message):
    autoresearch("init", tmp_path / "task")
    (tmp_path / "task" / "program.md").write_text(goal_file)
    refused = autoresearch("experiment", tmp_path / "task")
    assert refused.returncode == 2
    assert refused.stderr.strip() == message


@pytest.mark.parametrize("args", [["experiment", "no-such-task"],
                                  ["experiment", ".", "--budget", "0"]])
def test_bad_arguments_exit_2(tmp_path, args):
    refused = autoresearch(*args, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stdout == ""


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=me", "-c", "user.email=me@example.com",
                           *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def test_search_runs_from_the_command_line_and_its_branches_export_to_the_task(tmp_path):
    task = tmp_path / "task"
    autoresearch("init", task)
    git("init", "-q", "-b", "main", cwd=task)
    git("add", ".", cwd=task)
    git("commit", "-qm", "my task", cwd=task)
    ran = autoresearch("search", tmp_path / "task", "--gpus", "2", "--agents", "2",
                       "--budget", "1", "--grace", "90", "--max-experiments", "4",
                       "--noise-seeds", "2", "--quiet", "--run-dir", tmp_path / "run")
    assert ran.returncode == 0, ran.stderr
    assert "Leaderboard (val_bpb, lower is better" in ran.stdout
    assert "starting code:" in ran.stdout
    assert (tmp_path / "run" / "results.tsv").read_text().startswith("commit\tval_bpb")
    assert "noise: sigma" in (tmp_path / "run" / "driver.log").read_text()
    exported = autoresearch("export", tmp_path / "run")
    assert exported.returncode == 0, exported.stderr
    branches = git("branch", "--list", "autoresearch/*", "--format=%(refname:short)", cwd=task)
    assert branches.split() == ["autoresearch/run/baseline", "autoresearch/run/island-0",
                                "autoresearch/run/island-1"]
    assert git("branch", "--show-current", cwd=task).strip() == "main"
    assert git("status", "--porcelain", cwd=task) == ""
    assert "my task" in git("log", "--format=%s", "autoresearch/run/baseline", cwd=task)


def test_a_search_without_agents_has_an_island_for_each_gpu(tmp_path):
    # An island has one call to its agent in flight at a time: 4 islands cannot keep a large
    # cluster busy when each call takes a while.
    autoresearch("init", tmp_path / "task")
    ran = autoresearch("search", tmp_path / "task", "--gpus", "6", "--budget", "1",
                       "--max-experiments", "2", "--noise-seeds", "2", "--no-tune", "--quiet",
                       "--run-dir", tmp_path / "run")
    assert ran.returncode == 0, ran.stderr
    assert json.loads((tmp_path / "run" / "run.json").read_text())["options"]["agents"] == 6
    population = json.loads((tmp_path / "run" / "population.json").read_text())
    assert len(population["islands"]) == 6


def test_search_refuses_a_run_dir_that_holds_a_run(tmp_path):
    autoresearch("init", tmp_path / "task")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    refused = autoresearch("search", tmp_path / "task", "--run-dir", tmp_path / "run")
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"Error: {tmp_path / 'run'} already holds a run; choose another --run-dir")


def test_export_refuses_a_folder_that_is_not_a_run_dir(tmp_path):
    refused = autoresearch("export", tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip() == f"Error: {tmp_path} is not a run dir (it has no run.json)"
