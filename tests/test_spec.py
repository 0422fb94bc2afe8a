"""The goal file becomes a typed spec; goal files the engine cannot trust are refused."""

import pytest

from engine.experiment.spec import GoalFileError, parse_goal_file
from engine.experiment.task import template_path

SEED_GOAL_FILE = """\
# Goal
Minimize validation loss for character-level language model
# Constraints
- Training time: 5 minutes per experiment
- Hardware: Single GPU
- Model size: < 1M parameters
# Metrics
Track validation perplexity, training stability, inference speed
"""


def goal_file(constraints: str = "", goal: str = "Minimize validation loss",
              metrics: str = "Track inference speed") -> str:
    return f"# Goal\n{goal}\n# Constraints\n{constraints}\n# Metrics\n{metrics}\n"


def test_the_seed_goal_file_parses_into_what_it_says():
    spec = parse_goal_file(SEED_GOAL_FILE)
    assert spec.time_budget_s == 300
    assert spec.gpus_per_experiment == 1
    assert spec.param_limit == 1_000_000
    assert spec.objective.metric == "val_bpb"
    assert spec.objective.direction == "minimize"
    assert spec.metrics == ("val_perplexity", "loss_spikes", "inference_tokens_per_s")
    assert spec.editable_files == ("train.py",)
    assert set(spec.protected_files) == {"program.md", "prepare.py"}
    assert spec.not_enforced == ()
    assert spec.text == SEED_GOAL_FILE


def test_the_bundled_goal_file_parses():
    spec = parse_goal_file((template_path() / "program.md").read_text())
    assert spec.objective.metric == "val_bpb"
    assert spec.param_limit == 20_000_000
    assert spec.time_budget_s == 300


def test_lines_the_engine_cannot_enforce_are_kept_and_listed():
    spec = parse_goal_file(goal_file(
        "- Training time: 90 seconds\n- Code style: readable\n",
        metrics="Track inference speed, elegance of the code",
    ))
    assert spec.time_budget_s == 90
    assert spec.not_enforced == ("Code style: readable", "metric: elegance of the code")
    assert "Code style: readable" in spec.text


@pytest.mark.parametrize(("line", "seconds"), [
    ("Training time: 300 s", 300), ("Training time: 2 min", 120),
    ("Time budget: 1.5 hours", 5400), ("Training time: five minutes", 300),
])
def test_training_times_in_several_units(line, seconds):
    assert parse_goal_file(goal_file(f"- {line}")).time_budget_s == seconds


@pytest.mark.parametrize(("line", "gpus"), [
    ("Hardware: Single GPU", 1), ("Hardware: 2 GPUs", 2), ("Hardware: 8x H100 GPUs", 8),
    ("Hardware: CPU only", 0),
])
def test_gpus_per_experiment(line, gpus):
    assert parse_goal_file(goal_file(f"- {line}")).gpus_per_experiment == gpus


@pytest.mark.parametrize(("line", "limit"), [
    ("Model size: < 1M parameters", 1_000_000),
    ("Model size: <= 500K parameters", 500_001),
    ("Parameters: at most 2,000,000", 2_000_001),
    ("Model size: under 1.5 million parameters", 1_500_000),
])
def test_model_size_limits(line, limit):
    assert parse_goal_file(goal_file(f"- {line}")).param_limit == limit


def test_memory_limit_and_editable_files():
    spec = parse_goal_file(goal_file("- Memory: < 16 GB\n- Editable files: train.py, model.py"))
    assert spec.memory_limit_gb == 16
    assert spec.editable_files == ("train.py", "model.py")


def test_a_maximising_goal_with_a_named_result_key():
    spec = parse_goal_file(goal_file(goal="Maximize `val_accuracy` on the held-out set"))
    assert spec.objective.metric == "val_accuracy"
    assert spec.objective.direction == "maximize"
    assert spec.objective.is_better(0.9, 0.8)


@pytest.mark.parametrize(("text", "message"), [
    ("# Constraints\n- Training time: 5 minutes\n", "no '# Goal' section"),
    ("# Goal\n\n# Constraints\n", "no '# Goal' section"),
    ("# Goal\nA good language model\n", "line 2: the goal does not say whether to minimise"),
    ("# Goal\nMinimize loss and maximize speed\n", "line 2: the goal asks both"),
    ("# Goal\nMinimize the vibes\n", "line 2: the goal names no metric"),
    (goal_file("- Training time: soon"), "line 4: cannot read a value from 'Training time: soon'"),
    (goal_file("- Model size: small"), "line 4: cannot read a value"),
    (goal_file("- Hardware: a fast one"), "line 4: cannot read a value"),
    (goal_file("- Training time: 0 minutes"), "line 4: cannot read a value"),
    (goal_file("- Training time: 5 minutes\n- Training time: 10 minutes"),
     "line 5 contradicts line 4"),
    (goal_file("- Editable files: train.py, prepare.py"), "line 4: prepare.py cannot be editable"),
])
def test_goal_files_the_engine_refuses_name_the_line(text, message):
    with pytest.raises(GoalFileError, match=message) as refused:
        parse_goal_file(text)
    assert "\n" not in str(refused.value)
