"""Knobs: the module-level constants of the editable files that a search may change by value.

A knob is an upper-case module-level constant set to an int or float literal (negative ones
included), or to a string literal whose comment names its alternatives. Booleans are not knobs,
and neither is any name containing SEED: a candidate must not win by drawing another seed.

A comment after the literal, on the same line, may say how the knob is tuned:

    LEARNING_RATE = 3e-3  # tune: 1e-4..1e-1 log    a range, sampled on a log scale
    N_LAYER = 4  # tune: 2..8                        a range, sampled evenly (ints stay ints)
    BATCH_SIZE = 16  # one of: 8, 16, 32             a set of choices
    ACTIVATION = "gelu"  # one of: gelu, relu, silu  (a string is a knob only with choices)
    GRAD_CLIP = 1.0  # tune: off                     not a knob: nothing changes it

The annotation may follow other words of the comment (`# of the budget; tune: 0..0.2`). A range
or a set of choices always includes the current value. Without an annotation a knob gets a
default: a positive float a log range from a tenth to ten times its value, where a fraction
below one stays below one (at most halfway to it), and a float from 0.5 to one (a decay, like
Adam's betas, whose distance from one is what matters) ranges linearly from twice that distance
below it to half of it above; a float of zero 0..0.5 on a linear scale; a positive power of two
half, itself or double; another positive int half to double. Negative numbers and ints below
one have no default: they stay knobs for the agents, and Optuna tunes them only when annotated.

Values are written back by replacing only the literal, so the rest of the file stays byte for
byte the same, in the literal's own style: an int stays an int (with its underscores), a float
in e-notation stays in e-notation, with three significant digits.
"""

from __future__ import annotations

import ast
import io
import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache

from engine.experiment.syntax import literal_value, parse

SIGNIFICANT_DIGITS = 3  # of a float written back
FLOAT_FACTOR = 10.0  # a positive float's default range: value / FACTOR .. value * FACTOR
ZERO_FLOAT_RANGE = (0.0, 0.5)
_TUNE = re.compile(r"\btune:\s*(?P<spec>[^;#]*)")
_CHOICES = re.compile(r"\bone of:\s*(?P<choices>[^;#]*)")
_NUMBER = r"[-+]?(?:\d[\d_]*\.?\d*|\.\d+)(?:e[-+]?\d+)?"
_RANGE = re.compile(
    rf"(?P<low>{_NUMBER})\s*\.\.\s*(?P<high>{_NUMBER})(?:\s+(?P<scale>log|linear))?", re.I)

Value = int | float | str


class KnobError(ValueError):
    """An annotation that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Range:
    """The numbers a knob may take: low..high, both included."""

    low: int | float
    high: int | float
    log: bool = False  # sampled on a log scale


@dataclass(frozen=True)
class Knob:
    """One tunable constant of an editable file."""

    path: str
    label: str  # how descriptions name it: NAME, or path:NAME when several files have knobs
    start: int  # where its literal lies in the file's text
    end: int
    text: str  # the literal as written, e.g. 3e-3 or "gelu"
    value: Value
    alternatives: tuple[Value, ...] = ()  # the values it may take, when it is a choice
    range: Range | None = None  # the numbers it may take, when it is tuned over a range

    @property
    def tunable(self) -> bool:
        """Whether Optuna has values to try for it."""
        return bool(self.alternatives) or self.range is not None


def find_knobs(files: dict[str, str], editable: Sequence[str]) -> list[Knob]:
    """The knobs of the editable files, in file order. Raises KnobError for an annotation it
    cannot read."""
    paths = [path for path in editable if path in files]
    return [knob for path in paths
            for knob in _file_knobs(path, files[path], qualify=len(paths) > 1)]


def literal(knob: Knob, value: Value) -> str:
    """`value` written the way the knob's literal is: a string in its quotes, an int as an int, a
    float in scientific notation if the literal used it, with SIGNIFICANT_DIGITS digits."""
    if isinstance(knob.value, str):
        quote = knob.text[0] if knob.text[0] in "'\"" else '"'
        return f"{quote}{value}{quote}"
    if isinstance(knob.value, int):
        return f"{int(value):_}" if "_" in knob.text else str(int(value))
    if "e" in knob.text.lower():
        mantissa, exponent = f"{value:.{SIGNIFICANT_DIGITS - 1}e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    text = format(Decimal(f"{value:.{SIGNIFICANT_DIGITS}g}"), "f")  # never 1e-05
    return text if "." in text else f"{text}.0"


def write_literals(files: dict[str, str], texts: Mapping[Knob, str]) -> dict[str, str]:
    """The files with each knob's literal replaced by its new text; nothing else changes."""
    changed = dict(files)
    # From the end of each file backwards, so that earlier offsets stay valid.
    for knob in sorted(texts, key=lambda k: k.start, reverse=True):
        source = changed[knob.path]
        changed[knob.path] = source[:knob.start] + texts[knob] + source[knob.end:]
    return changed


def write_knobs(files: dict[str, str], values: Mapping[Knob, Value]) -> dict[str, str]:
    """The files with the knobs set to `values`, each written in its literal's style."""
    return write_literals(files, {knob: literal(knob, value) for knob, value in values.items()})


def written_value(knob: Knob, value: Value) -> Value:
    """The value the file holds once `value` is written: what a trial really ran."""
    return literal_value(literal(knob, value))


def describe_tuning(old: Mapping[str, Value], new: Mapping[str, Value]) -> str:
    """A commit description of a tuning: `tune: LEARNING_RATE 0.003 -> 0.0012, ...`, naming only
    the knobs whose value changed."""
    changes = [f"{label} {old[label]} -> {new[label]}" for label in old
               if label in new and new[label] != old[label]]
    return "tune: " + (", ".join(changes) if changes else "no knob changed")


# A search reads the parents of all its islands in turn: 256 entries missed 3,500 times in a
# 256-GPU simulated search (benchmarks/simulate.py), whose islands had 1,658 parents.
@lru_cache(maxsize=1024)
def _file_knobs(path: str, source: str, *, qualify: bool) -> tuple[Knob, ...]:
    """The knobs of one file (read once per text: the proposers and the checks of a search read
    the same parents again and again)."""
    lines = io.StringIO(source, newline="").readlines()  # split where ast splits lines
    line_ends = list(itertools.accumulate(map(len, lines)))

    def offset(line: int, column: int) -> int:
        """The position in `source` of an ast line and column."""
        return line_ends[line - 1] - len(_rest_of_line(lines[line - 1], column))

    knobs: dict[str, Knob] = {}  # by name: a later assignment is the one in effect
    for node in parse(source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        value = _value(node.value)
        if not name.isupper() or "SEED" in name or value is None:
            knobs.pop(name, None)
            continue
        comment = _comment(_rest_of_line(lines[node.end_lineno - 1], node.value.end_col_offset))
        where = f"{path} line {node.end_lineno}"
        choices, tuned = _annotation(comment, value, where)
        if tuned is False or (isinstance(value, str) and not choices):
            knobs.pop(name, None)
            continue
        if not choices and tuned is None:
            choices, tuned = _default_domain(value)
        start = offset(node.value.lineno, node.value.col_offset)
        end = offset(node.value.end_lineno, node.value.end_col_offset)
        knobs[name] = Knob(path, f"{path}:{name}" if qualify else name, start, end,
                           source[start:end], value, choices, tuned or None)
    return tuple(knobs.values())


def _annotation(comment: str, value: Value, where: str
                ) -> tuple[tuple[Value, ...], Range | bool | None]:
    """The choices and the range a comment gives: ((), None) when it says nothing, a range of
    False for `tune: off`."""
    choices: tuple[Value, ...] = ()
    if named := _CHOICES.search(comment):
        words = [w.strip().strip("'\"") for w in named.group("choices").split(",")]
        choices = tuple(_typed(word, value, where) for word in words if word)
        choices += () if value in choices else (value,)
    tune = _TUNE.search(comment)
    if tune is None:
        return choices, None
    spec = tune.group("spec").strip()
    if spec.lower() == "off":
        return (), False
    bounds = _RANGE.fullmatch(spec)
    if bounds is None or isinstance(value, str):
        raise KnobError(f"{where}: cannot read '# tune: {spec}'; write '# tune: off', "
                        "'# tune: LOW..HIGH' or '# tune: LOW..HIGH log'")
    low, high = (_typed(bounds.group(k), value, where) for k in ("low", "high"))
    low, high = min(low, high, value), max(low, high, value)
    log = (bounds.group("scale") or "").lower() == "log"
    if log and low <= 0:
        raise KnobError(f"{where}: a log range must lie above zero ('# tune: {spec}')")
    return choices, Range(low, high, log)


def _default_domain(value: int | float) -> tuple[tuple[Value, ...], Range | None]:
    if isinstance(value, float):
        if value == 0:
            return (), Range(*ZERO_FLOAT_RANGE)
        if value < 0:
            return (), None
        if 0.5 <= value < 1:
            gap = 1 - value
            return (), Range(value - gap, value + gap / 2)
        high = value * FLOAT_FACTOR
        if value < 1:
            high = min(high, (1 + value) / 2)
        return (), Range(value / FLOAT_FACTOR, high, log=True)
    if value < 1:
        return (), None
    if value & (value - 1) == 0:  # a power of two stays one
        return tuple(dict.fromkeys((max(value // 2, 1), value, value * 2))), None
    return (), Range(max(value // 2, 1), value * 2)


def _typed(word: str, value: Value, where: str) -> Value:
    """A word of an annotation as a value of the knob's type."""
    if isinstance(value, str):
        return word
    try:
        number = float(word.replace("_", ""))
    except ValueError:
        raise KnobError(f"{where}: '{word}' is not a number") from None
    if isinstance(value, int):
        if not number.is_integer():
            raise KnobError(f"{where}: '{word}' is not an int, and the knob is one")
        return int(number)
    return number


def _value(node: ast.expr) -> Value | None:
    """The value of an int, float or string literal, negative numbers included; None for
    anything else (booleans too)."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _value(node.operand)
        return -inner if isinstance(inner, (int, float)) else None
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, str):
        return node.value
    return None


def _comment(rest: str) -> str:
    """The comment at the end of a line, from what follows a literal."""
    stripped = rest.strip()
    return stripped[1:] if stripped.startswith("#") else ""


def _rest_of_line(line: str, column: int) -> str:
    """What follows a column on a line; ast counts columns in UTF-8 bytes, not characters."""
    return line.encode()[column:].decode()
