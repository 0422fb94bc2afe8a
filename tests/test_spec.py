"""The goal file becomes a typed spec; goal files the engine cannot trust are refused."""

import pytest

from engine.experiment.spec import GoalFileError, declared_metrics, parse_goal_file
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


# A harness in the shape of the kit's (autoresearch/kit.py): its METRICS say what it reports.
CLASSIFIER_METRICS = {"val_accuracy": ("validation accuracy", "classification accuracy",
                                       "accuracy"),
                      "val_loss": ("validation loss", "loss"), "params": "parameters"}
LM_METRICS = {"val_loss": "validation loss", "val_perplexity": "validation perplexity",
              "inference_chars_per_s": "inference speed", "params": "parameters"}


def test_the_seed_goal_file_reads_validation_loss_as_the_key_the_harness_declares():
    spec = parse_goal_file(SEED_GOAL_FILE, LM_METRICS)
    assert spec.objective.metric == "val_loss"
    assert spec.metrics == ("val_perplexity", "loss_spikes", "inference_chars_per_s")
    assert spec.not_enforced == ()


@pytest.mark.parametrize(("goal", "named"), [
    ("Maximize validation accuracy with as few parameters as possible",
     "'validation accuracy' (val_accuracy), 'parameters' (params)"),
    ("Maximize classification accuracy while keeping the loss stable",
     "'classification accuracy' (val_accuracy), 'loss' (val_loss)"),
])
def test_a_goal_naming_several_metrics_is_refused_naming_them(goal, named):
    with pytest.raises(GoalFileError, match="ambiguous") as refused:
        parse_goal_file(goal_file(goal=goal), CLASSIFIER_METRICS)
    assert named in str(refused.value)


def test_a_metric_word_the_harness_does_not_declare_still_makes_the_goal_ambiguous():
    with pytest.raises(GoalFileError, match="'validation accuracy' \\(not a metric prepare.py"):
        parse_goal_file(goal_file(goal="Maximize validation accuracy with few parameters"))


def test_backticks_settle_an_ambiguous_goal():
    spec = parse_goal_file(goal_file(
        goal="Maximize `val_accuracy` with as few parameters as possible"), CLASSIFIER_METRICS)
    assert spec.objective.metric == "val_accuracy"
    assert spec.objective.direction == "maximize"


def test_a_backticked_key_the_harness_does_not_declare_is_refused():
    with pytest.raises(GoalFileError, match="line 2: `val_acc` is not a metric prepare.py"):
        parse_goal_file(goal_file(goal="Maximize `val_acc`"), CLASSIFIER_METRICS)


def test_backticked_metrics_are_tracked():
    spec = parse_goal_file(goal_file(metrics="- `val_loss`\n- `inference_chars_per_s`"),
                           LM_METRICS)
    assert spec.metrics == ("inference_chars_per_s",)  # val_loss is the objective
    spec = parse_goal_file(goal_file(goal="Minimize `val_perplexity`",
                                     metrics="Track `val_loss`, `inference_chars_per_s`"),
                           LM_METRICS)
    assert spec.metrics == ("val_loss", "inference_chars_per_s")
    assert spec.not_enforced == ()


def test_a_size_limit_the_harness_cannot_measure_is_refused():
    undeclared = {key: value for key, value in LM_METRICS.items() if key != "params"}
    with pytest.raises(GoalFileError, match="line 4: the model size limit cannot be enforced: "
                                            "prepare.py does not declare `params`"):
        parse_goal_file(goal_file("- Model size: < 1M parameters"), undeclared)


def test_a_harness_declares_its_metrics_in_a_literal_read_without_running_it():
    source = 'import torch\nMETRICS = {"val_loss": "validation loss", "params": ("a", "b")}\n'
    assert declared_metrics(source) == {"val_loss": ("validation loss",), "params": ("a", "b")}
    assert declared_metrics("import torch\n") is None
    with pytest.raises(GoalFileError, match="prepare.py line 1: METRICS must"):
        declared_metrics("METRICS = dict(a=1)\n")
