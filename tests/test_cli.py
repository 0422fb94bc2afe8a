"""The `autoresearch` commands as a user types them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

AUTORESEARCH = [sys.executable, "-m", "engine.cli"]


def autoresearch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*AUTORESEARCH, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


def test_init_makes_a_task_from_the_template(tmp_path):
    made = autoresearch("init", tmp_path / "my-task")
    assert made.returncode == 0, made.stderr
    assert sorted(p.name for p in (tmp_path / "my-task").iterdir()) == [
        "prepare.py", "program.md", "train.py"]


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
