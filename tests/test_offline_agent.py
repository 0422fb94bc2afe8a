"""The offline proposer: knobs found, literals rewritten in place, memory of what it proposed and of
what worked before."""

import ast
import io
import math
import re
import tokenize

import pytest

from agents.offline import OfflineAgent, find_knobs
from engine.protocol import Attempt, NothingToPropose, ProposalContext

PROPOSALS = 60  # per test that looks at many proposals on one parent


def context(files: dict[str, str], history: tuple[Attempt, ...] = (),
            direction: str = "minimize") -> ProposalContext:
    return ProposalContext(island=0, goal="", files=files, editable=("train.py",),
                           objective="val_bpb", direction=direction, parent_objective=3.0,
                           baseline_objective=3.0, history=history)


def constants(source: str) -> dict[str, object]:
    """The module-level `NAME = literal` assignments of a file."""
    values = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def changes(description: str) -> list[tuple[str, str, str]]:
    return re.findall(r"(\w+) ([^\s,]+) -> ([^\s,]+)", description)


def proposals(files: dict[str, str], count: int = PROPOSALS, seed: int = 0) -> list:
    agent, ctx = OfflineAgent(seed), context(files)
    return [agent.propose(ctx) for _ in range(count)]


def test_it_finds_the_knobs_of_the_bundled_train_py_and_nothing_else(template):
    labels = [knob.label for knob in find_knobs(template.files, template.spec.editable_files)]
    assert labels == [
        "N_LAYER", "N_HEAD", "N_EMBD", "MLP_RATIO", "DROPOUT", "BATCH_SIZE", "LEARNING_RATE",
        "WEIGHT_DECAY", "BETA1", "BETA2", "WARMUP_FRACTION", "FINAL_LR_FRACTION", "GRAD_CLIP",
        "ACTIVATION",
    ]  # no SEED, no SEQ_LEN (not a literal), nothing from prepare.py


def test_knobs_are_upper_case_literals_and_never_seeds_or_bools():
    source = (
        "SEED = 1\nDATA_SEED = 2\nUSE_AMP = True\nlower = 5\nNAME = 'x'  # a name\n"
        "LR = -3e-3\nSTEPS = 1_000\nMODE = 'a'  # one of: a, b\n"
        "def f():\n    INNER = 3\n"
    )
    knobs = {knob.label: knob for knob in find_knobs({"train.py": source}, ("train.py",))}
    assert list(knobs) == ["LR", "STEPS", "MODE"]
    assert (knobs["LR"].text, knobs["LR"].value) == ("-3e-3", -3e-3)
    assert knobs["MODE"].alternatives == ("a", "b")


def test_a_proposal_changes_only_literals_and_names_each_change(template):
    original = template.files["train.py"]
    old_tokens = list(tokenize.generate_tokens(io.StringIO(original).readline))
    for proposal in proposals(template.files):
        assert set(proposal.files) == {"train.py"}
        new = proposal.files["train.py"]
        compile(new, "train.py", "exec")
        new_tokens = list(tokenize.generate_tokens(io.StringIO(new).readline))
        differing = [(old, new) for old, new in zip(old_tokens, new_tokens, strict=True)
                     if old.string != new.string]
        named = changes(proposal.description)
        assert 1 <= len(named) <= 2
        assert len(differing) == len(named)
        for (old, new_token), (name, old_text, new_text) in zip(differing, named, strict=True):
            assert old.type in (tokenize.NUMBER, tokenize.STRING)
            assert (old.string, new_token.string) == (old_text, new_text)
            assert old.line.startswith(f"{name} = ")
            # Everything around the literal, the comment included, is byte for byte the same.
            assert old.line[: old.start[1]] == new_token.line[: new_token.start[1]]
            assert old.line[old.end[1]:] == new_token.line[new_token.end[1]:]


def test_ints_stay_ints_and_powers_of_two_stay_powers_of_two(template):
    before = constants(template.files["train.py"])
    for proposal in proposals(template.files):
        after = constants(proposal.files["train.py"])
        for name, value in before.items():
            if type(value) is int and after[name] != value:
                assert type(after[name]) is int and after[name] >= 1
                assert math.log2(after[name]).is_integer()


def test_other_ints_move_a_little_and_stay_positive():
    values = {constants(p.files["train.py"])["LAYERS"]
              for p in proposals({"train.py": "LAYERS = 3\n"}, count=2)}
    assert values == {2, 4}  # 3 - 1, 3 + 1, round(0.75 * 3) = 2, round(1.25 * 3) = 4
    assert {constants(p.files["train.py"])["WIDTH"]
            for p in proposals({"train.py": "WIDTH = 100\n"}, count=4)} == {75, 99, 101, 125}


def test_floats_keep_their_notation_and_fractions_stay_below_one(template):
    for proposal in proposals(template.files):
        for name, old, new in changes(proposal.description):
            if name == "LEARNING_RATE":
                assert re.fullmatch(r"\d(\.\d{1,2})?e-\d", new), new
            elif "." in old:
                assert re.fullmatch(r"\d+\.\d+", new), new
                assert len(new.replace(".", "").strip("0")) <= 3, new  # significant digits
                if float(old) < 1:
                    assert 0 <= float(new) < 1


def test_a_string_knob_switches_to_another_named_alternative():
    files = {"train.py": 'ACTIVATION = "gelu"  # one of: gelu, relu, silu\n'}
    new = {p.files["train.py"] for p in proposals(files, count=2)}
    assert new == {'ACTIVATION = "relu"  # one of: gelu, relu, silu\n',
                   'ACTIVATION = "silu"  # one of: gelu, relu, silu\n'}


def test_repeated_proposals_on_one_parent_never_repeat_a_content(template):
    contents = [p.files["train.py"] for p in proposals(template.files, count=120)]
    assert len(set(contents)) == len(contents)
    assert template.files["train.py"] not in contents


def test_once_single_changes_are_exhausted_it_combines_two_then_refuses():
    files = {"train.py": "WIDTH = 64\nDEPTH = 4\n"}
    agent, ctx = OfflineAgent(), context(files)
    described = [agent.propose(ctx).description for _ in range(8)]
    assert sum(", " in d for d in described) == 4  # 2 x 2 pairs, after the 4 single changes
    assert all(", " in d for d in described[4:])
    with pytest.raises(NothingToPropose, match="proposed already"):
        agent.propose(ctx)


def test_the_same_seed_gives_the_same_proposals_and_other_seeds_differ(template):
    first = [p.description for p in proposals(template.files, count=20, seed=7)]
    assert first == [p.description for p in proposals(template.files, count=20, seed=7)]
    assert first != [p.description for p in proposals(template.files, count=20, seed=8)]


def test_a_knob_whose_increase_improved_the_objective_is_chosen_more_often(template):
    won = tuple(Attempt(f"N_EMBD {old} -> {new}", "ok", objective=score,
                        parent_objective=score + 0.1)
                for old, new, score in [(64, 128, 3.2), (128, 256, 3.0), (32, 64, 3.5)])
    lost = (Attempt("N_EMBD 128 -> 64", "ok", objective=3.4, parent_objective=3.0),)

    def share(history: tuple[Attempt, ...], direction: str = "minimize") -> float:
        chosen = [OfflineAgent(seed).propose(context(template.files, history, direction))
                  for seed in range(200)]
        return sum("N_EMBD 128 -> 256" in p.description for p in chosen) / len(chosen)

    chance = share(())
    assert chance < 0.1  # one move of one of 14 knobs
    assert share(won + lost) > 3 * chance
    assert share(won + lost, direction="maximize") < chance


def test_a_knob_whose_changes_crashed_is_chosen_less_often(template):
    crashed = tuple(Attempt(f"BATCH_SIZE 16 -> {new}", "crash", objective=None,
                            parent_objective=3.0) for new in (8, 32, 64, 4))

    def share(history: tuple[Attempt, ...]) -> float:
        chosen = [OfflineAgent(seed).propose(context(template.files, history))
                  for seed in range(200)]
        return sum("BATCH_SIZE" in p.description for p in chosen) / len(chosen)

    assert share(crashed) < share(()) / 3


def test_files_without_knobs_are_refused():
    with pytest.raises(ValueError, match="no knobs"):
        OfflineAgent().propose(context({"train.py": "import math\nx = math.pi\nSEED = 3\n"}))
