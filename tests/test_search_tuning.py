"""Knob tuning inside a search: Optuna trials through Ray Tune on the same GPUs as the agents."""

import dataclasses
import json

import pytest

from agents import make_agents
from engine.driver import Search, SearchOptions
from engine.rundata import read_rows

pytestmark = pytest.mark.usefixtures("ray_local")


def test_tuning_runs_real_trials_beside_the_agents_and_commits_a_better_setting(
        slow_start_task, tmp_path):
    source = slow_start_task.files["train.py"].replace(
        "LEARNING_RATE = 1e-4", "LEARNING_RATE = 1e-4  # tune: 1e-4..1e-2 log")
    task = dataclasses.replace(slow_start_task, files={**slow_start_task.files,
                                                       "train.py": source})
    options = SearchOptions(agents=1, budget_s=3, grace_s=30, max_experiments=12, seed=2,
                            noise_seeds=2, tune_trials=4, tune_every=1, tune_share=0.75)
    search = Search(task, tmp_path / "run", options, make_agents("offline", 1, 2))
    search.run()
    rows = read_rows(search.run_dir / "results")
    trials = [r for r in rows if r["kind"] == "tune"]
    mutations = [r for r in rows if r["kind"] == "mutation" and r["started_at"]]
    assert len(trials) >= 3
    assert all("LEARNING_RATE" in json.loads(r["knobs"]) and r["trial"] for r in trials)
    assert any(t["started_at"] < m["finished_at"] and m["started_at"] < t["finished_at"]
               for t in trials for m in mutations), "no trial ran beside a mutation"

    start = min(r["objective"] for r in rows if r["kind"] == "baseline" and r["objective"])
    best = min((r for r in trials if r["status"] == "ok"), key=lambda r: r["objective"])
    assert best["objective"] < start
    assert best["description"].startswith("tune: LEARNING_RATE 0.0001 -> ")
    tuned = search.repo.files_at(best["commit"])["train.py"]
    rate = json.loads(best["knobs"])["LEARNING_RATE"]
    assert f"LEARNING_RATE = {rate!r}" in tuned or f"LEARNING_RATE = {rate:g}" in tuned
    assert best["exp_id"] in search.repo.note(best["commit"])
