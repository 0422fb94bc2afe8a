"""What the engine makes of a harness's JSON line: the keys it must hold, and the messages a user
gets when it leaves one out. The harnesses here are small prepare.py files that print a fixed
line, as a hand-written harness might; the candidate only hands over a model file."""

import json
import subprocess
import sys

import pytest

from engine.experiment.records import metric_columns
from engine.experiment.runner import run_experiment
from engine.experiment.spec import GoalFileError
from engine.experiment.task import load_task
from tests.test_spec import SEED_GOAL_FILE

HANDS_OVER_A_MODEL = """\
import os
open(os.environ["AUTORESEARCH_MODEL_OUT"], "w").write("a model")
"""


def harness_printing(line: dict, metrics: dict | None = None) -> str:
    declared = "" if metrics is None else f"METRICS = {metrics!r}\n"
    return f"{declared}import json\nprint(json.dumps({line!r}))\n"


def make_task(folder, harness: str, goal: str = SEED_GOAL_FILE):
    folder.mkdir()
    (folder / "program.md").write_text(goal)
    (folder / "prepare.py").write_text(harness)
    (folder / "train.py").write_text(HANDS_OVER_A_MODEL)
    return load_task(folder)


LM_METRICS = {"val_loss": "validation loss", "val_perplexity": "validation perplexity",
              "inference_chars_per_s": "inference speed", "params": "parameters"}
LM_LINE = {"valid": True, "val_loss": 1.5, "val_perplexity": 4.48,
           "inference_chars_per_s": 1e5, "params": 900_000}


def test_validation_loss_is_the_key_the_harness_declares_and_its_metrics_are_recorded(tmp_path):
    task = make_task(tmp_path / "task", harness_printing(LM_LINE, LM_METRICS))
    assert task.spec.objective.metric == "val_loss"
    result = run_experiment(task.files, task.spec, seed=0, budget_s=1)
    assert result.status == "ok", result.message
    assert result.objective == 1.5
    assert result.metrics["inference_chars_per_s"] == 1e5
    # The goal file's tracked metrics are columns of the results store, beside the objective.
    for tracked in ("val_perplexity", "loss_spikes", "inference_chars_per_s"):
        assert tracked in metric_columns(task.spec)


def test_a_size_limit_the_harness_does_not_measure_is_refused_before_any_training(tmp_path):
    undeclared = {key: value for key, value in LM_METRICS.items() if key != "params"}
    with pytest.raises(GoalFileError, match="line 6: the model size limit cannot be enforced"):
        make_task(tmp_path / "task", harness_printing(LM_LINE, undeclared))


def test_a_harness_that_declares_nothing_and_reports_no_params_fails_the_size_limit(tmp_path):
    line = {"valid": True, "val_bpb": 1.5}
    task = make_task(tmp_path / "task", harness_printing(line))
    result = run_experiment(task.files, task.spec, seed=0, budget_s=1)
    assert result.status == "invalid"
    assert result.message == ("the goal file allows fewer than 1,000,000 parameters, but "
                              "prepare.py reported no `params` to check it by")


def test_a_harness_line_without_valid_says_so(tmp_path):
    line = {key: value for key, value in LM_LINE.items() if key != "valid"}
    task = make_task(tmp_path / "task", harness_printing(line, LM_METRICS))
    result = run_experiment(task.files, task.spec, seed=0, budget_s=1)
    assert result.status == "crash"
    assert result.message == (
        "prepare.py printed a result without `valid` (true, or false with a `reason`); it "
        "reported: val_loss, val_perplexity, inference_chars_per_s, params")


def test_a_harness_line_without_the_objective_says_so(tmp_path):
    line = {key: value for key, value in LM_LINE.items() if key != "val_loss"}
    task = make_task(tmp_path / "task", harness_printing(line, LM_METRICS))
    result = run_experiment(task.files, task.spec, seed=0, budget_s=1)
    assert result.status == "crash"
    assert result.message == (
        "prepare.py printed a result without `val_loss`, the goal file's objective; it "
        "reported: valid, val_perplexity, inference_chars_per_s, params")


def test_a_harness_that_prints_no_json_line_says_so(tmp_path):
    task = make_task(tmp_path / "task", f"METRICS = {LM_METRICS!r}\nprint('scored!')\n")
    result = run_experiment(task.files, task.spec, seed=0, budget_s=1)
    assert result.status == "crash"
    assert result.message == ("`python prepare.py evaluate` printed no JSON line (its score); "
                              "its last line: scored!")


def test_a_refusal_without_a_reason_says_none_was_given(tmp_path):
    task = make_task(tmp_path / "task", harness_printing({**LM_LINE, "valid": False}, LM_METRICS))
    result = run_experiment(task.files, task.spec, seed=0, budget_s=1)
    assert result.status == "invalid"
    assert result.message == "the harness refused the model: no reason given"
    assert json.dumps(result.to_dict())


def test_the_kit_loads_nothing_of_the_engine_but_the_names_of_its_variables():
    # Every train.py and every scoring process imports the kit: the engine's own dependencies
    # (Ray, Arrow, the search) would only slow their start-up, which counts against the grace.
    shown = subprocess.run(
        [sys.executable, "-c", "import sys, autoresearch.kit\nprint(' '.join(sorted("
         "m for m in sys.modules if m.split('.')[0] in ('engine', 'ray', 'pyarrow'))))"],
        capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["engine", "engine.experiment", "engine.experiment.environment"]
