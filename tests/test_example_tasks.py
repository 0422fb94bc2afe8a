"""The example tasks in examples/, each built on the harness kit, as a user runs them: `check`,
`experiment`, and a short search of the maximised one. Also the flags that shape one run."""

import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
AUTORESEARCH = [sys.executable, "-m", "autoresearch.cli"]


def autoresearch(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*AUTORESEARCH, *map(str, args)], capture_output=True, text=True)


def spirals_with(folder: Path, replaced: dict[str, str]) -> Path:
    """The spirals example copied into `folder`/task, with the files in `replaced` rewritten."""
    task = folder / "task"
    task.mkdir()
    for name in ("prepare.py", "program.md", "train.py"):
        text = replaced.get(name)
        (task / name).write_text(text if text is not None
                                 else (ROOT / "examples" / "spirals" / name).read_text())
    return task


@pytest.mark.parametrize(("example", "objective"), [
    ("spirals", "objective: maximize `val_accuracy`"),
    ("charlm", "objective: minimize `val_loss`"),
])
def test_check_finds_no_problem_in_the_examples(example, objective):
    checked = autoresearch("check", ROOT / "examples" / example, "--budget", "2", "--grace", "90")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert objective in checked.stdout
    assert "a 2 s run of train.py: ok" in checked.stdout
    tracked = next(line for line in checked.stdout.splitlines() if line.startswith("tracked"))
    named = re.findall(r"[a-z_]+(?=`|,|\))", tracked.split(":", 1)[1])
    assert len(named) == len(set(named)), f"a metric is named twice: {tracked}"
    assert checked.stdout.strip().endswith("no problems found")


def test_the_charlm_example_tracks_what_the_seed_goal_file_names():
    done = autoresearch("experiment", ROOT / "examples" / "charlm", "--budget", "2", "--grace",
                        "90", "--json")
    record = json.loads(done.stdout)
    assert record["status"] == "ok", record["message"]
    assert record["val_loss"] < 4.6  # ln(96): a uniform guess
    for metric in ("val_perplexity", "loss_spikes", "inference_chars_per_s"):
        assert metric in record["metrics"]
    assert record["metrics"]["params"] < 1_000_000


def test_the_spirals_example_trains_above_chance_within_its_size_limit():
    done = autoresearch("experiment", ROOT / "examples" / "spirals", "--budget", "2", "--grace",
                        "90", "--json")
    record = json.loads(done.stdout)
    assert record["status"] == "ok", record["message"]
    assert record["val_accuracy"] > 0.25  # four classes: a guess gets a quarter
    for metric in ("val_loss", "inference_points_per_s"):
        assert metric in record["metrics"]
    assert record["metrics"]["params"] < 50_000


def test_check_names_a_goal_the_harness_cannot_serve_and_exits_2(tmp_path):
    task = spirals_with(tmp_path, {"program.md": "# Goal\nMaximize validation accuracy with as "
                                                 "few parameters as possible\n"})
    checked = autoresearch("check", task)
    assert checked.returncode == 2
    assert checked.stderr.strip() == (
        "Error: line 2: the goal's metric is ambiguous: it names 'validation accuracy' "
        "(val_accuracy), 'parameters' (params); put the result key to optimise in backticks")


def test_check_of_a_train_py_that_crashes_at_once_names_the_error_and_no_timings(tmp_path):
    task = spirals_with(tmp_path, {"train.py": "1 / 0\n"})
    checked = autoresearch("check", task, "--budget", "2")
    assert checked.returncode == 2
    problems = [line for line in checked.stdout.splitlines() if line.startswith("problem:")]
    assert problems == ["problem: the starting train.py does not score: train.py exited with "
                        "status 1: ZeroDivisionError: division by zero"]
    assert "grace" not in checked.stdout and "scoring took" not in checked.stdout


def test_experiment_gives_train_py_the_threads_of_a_search_slot(tmp_path, monkeypatch):
    task = spirals_with(tmp_path, {"train.py": "import os\nraise SystemExit('threads=' + "
                                               "os.environ.get('OMP_NUM_THREADS', 'unset'))\n"})
    cpus, gpus = os.cpu_count(), torch.cuda.device_count()
    slot = max(cpus // gpus, 1) if gpus else 1  # as engine/search/ray_pool.py shares cores out
    monkeypatch.setenv("OMP_NUM_THREADS", str(slot + 1))  # the user's shell does not count
    done = autoresearch("experiment", task, "--budget", "1", "--json")
    assert json.loads(done.stdout)["message"].endswith(f"threads={slot}")


def test_experiment_grace_is_the_time_allowed_past_the_budget(tmp_path):
    task = spirals_with(tmp_path, {"train.py": "import time\ntime.sleep(30)\n"})
    done = autoresearch("experiment", task, "--budget", "1", "--grace", "1", "--json")
    record = json.loads(done.stdout)
    assert record["status"] == "timeout"
    assert record["message"] == "train.py ran past its budget plus 1 s of grace and was killed"
    assert record["train_wall_s"] < 10


@pytest.fixture(scope="module")
def spirals_search(tmp_path_factory) -> tuple[Path, str]:
    """A short search of the maximised example: its run dir and what `search` printed."""
    run = tmp_path_factory.mktemp("spirals") / "run"
    searched = autoresearch("search", ROOT / "examples" / "spirals", "--gpus", "2", "--agents",
                            "2", "--budget", "2", "--grace", "90", "--max-experiments", "4",
                            "--noise-seeds", "2", "--no-tune", "--quiet", "--run-dir", run)
    assert searched.returncode == 0, searched.stderr
    return run, searched.stdout


def test_a_short_search_of_the_maximised_example_keeps_its_highest_accuracy(spirals_search):
    run, printed = spirals_search
    assert "Leaderboard (val_accuracy, higher is better" in printed
    assert json.loads((run / "run.json").read_text())["options"]["grace_s"] == 90
    status = json.loads(autoresearch("status", run, "--json").stdout)
    rows = pq.read_table(run / "results").to_pylist()
    # The starting code scores the mean of its noise runs; a mutation that beats it heads its
    # island. The best is the highest of those, not the lowest (how quickly each trains on a
    # busy machine decides which one that is).
    start = statistics.fmean(row["val_accuracy"] for row in rows if row["kind"] == "baseline")
    mutations = [row["val_accuracy"] for row in rows
                 if row["kind"] == "mutation" and row["status"] == "ok"]
    assert status["best"]["objective"] == pytest.approx(max([start, *mutations]))
    assert status["best"]["objective"] > 0.25
    assert {"val_loss", "inference_points_per_s"} <= set(rows[0])


def test_the_search_status_and_report_show_what_the_goal_file_tracks(spirals_search):
    # The goal file: "Track validation loss, inference speed".
    run, printed = spirals_search
    lines = printed.splitlines()
    header = lines[next(k for k, line in enumerate(lines) if line.startswith("Leaderboard")) + 1]
    assert header.endswith("val_accuracy    val_loss  inference_points_per_s  description")
    best = json.loads(autoresearch("status", run, "--json").stdout)["best"]
    assert list(best["metrics"]) == ["val_loss", "inference_points_per_s"]
    assert best["metrics"]["val_loss"] > 0 and best["metrics"]["inference_points_per_s"] > 0
    tracked = autoresearch("status", run).stdout.splitlines()[2]
    assert re.fullmatch(r"  tracked: val_loss [\d.]+ · inference_points_per_s [\d.,]+", tracked)
    assert autoresearch("report", run).returncode == 0
    assert tracked in (run / "report.html").read_text()
