"""What the engine makes of an edit before any GPU: whether it would behave as its parent, which
code it is, and whether its only effect is on random state, all judged by the syntax tree."""

import dataclasses
import gc
import sys
import threading
from pathlib import Path

import pytest

from engine.experiment.checks import Refused, apply_proposal, changes_only_randomness, code_hash
from engine.protocol import Proposal
from engine.tuning.knobs import find_knobs

TEMPLATE = Path(__file__).parents[1] / "train_template"

BEHAVES_AS_BEFORE = ("it changes only comments, blank lines, docstrings or formatting: "
                     "the code would behave as before")


def randomness_only(before: str, after: str) -> bool:
    return changes_only_randomness({"train.py": before}, {"train.py": after})


def train_hash(source: str) -> str:
    return code_hash({"train.py": source}, ("train.py",))


# -- behaviour-equal edits are refused --------------------------------------------------------


@pytest.mark.parametrize("edit", [
    lambda train: train + "\n# one change\n",
    lambda train: train.replace('"""A small byte-level GPT', '"""A tiny byte-level GPT'),
    lambda train: train.replace("N_LAYER = 4", "N_LAYER=4"),
    lambda train: train.replace("step += 1", 'step += 1\n    "a note alone on a line"'),
], ids=["comment", "docstring", "formatting", "bare string"])
def test_an_edit_that_would_behave_as_before_is_refused(template, edit):
    proposal = Proposal("cosmetic", {"train.py": edit(template.files["train.py"])})
    with pytest.raises(Refused, match="^" + BEHAVES_AS_BEFORE + "$"):
        apply_proposal(template.files, proposal, template.spec)


def test_a_tiny_real_change_is_not_refused(template):
    train = template.files["train.py"]
    changed = train.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 3e-3 * (1 + 1e-9)")
    files = apply_proposal(template.files, Proposal("nudge", {"train.py": changed}), template.spec)
    assert files["train.py"] == changed


def test_a_changed_text_file_or_a_new_python_file_is_a_real_change(template):
    spec = dataclasses.replace(template.spec,
                               editable_files=("train.py", "notes.md", "helpers.py"))
    parent = {**template.files, "notes.md": "a\n"}
    for files in ({"notes.md": "b\n"}, {"helpers.py": "# nothing yet\n"}):
        assert apply_proposal(parent, Proposal("real", files), spec).items() >= files.items()


def test_a_change_that_does_not_compile_is_refused_for_that_first(template):
    proposal = Proposal("broken", {"train.py": template.files["train.py"] + "\ndef broken(:\n"})
    with pytest.raises(Refused, match="does not compile"):
        apply_proposal(template.files, proposal, template.spec)



def test_a_file_with_a_null_byte_is_refused_saying_so_without_a_line_it_has_not(template):
    proposal = Proposal("binary", {"train.py": template.files["train.py"] + "\nX = 1\x00\n"})
    with pytest.raises(Refused) as refused:
        apply_proposal(template.files, proposal, template.spec)
    assert str(refused.value) == ("train.py does not compile: source code string cannot contain "
                                  "null bytes")


# -- code_hash --------------------------------------------------------------------------------


def test_versions_that_differ_only_in_comments_or_formatting_have_one_hash():
    assert train_hash("x = 1\n") == train_hash("# one\nx=1  # two\n\n")
    assert train_hash('"""Doc."""\nx = 1\n') == train_hash("x = 1\n")


def test_versions_that_differ_only_in_how_their_numbers_are_spelled_have_one_hash():
    assert train_hash("LR = 3e-3\nSTEPS = 1_000\n") == train_hash("LR = 0.003\nSTEPS = 1000\n")
    assert train_hash("MASK = 0x10\n") == train_hash("MASK = 16\n")
    assert train_hash("STEPS = 1e3\n") != train_hash("STEPS = 1000\n"), "a float is not an int"


def test_versions_that_differ_in_code_have_different_hashes():
    assert train_hash("x = 1\n") != train_hash("x = 2\n")
    assert train_hash("x = 1\n") != train_hash("x = 1\ny = x\n")


def test_statements_that_share_a_line_or_a_text_are_told_apart():
    # Each statement's dump is remembered by its text and columns: neither may stand for another.
    assert code_hash({"a.py": "A = 1; B = 2\n"}, ("a.py",)) != code_hash(
        {"a.py": "A = 1; B = 3\n"}, ("a.py",))
    assert code_hash({"a.py": "A = 1; B = 2\n"}, ("a.py",)) != code_hash(
        {"a.py": "B = 2; A = 1\n"}, ("a.py",))
    assert code_hash({"a.py": "@d\ndef f(): pass\n"}, ("a.py",)) != code_hash(
        {"a.py": "def f(): pass\n"}, ("a.py",))


def test_a_file_that_does_not_parse_is_hashed_by_its_text():
    assert train_hash("def broken(:\n") != train_hash("def broken(:  # note\n")


# -- randomness-only changes ------------------------------------------------------------------


@pytest.mark.parametrize("before, after", [
    ("torch.manual_seed(SEED)\n", "torch.manual_seed(SEED + 7)  # a better start\n"),
    ("torch.manual_seed(SEED)\n", "# a luckier start\ntorch.manual_seed(1234)\n"),
    ("x = 1\n", "x = 1\nrng = np.random.default_rng(3)\n"),
    ("x = 1\n", "x = 1\nshuffle = random.Random(5).shuffle\n"),
    ("g = torch.Generator()\n", "g = torch.Generator().manual_seed(9)\n"),
])
def test_a_change_of_seed_or_random_generator_is_randomness_only(before, after):
    assert randomness_only(before, after)


def test_a_real_change_beside_a_new_seed_is_not_randomness_only():
    before = "LEARNING_RATE = 3e-3\ntorch.manual_seed(SEED)\n"
    after = "LEARNING_RATE = 1e-3\ntorch.manual_seed(SEED + 1)\n"
    assert not randomness_only(before, after)


def test_a_change_of_comments_alone_is_not_randomness_only():
    assert not randomness_only("x = 1\n", "x = 1  # seed\n")


def test_a_thrown_away_draw_before_the_model_is_built_is_randomness_only():
    before = "torch.manual_seed(SEED)\nmodel = GPT()\n"
    assert randomness_only(before, "torch.manual_seed(SEED)\n_ = torch.randn(7)\nmodel = GPT()\n")
    assert randomness_only(before, "torch.manual_seed(SEED)\ntorch.randn(7)\nmodel = GPT()\n")


def test_a_draw_whose_result_is_used_is_not_randomness_only():
    before = "model = GPT()\n"
    assert not randomness_only(before, "x = torch.randn(7)\nmodel = GPT(x)\n")


def test_a_variable_named_for_randomness_but_used_in_the_model_is_not_randomness_only():
    before = "model = GPT()\n"
    assert not randomness_only(before, "random_scale = 2.0\nmodel = GPT(scale=random_scale)\n")


def test_removing_the_seed_is_randomness_only():
    assert randomness_only("torch.manual_seed(SEED)\nmodel = GPT()\n", "model = GPT()\n")


def test_a_seed_variable_that_flows_only_into_the_seed_is_randomness_only():
    before = "MY_SEED = SEED\ntorch.manual_seed(MY_SEED)\n"
    assert randomness_only(before, "MY_SEED = SEED + 7\ntorch.manual_seed(MY_SEED)\n")
    assert randomness_only("torch.manual_seed(SEED)\n",
                           "BASE = 5\nMY_SEED = BASE + SEED\ntorch.manual_seed(MY_SEED)\n")


def test_a_seed_variable_also_used_elsewhere_is_not_randomness_only():
    before = "S = 1\ntorch.manual_seed(S)\nmodel = GPT(S)\n"
    assert not randomness_only(before, "S = 2\ntorch.manual_seed(S)\nmodel = GPT(S)\n")


def test_a_class_attribute_is_not_taken_for_a_dead_assignment():
    before = "class Model:\n    scale = torch.rand(1)\n"
    assert not randomness_only(before, "class Model:\n    scale = torch.rand(2)\n")


def test_a_seed_given_in_an_expression_is_taken_out_with_its_receiver_kept():
    before = "g = torch.Generator()\nx = torch.randn(3, generator=g)\n"
    after = "g = torch.Generator().manual_seed(4)\nx = torch.randn(3, generator=g)\n"
    assert randomness_only(before, after)


def test_a_thrown_away_draw_inside_the_training_loop_is_randomness_only():
    before = "for step in range(10):\n    train(step)\n"
    assert randomness_only(before, "for step in range(10):\n    torch.rand(1)\n    train(step)\n")


def test_a_changed_file_that_is_not_python_or_does_not_parse_is_not_randomness_only():
    assert not changes_only_randomness({"notes.md": "a"}, {"notes.md": "b"})
    assert not randomness_only("torch.manual_seed(1)\n", "torch.manual_seed(2\n")


# -- on the bundled task ----------------------------------------------------------------------


def test_a_draw_inserted_before_the_bundled_model_is_built_is_randomness_only(template):
    train = template.files["train.py"]
    built = "model = GPT().to(device)\n"
    assert built in train
    drawn = train.replace(built, "_ = torch.randn(7)\n" + built)
    assert randomness_only(train, drawn)


def test_a_new_seed_for_the_bundled_task_is_randomness_only(template):
    train = template.files["train.py"]
    assert randomness_only(train, train.replace("torch.manual_seed(SEED)",
                                                "torch.manual_seed(SEED + 1)"))


def test_a_tiny_change_of_the_bundled_learning_rate_is_not_randomness_only(template):
    train = template.files["train.py"]
    nudged = train.replace("LEARNING_RATE = 3e-3", "LEARNING_RATE = 3e-3 * (1 + 1e-9)")
    assert nudged != train
    assert not randomness_only(train, nudged)


# -- reading code in several threads at once ---------------------------------------------------


class _FinalisedLate:
    """Garbage whose finaliser runs Python code, letting another thread in, when the collector
    frees it in the middle of a parse."""

    def __del__(self):
        sum(range(100))


def test_the_driver_reads_candidates_while_proposer_threads_read_their_parents_knobs():
    """CPython 3.11 counts the depth of the tree it is parsing per interpreter, not per thread: a
    real search failed with 'SystemError: AST constructor recursion depth mismatch' when the
    driver read a candidate while an agent's thread read knobs. With garbage freed during each
    parse, four threads of plain `ast.parse` collide within a second on 3.11."""
    source = (TEMPLATE / "train.py").read_text()
    failures = []

    def read(thread: int):
        for i in range(60):
            garbage = [_FinalisedLate() for _ in range(50)]
            for item in garbage:
                item.cycle = item  # freed by the collector, not at once
            del garbage
            text = f"{source}\nX_{thread}_{i} = {i}\n"  # each text new: no cache answers it
            try:
                code_hash({"train.py": text}, ("train.py",))
                find_knobs({"train.py": text}, ("train.py",))
            except SystemError as error:
                failures.append(error)

    switching, thresholds = sys.getswitchinterval(), gc.get_threshold()
    sys.setswitchinterval(1e-6)
    gc.set_threshold(50)
    try:
        threads = [threading.Thread(target=read, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(switching)
        gc.set_threshold(*thresholds)
    assert failures == []
