"""Knobs: the constants Optuna may tune, their ranges, and values written back into the code."""

import pytest

from engine.tuning.knobs import KnobError, Range, describe_tuning, find_knobs, write_knobs


def knobs_of(source: str) -> dict:
    return {knob.label: knob for knob in find_knobs({"train.py": source}, ("train.py",))}


def about(low: float, high: float, log: bool = False) -> Range:
    return Range(pytest.approx(low), pytest.approx(high), log)


def test_every_knob_of_the_bundled_train_py_has_a_sensible_default_domain(template):
    knobs = {k.label: k for k in find_knobs(template.files, template.spec.editable_files)}
    assert knobs["LEARNING_RATE"].range == about(3e-4, 3e-2, log=True)
    assert knobs["WEIGHT_DECAY"].range == about(0.01, 0.55, log=True)
    assert knobs["FINAL_LR_FRACTION"].range == about(0.01, 0.55, log=True)  # stays below one
    assert knobs["BETA1"].range == about(0.8, 0.95)  # a decay: its distance from one
    assert knobs["BETA2"].range == about(0.9, 0.975)
    assert knobs["GRAD_CLIP"].range == about(0.1, 10.0, log=True)
    assert knobs["DROPOUT"].range == Range(0.0, 0.5, log=False)  # zero: a linear range
    assert knobs["N_EMBD"].alternatives == (64, 128, 256)  # a power of two stays one
    assert knobs["N_LAYER"].alternatives == (2, 4, 8)
    assert knobs["ACTIVATION"].alternatives == ("gelu", "relu", "silu")
    assert all(knob.tunable for knob in knobs.values())
    assert "SEED" not in knobs and "SEQ_LEN" not in knobs  # a seed never; not a literal


def test_other_ints_get_a_window_from_half_to_double_and_odd_values_no_default():
    knobs = knobs_of("WIDTH = 100\nLAYERS = 3\nOFFSET = -2\nSHIFT = -0.5\nFLAG = 0\n")
    assert knobs["WIDTH"].range == Range(50, 200)
    assert knobs["LAYERS"].range == Range(1, 6)
    # Knobs still (the offline agent moves them), but Optuna tunes them only when annotated.
    assert not any(knobs[name].tunable for name in ("OFFSET", "SHIFT", "FLAG"))


def test_seeds_booleans_and_strings_without_alternatives_are_never_knobs():
    knobs = knobs_of("SEED = 1\nDATA_SEED = 2\nUSE_AMP = True\nNAME = 'x'  # a name\nLR = 0.1\n")
    assert list(knobs) == ["LR"]


def test_an_annotation_sets_a_range_a_scale_choices_or_excludes_the_constant():
    knobs = knobs_of(
        "LEARNING_RATE = 3e-3  # tune: 1e-4..1e-1 log\n"
        "N_LAYER = 4  # tune: 2..8\n"
        "BATCH_SIZE = 16  # one of: 8, 16, 32\n"
        "WARMUP = 0.05  # of the budget; tune: 0..0.2\n"
        "GRAD_CLIP = 1.0  # tune: off\n"
        "HEADS = 4  # one of: 2, 8\n"
    )
    assert knobs["LEARNING_RATE"].range == Range(1e-4, 1e-1, log=True)
    assert knobs["N_LAYER"].range == Range(2, 8, log=False)
    assert knobs["BATCH_SIZE"].alternatives == (8, 16, 32) and knobs["BATCH_SIZE"].range is None
    assert knobs["WARMUP"].range == Range(0.0, 0.2)
    assert "GRAD_CLIP" not in knobs
    assert knobs["HEADS"].alternatives == (2, 8, 4)  # the current value is always one of them


def test_a_range_always_includes_the_current_value():
    assert knobs_of("LR = 0.5  # tune: 1e-4..1e-1 log\n")["LR"].range == Range(1e-4, 0.5, True)


@pytest.mark.parametrize("line, complaint", [
    ("LR = 3e-3  # tune: fast\n", "cannot read '# tune: fast'"),
    ("LR = 3e-3  # tune: 0..1 log\n", "log range must lie above zero"),
    ("N = 4  # tune: 2..7.5\n", "'7.5' is not an int"),
    ("N = 4  # one of: 2, many\n", "'many' is not a number"),
])
def test_an_unreadable_annotation_is_refused_naming_the_line(line, complaint):
    with pytest.raises(KnobError, match=f"train.py line 2: .*{complaint}"):
        knobs_of("import math\n" + line)


def test_write_back_changes_only_the_literals_in_their_own_style():
    source = (
        "LR = 3e-3  # tune: 1e-4..1e-1 log\n"
        "STEPS = 1_000\n"
        "DECAY = 0.1  # weight decay\n"
        'ACT = "gelu"  # one of: gelu, relu\n'
        "def lr():\n    return LR * 2  # LR = 3e-3 here stays as it is\n"
    )
    knobs = knobs_of(source)
    new = write_knobs({"train.py": source, "prepare.py": "x"}, {
        knobs["LR"]: 0.0012345, knobs["STEPS"]: 2500, knobs["DECAY"]: 0.031234,
        knobs["ACT"]: "relu"})
    assert new == {"prepare.py": "x", "train.py": (
        "LR = 1.23e-3  # tune: 1e-4..1e-1 log\n"
        "STEPS = 2_500\n"
        "DECAY = 0.0312  # weight decay\n"
        'ACT = "relu"  # one of: gelu, relu\n'
        "def lr():\n    return LR * 2  # LR = 3e-3 here stays as it is\n"
    )}


def test_write_back_of_the_bundled_train_py_differs_only_on_the_changed_lines(template):
    knobs = {k.label: k for k in find_knobs(template.files, template.spec.editable_files)}
    new = write_knobs(template.files, {knobs["LEARNING_RATE"]: 0.01, knobs["N_EMBD"]: 256})
    old_lines, new_lines = (files["train.py"].splitlines(keepends=True)
                            for files in (template.files, new))
    changed = [(a, b) for a, b in zip(old_lines, new_lines, strict=True) if a != b]
    assert changed == [("N_EMBD = 128\n", "N_EMBD = 256\n"),
                       ("LEARNING_RATE = 3e-3\n", "LEARNING_RATE = 1e-2\n")]


def test_a_tuning_is_described_by_the_knobs_it_changed():
    old = {"LEARNING_RATE": 0.003, "WARMUP": 0.0, "N_EMBD": 128}
    new = {"LEARNING_RATE": 0.0012, "WARMUP": 0.05, "N_EMBD": 128}
    assert describe_tuning(old, new) == "tune: LEARNING_RATE 0.003 -> 0.0012, WARMUP 0.0 -> 0.05"
    assert describe_tuning(old, old) == "tune: no knob changed"
