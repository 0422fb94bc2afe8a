"""The offline proposer: an evolutionary search over the knobs of the editable files, no model.

A knob is a module-level constant: `NAME = <number>`, or `NAME = "<string>"` whose comment on the
same line names its alternatives (`# one of: gelu, relu, silu`); engine/tuning/knobs.py finds them.
Each proposal nudges one knob, sometimes two (a knob with alternatives moves to another of them),
how far and how often two at once as the island's strategy says (agents/strategies.py), and
writes back only the new literal, so the rest of the file stays byte for byte the same. The
island's history steers the search: a move (a knob and a direction, or a string knob and a value)
that improved the objective is drawn more often, one that failed less often. The agent remembers
what it proposed for each parent and never proposes the same content twice; once every single change
of a parent has been proposed, it combines two.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from agents.strategies import Strategy, default_strategy
from engine.protocol import Attempt, NothingToPropose, Proposal, ProposalContext
from engine.tuning.knobs import Knob, find_knobs, literal, write_literals

FACTORS = (0.5, 0.7, 0.8, 1.25, 1.4, 2.0)  # multiplicative steps of a float; the sign is kept
FRACTION_STEPS = (-0.1, -0.05, 0.05, 0.1)  # additive steps of a float in [0, 1)
FRACTION_MAX = 0.999  # a float in [0, 1) is clamped into [0, FRACTION_MAX]
PAIR_DRAWS = 32  # draws of a new pair before listing every pair
# How one earlier outcome scales the weight of each move it made; the weights stay within
# WEIGHT_RANGE so that no move becomes impossible and none takes over the search completely.
OUTCOME_FACTORS = {"improved": 3.0, "worsened": 0.8, "failed": 0.3}
WEIGHT_RANGE = (0.01, 100.0)
FAILURES = ("crash", "timeout", "invalid")
CHANGE = re.compile(r"([\w./:-]+) ([^\s,]+) -> ([^\s,]+)")  # one change named in a description


Change = tuple[Knob, str]  # a knob and the literal it becomes
Changes = tuple[Change, ...]  # what one proposal changes: one knob, or two
Move = tuple[str, str]  # a knob and up or down, or a string knob and its new value (`_move`)


@lru_cache(maxsize=4096)
def _new_literals(knob: Knob, scale: float) -> tuple[str, ...]:
    """The literals a knob may change to, each different from its current value, its steps
    raised to the power `scale`. A power of two has its neighbours as alternatives
    (engine/tuning/knobs.py), so it stays a power of two."""
    if knob.alternatives:
        return tuple(literal(knob, other) for other in knob.alternatives if other != knob.value)
    steps = (_int_steps(knob.value, scale) if isinstance(knob.value, int)
             else _float_steps(knob.value, scale))
    texts = dict.fromkeys(literal(knob, value) for value in steps)  # ordered, no duplicates
    return tuple(text for text in texts if float(text) != knob.value)


@lru_cache(maxsize=4096)
def _moves(knob: Knob, scale: float) -> tuple[tuple[Changes, Move], ...]:
    """Each change of the knob alone (to a literal it may change to), with the move it makes."""
    return tuple((((knob, text),), _move(knob.label, knob.text, text))
                 for text in _new_literals(knob, scale))


def _int_steps(value: int, scale: float) -> list[int]:
    by = max(1, round(scale))
    steps = [value - by, value + by, round(value * 0.75 ** scale), round(value * 1.25 ** scale)]
    return [step for step in steps if value < 1 or step >= 1]


def _float_steps(value: float, scale: float) -> list[float]:
    steps = [value * factor ** scale for factor in FACTORS]
    if 0 <= value < 1:
        # A step no larger than the value itself: a learning rate of 3e-3 never jumps by 0.05.
        steps += [value + step * scale for step in FRACTION_STEPS
                  if value == 0 or abs(step * scale) <= value]
        steps = [min(max(step, 0.0), FRACTION_MAX) for step in steps]
    return steps


def _move(label: str, old: str, new: str) -> Move:
    """What a change did, in the terms the search learns: a knob and up or down, or a string
    knob and its new value."""
    try:
        return label, "up" if float(new) > float(old) else "down"
    except ValueError:
        return label, new


def _learned_weights(history: Sequence[Attempt], direction: str) -> dict[Move, float]:
    """The weight of every move the island made before (1.0 for a move never made), from the
    outcomes of the attempts that made it."""
    low, high = WEIGHT_RANGE
    weights: dict[Move, float] = {}
    for attempt in history:
        factor = OUTCOME_FACTORS.get(_outcome(attempt, direction), 1.0)
        for label, old, new in CHANGE.findall(attempt.description):
            key = _move(label, old, new)
            weights[key] = min(max(weights.get(key, 1.0) * factor, low), high)
    return weights


def _outcome(attempt: Attempt, direction: str) -> str:
    if attempt.status in FAILURES:
        return "failed"
    if attempt.status != "ok" or attempt.objective is None or attempt.parent_objective is None:
        return "unknown"  # rejected, interrupted or unscored: nothing learned
    if direction == "maximize":
        better = attempt.objective > attempt.parent_objective
    else:
        better = attempt.objective < attempt.parent_objective
    return "improved" if better else "worsened"


def _apply(files: dict[str, str], changes: Sequence[Change]) -> dict[str, str]:
    """The new contents of the files the changes touch."""
    changed = write_literals(files, dict(changes))
    return {knob.path: changed[knob.path] for knob, _ in changes}


def _digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


@dataclass
class _Singles:
    """Every change of a single knob of one parent, in the files' order, as parallel lists: each
    proposal weighs them anew (560 for 80 knobs) without a tuple for each."""

    parent: str  # the parent's digest
    changes: list[Changes] = field(default_factory=list)
    moves: list[Move] = field(default_factory=list)  # the move each makes
    knob_moves: list[int] = field(default_factory=list)  # how many moves its knob has
    # what its weight is multiplied by: the strategy's shrink for a move down, else 1
    factors: list[float] = field(default_factory=list)


class OfflineAgent:
    """An evolutionary proposer with no model behind it; the default when no LLM is configured.
    The same seed and the same contexts give the same proposals."""

    name = "offline"

    def __init__(self, seed: int = 0, strategy: Strategy | None = None) -> None:
        self._random = random.Random(seed)
        self.plan = strategy or default_strategy()
        self.strategy = self.plan.name
        self.models: dict[str, float] = {}  # no model to choose
        self._proposed: set[tuple[str, str]] = set()  # (parent digest, result digest)
        self._singles: _Singles | None = None  # those of the last parent

    def propose(self, context: ProposalContext) -> Proposal:
        """Change one knob of the parent, or two, in a way never proposed for it before."""
        parent = _digest({path: context.files[path] for path in context.editable
                          if path in context.files})
        learned = _learned_weights(context.history, context.direction)
        singles = self._singles_of(context, parent)
        # Divided by the knob's number of moves: every knob starts out equally likely.
        weights = [learned.get(move, 1.0) / moves * factor for move, moves, factor
                   in zip(singles.moves, singles.knob_moves, singles.factors, strict=True)]
        plans = ((self._draw_pair, self._draw_new)
                 if self._random.random() < self.plan.pair_probability
                 else (self._draw_new, self._draw_pair))
        for draw in plans:
            drawn = draw(singles.changes, weights, context.files, parent)
            if drawn is not None:
                changes, files = drawn
                description = ", ".join(f"{knob.label} {knob.text} -> {text}"
                                        for knob, text in changes)
                return Proposal(description=description, files=files)
        raise NothingToPropose("every change of one or two knobs of this parent was proposed "
                               "already")

    def _singles_of(self, context: ProposalContext, parent: str) -> _Singles:
        """The changes of a single knob of the parent, whose digest is `parent`. Those of the
        last parent are kept: an island's parent is mostly its head, the same from one proposal
        to the next (seven proposals in ten in a 256-GPU simulated search)."""
        if self._singles is not None and self._singles.parent == parent:
            return self._singles
        knobs = find_knobs(context.files, context.editable)
        if not knobs:
            raise ValueError("the editable files have no knobs: no upper-case module constant "
                             "set to a number, or to a string with a '# one of:' comment")
        singles = _Singles(parent)
        for knob in knobs:
            moves = _moves(knob, self.plan.step_scale)
            for changes, move in moves:
                singles.changes.append(changes)
                singles.moves.append(move)
                singles.knob_moves.append(len(moves))
                singles.factors.append(self.plan.shrink if move[1] == "down" else 1.0)
        self._singles = singles
        return singles

    def _draw_pair(self, singles: list[Changes], weights: list[float], files: dict[str, str],
                   parent: str) -> tuple[Changes, dict[str, str]] | None:
        """Two changes of different knobs, each drawn by its weight (so a pair's chance is the
        product of theirs), new for this parent; None when there is none. The pairs are listed
        in full only when PAIR_DRAWS draws found no new one: a file with 80 knobs has 100,000."""
        for _ in range(PAIR_DRAWS if len(singles) > 1 else 0):
            first, second = sorted(self._random.choices(range(len(singles)), weights, k=2))
            (one,), (other,) = singles[first], singles[second]
            if one[0] is not other[0] and (new := self._new((one, other), files, parent)):
                return new  # in the files' order, as the full listing gives them
        pairs, pair_weights = [], []
        for (first, first_weight), (second, second_weight) in itertools.combinations(
                zip(singles, weights, strict=True), 2):
            if first[0][0] is not second[0][0]:
                pairs.append(first + second)
                pair_weights.append(first_weight * second_weight)
        return self._draw_new(pairs, pair_weights, files, parent)

    def _draw_new(self, candidates: list[Changes], weights: list[float], files: dict[str, str],
                  parent: str) -> tuple[Changes, dict[str, str]] | None:
        """Draw candidates by their weights, without replacement, until one gives content not
        proposed for this parent before; None when there is none."""
        options, weights = list(candidates), list(weights)
        while options:
            index = self._random.choices(range(len(options)), weights)[0]
            weights.pop(index)
            if new := self._new(options.pop(index), files, parent):
                return new
        return None

    def _new(self, changes: Changes, files: dict[str, str], parent: str
             ) -> tuple[Changes, dict[str, str]] | None:
        """The changes and the files they give, unless proposed for this parent before."""
        changed = _apply(files, changes)
        key = (parent, _digest(changed))
        if key in self._proposed:
            return None
        self._proposed.add(key)
        return changes, changed
