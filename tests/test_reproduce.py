"""`autoresearch reproduce`: an experiment trained again from its commit, with its seed and
budget, and judged against the noise the search measured."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from agents import make_agents
from benchmarks.null_experiment import null_experiment
from engine.driver import Search, SearchOptions
from engine.experiment.task import load_task, template_path
from engine.reproduce import format_reproduction, judge

AUTORESEARCH = [sys.executable, "-m", "autoresearch.cli"]


@pytest.fixture(scope="module")
def real_run(ray_local, tmp_path_factory):
    """A real search of the bundled task: the starting code trained on two seeds. The budget is
    spent before train.py's first step (its loop's first check already finds it so), so a run's
    score depends on its seed alone, the model as initialised, and not on how many steps a busy
    machine fits into a second."""
    options = SearchOptions(agents=1, budget_s=1e-12, grace_s=60, max_experiments=2,
                            noise_seeds=2)
    search = Search(load_task(template_path()), tmp_path_factory.mktemp("real") / "run",
                    options, make_agents("offline", 1, 0))
    search.run()
    return search


def test_reproduce_trains_an_experiment_again_and_it_matches_within_the_noise(real_run):
    done = subprocess.run([*AUTORESEARCH, "reproduce", str(real_run.run_dir), "e00002",
                           "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    recorded = next(r for r in real_run.store.rows() if r["exp_id"] == "e00002")
    assert recorded["steps"] == 0
    assert outcome["seed"] == recorded["seed"] and outcome["commit"] == recorded["commit"]
    assert outcome["recorded"] == {"status": "ok", "objective": recorded["objective"]}
    assert outcome["reproduced"]["status"] == "ok"
    assert outcome["sigma"] == real_run.population.sigma > 0
    assert abs(outcome["difference"]) <= 2 * outcome["sigma"]
    assert outcome["matches"] is True
    assert outcome["verdict"].startswith("matches within the noise")


def test_a_score_more_than_two_sigma_away_does_not_match():
    matches, verdict = judge("ok", 3.0, "ok", 3.05, 0.02)
    assert matches is False
    assert verdict == "does not match: |difference| 0.050000 > 2σ = 0.040000"


def test_a_run_that_fails_where_the_record_scored_does_not_match():
    assert judge("ok", 3.0, "crash", None, 0.02) == (
        False, "does not match: recorded ok, reproduced crash")


def test_without_a_noise_estimate_the_verdict_says_it_cannot_judge():
    matches, verdict = judge("ok", 3.0, "ok", 3.0, None)
    assert matches is None
    assert verdict.startswith("cannot judge: the run has no noise estimate")


def test_reproduce_prints_both_scores_the_difference_the_noise_and_the_verdict():
    outcome = {"metric": "val_bpb", "sigma": 0.02, "difference": 0.01,
               "recorded": {"status": "ok", "objective": 3.0},
               "reproduced": {"status": "ok", "objective": 3.01, "message": ""},
               "verdict": "matches within the noise (|difference| <= 2σ = 0.040000)"}
    assert format_reproduction(outcome).splitlines() == [
        "recorded:   val_bpb 3.000000 (ok)",
        "reproduced: val_bpb 3.010000 (ok)",
        "difference: +0.010000 (noise σ 0.020000)",
        "verdict:    matches within the noise (|difference| <= 2σ = 0.040000)",
    ]


def test_reproduce_gives_train_py_the_threads_of_a_search_slot(ray_local, tmp_path, monkeypatch):
    task = tmp_path / "task"
    shutil.copytree(template_path(), task)
    (task / "train.py").write_text(
        "import os\nraise SystemExit('threads=' + os.environ.get('OMP_NUM_THREADS', 'unset'))\n")
    # The null experiment scores the code without running it: a run whose train.py only tells
    # the threads it was given has rows to reproduce.
    options = SearchOptions(agents=1, budget_s=0.05, max_experiments=2, noise_seeds=2)
    search = Search(load_task(task), tmp_path / "run", options, make_agents("offline", 1, 0),
                    run=null_experiment)
    search.run()
    cpus, gpus = os.cpu_count(), torch.cuda.device_count()
    slot = max(cpus // gpus, 1) if gpus else 1  # as engine/search/ray_pool.py shares cores out
    monkeypatch.setenv("OMP_NUM_THREADS", str(slot + 1))  # the user's shell does not count
    done = subprocess.run([*AUTORESEARCH, "reproduce", str(search.run_dir), "e00001", "--json"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["reproduced"]["message"].endswith(f"threads={slot}")
