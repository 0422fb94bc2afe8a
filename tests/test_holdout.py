"""The holdout score: measured on data neither training nor selection sees, recorded and shown
beside the validation score, never selected on and never shown to an agent."""

import importlib.util
import json
import subprocess
import sys

import pytest

from agents.context import Templates, proposal_messages
from benchmarks.null_experiment import null_experiment
from engine.driver import Search, SearchOptions
from engine.experiment.spec import GoalFileError, parse_goal_file
from engine.experiment.task import load_task, template_path
from engine.search.pool import InProcessPool
from engine.views.plots import progress
from engine.views.rundata import load_run
from tests.conftest import ScriptedAgent

# A holdout score no other number of the search comes near: if it reaches a prompt, it shows.
HOLDOUT_GAP = 4.4444


def bundled_harness():
    spec = importlib.util.spec_from_file_location("bundled_prepare", template_path() / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bundled_harness_splits_the_standard_library_three_ways_by_file():
    harness = bundled_harness()
    files = harness.source_files()
    by_split = {split: {name for name in files if harness.split_of(name) == split}
                for split in ("train", "val", "holdout")}
    assert set().union(*by_split.values()) == set(files)
    assert sum(map(len, by_split.values())) == len(files)  # each file in exactly one split
    data = harness.build()
    assert set(data) == set(by_split)
    # Each split holds its own files and nothing else, and both scored slices are full.
    stdlib = harness.Path(harness.sysconfig.get_paths()["stdlib"])
    for split, names in by_split.items():
        assert len(data[split]) == sum((stdlib / name).stat().st_size + 2 for name in names)
    assert min(len(data["val"]), len(data["holdout"])) > harness.EVAL_BYTES


def test_a_goal_cannot_select_on_the_holdout_score():
    declared = {"val_bpb": ("validation loss",), "holdout_val_bpb": ()}
    with pytest.raises(GoalFileError, match="holdout score: it is recorded beside the score and "
                                            "never selected on; name `val_bpb`"):
        parse_goal_file("# Goal\nMinimize `holdout_val_bpb`\n", declared)
    # No phrase leads to it either: "holdout loss" is not a metric of this harness.
    assert parse_goal_file("# Goal\nMinimize validation loss\n", declared).holdout == (
        "holdout_val_bpb")


def with_holdout(files, spec, seed, budget_s=None, **kwargs):
    """The null experiment, with a holdout score far from its validation score."""
    result = null_experiment(files, spec, seed, budget_s, **kwargs)
    result.metrics["holdout_val_bpb"] = result.objective + HOLDOUT_GAP
    return result


def test_holdout_scores_are_recorded_and_shown_beside_the_score_and_reach_no_prompt(tmp_path):
    task = load_task(template_path())
    slower = task.files["train.py"].replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 3e-4")
    agents = [ScriptedAgent([{"train.py": task.files["train.py"]}]), ScriptedAgent([])]
    task = type(task)(**{**task.__dict__, "files": {**task.files, "train.py": slower}})
    options = SearchOptions(agents=2, budget_s=0.05, tune_trials=0, max_experiments=24,
                            confirm_seeds=2)
    search = Search(task, tmp_path / "run", options, agents, run=with_holdout,
                    pool=lambda: InProcessPool(2))
    search.run()

    rows = [r for r in search.store.rows() if r["status"] == "ok"]
    assert rows and all(r["holdout_val_bpb"] == pytest.approx(r["objective"] + HOLDOUT_GAP)
                        for r in rows)
    assert search.population.promotions, "the winner was not promoted"

    # No agent was ever shown a holdout score, in its context or in the prompt made of it.
    templates = Templates.load()
    for agent in agents:
        for context in agent.contexts:
            prompt = json.dumps(proposal_messages(context, templates, 100_000))
            scores = [f"{r['holdout_val_bpb']:.4f}"[:5] for r in rows]
            assert not [score for score in scores if score in prompt]
            assert "holdout" not in prompt

    # status shows the holdout beside the score, for the best and down its lineage.
    shown = subprocess.run([sys.executable, "-m", "autoresearch.cli", "status",
                            str(search.run_dir)], capture_output=True, text=True).stdout
    best = search.population.best()
    assert f"· holdout {best.objective + HOLDOUT_GAP:.4f}"[:-1] in shown
    assert "lineage: val_bpb, holdout" in shown
    # The report's plot draws the holdout of the starting code and of each promotion.
    drawn = progress(load_run(search.run_dir))
    assert len(drawn.holdout) == 1 + len(search.population.promotions)
