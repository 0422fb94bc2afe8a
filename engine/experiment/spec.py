"""The goal file (`program.md`) parsed into what the engine can enforce.

The goal file is Markdown with three sections the engine reads: `# Goal` (what to optimise, with
a direction), `# Constraints` (one `- Name: value` line each) and `# Metrics` (what to record).
Everything else, and every line the engine cannot enforce, stays text for the agents; the
unenforced lines are listed when a search starts. A goal file the engine cannot trust is refused
with a `GoalFileError` whose message is one sentence naming the line.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

GOAL_FILE = "program.md"
HARNESS_FILE = "prepare.py"
DEFAULT_EDITABLE = ("train.py",)

# What the harness measures, each with the phrases a goal file may use for it; the longest phrase
# that matches wins, so "validation perplexity" is not read as "validation loss".
METRIC_PHRASES = {
    "val_bpb": ("validation bits per byte", "bits per byte", "val_bpb", "bpb",
                "validation loss", "val loss", "loss"),
    "val_perplexity": ("validation perplexity", "perplexity"),
    "loss_spikes": ("training stability", "stability", "loss spikes"),
    "inference_tokens_per_s": ("inference speed", "inference throughput", "tokens per second"),
    "peak_memory_gb": ("peak memory", "memory use", "memory"),
    "params": ("parameter count", "model size", "parameters"),
    "steps": ("training steps", "steps"),
}
_MINIMISE = re.compile(r"\b(minimi[sz]e|lower|reduce|decrease|smallest|lowest)\b", re.I)
_MAXIMISE = re.compile(r"\b(maximi[sz]e|higher|increase|largest|highest)\b", re.I)
_TIME_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
               "hr": 3600, "hour": 3600}
_NUMBER_WORDS = {"a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4,
                 "five": 5, "six": 6, "seven": 7, "eight": 8, "ten": 10, "fifteen": 15,
                 "twenty": 20, "thirty": 30}
_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "thousand": 10**3, "million": 10**6,
             "billion": 10**9}
_MEMORY_UNITS = {"gb": 1.0, "gib": 1.0, "mb": 1 / 1024, "mib": 1 / 1024}


class GoalFileError(ValueError):
    """A goal file the engine refuses; the message is one sentence naming the line."""


@dataclass(frozen=True)
class Objective:
    """The metric to optimise and its direction."""

    metric: str  # a key of the harness's result, e.g. "val_bpb"
    direction: str  # "minimize" or "maximize"
    text: str  # the goal as the researcher wrote it

    def is_better(self, candidate: float, reference: float) -> bool:
        """Whether `candidate` is strictly better than `reference` in this direction."""
        if self.direction == "minimize":
            return candidate < reference
        return candidate > reference

    def advantage(self, candidate: float, reference: float) -> float:
        """How far `candidate` is ahead of `reference` (negative: behind)."""
        return reference - candidate if self.direction == "minimize" else candidate - reference

    def sort_key(self, value: float | None) -> float:
        """Sorts scores best first, no score last."""
        if value is None:
            return math.inf
        return value if self.direction == "minimize" else -value

    def ranked(self, items: Iterable[T], score: Callable[[T], float | None]) -> list[T]:
        """`items` best first by `score` (those without one last)."""
        return sorted(items, key=lambda item: self.sort_key(score(item)))

    def best(self, items: Iterable[T], score: Callable[[T], float | None]) -> T | None:
        """The item with the best score, None when none has one."""
        ranked = [item for item in self.ranked(items, score) if score(item) is not None]
        return ranked[0] if ranked else None


@dataclass(frozen=True)
class Spec:
    """What a task's goal file asks, in a form the engine enforces."""

    objective: Objective
    time_budget_s: float  # training time per experiment
    gpus_per_experiment: int  # 0: the experiment runs on CPU slots
    param_limit: int | None  # a model must have fewer parameters than this
    memory_limit_gb: float | None  # peak memory an experiment may use
    metrics: tuple[str, ...]  # harness result keys recorded besides the objective
    editable_files: tuple[str, ...]  # what agents may change
    protected_files: tuple[str, ...]  # what must stay byte for byte as it is
    not_enforced: tuple[str, ...] = field(default=())  # lines kept as text only
    text: str = ""  # the whole goal file, for the agents


def parse_goal_file(text: str) -> Spec:
    """Parse the text of a goal file into a `Spec`, or raise `GoalFileError`."""
    sections = _sections(text)
    goal_lines = sections.get("goal") or sections.get("objective")
    if not goal_lines or not any(line.strip() for _, line in goal_lines):
        raise GoalFileError("the goal file has no '# Goal' section saying what to optimise")
    objective = _objective(goal_lines)
    constraints = _Constraints()
    for number, line in sections.get("constraints", []):
        constraints.read(number, line)
    metrics, unknown_metrics = _metrics(sections.get("metrics", []))
    editable = constraints.values.get("editable", DEFAULT_EDITABLE)
    protected = tuple(dict.fromkeys(
        (GOAL_FILE, HARNESS_FILE) + constraints.values.get("protected", ())
    ))
    if overlap := sorted(set(editable) & set(protected)):
        number = constraints.lines.get("editable", 0)
        raise GoalFileError(
            f"line {number}: {overlap[0]} cannot be editable, it is protected "
            "(the goal file and the harness always are)"
        )
    return Spec(
        objective=objective,
        time_budget_s=constraints.values.get("time", 300.0),
        gpus_per_experiment=constraints.values.get("gpus", 1),
        param_limit=constraints.values.get("params"),
        memory_limit_gb=constraints.values.get("memory"),
        metrics=tuple(m for m in metrics if m != objective.metric),
        editable_files=tuple(editable),
        protected_files=protected,
        not_enforced=tuple(constraints.not_enforced + unknown_metrics),
        text=text,
    )


def load_spec(task_dir: Path) -> Spec:
    """Read and parse the goal file of a task folder."""
    path = Path(task_dir) / GOAL_FILE
    if not path.is_file():
        raise GoalFileError(f"{task_dir} has no {GOAL_FILE} (the goal file)")
    return parse_goal_file(path.read_text(encoding="utf-8"))


def _sections(text: str) -> dict[str, list[tuple[int, str]]]:
    """Level-one headings mapped to their numbered lines (1-based line numbers)."""
    sections: dict[str, list[tuple[int, str]]] = {}
    current: list[tuple[int, str]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if heading := re.match(r"^#\s+(.+?)\s*#*\s*$", line):
            current = sections.setdefault(heading.group(1).strip().lower(), [])
        elif current is not None:
            current.append((number, line))
    return sections


def _objective(goal_lines: list[tuple[int, str]]) -> Objective:
    text = " ".join(line.strip() for _, line in goal_lines if line.strip())
    first_line = next(number for number, line in goal_lines if line.strip())
    minimise, maximise = _MINIMISE.search(text), _MAXIMISE.search(text)
    if minimise and maximise:
        raise GoalFileError(
            f"line {first_line}: the goal asks both to {minimise.group(0)} and to "
            f"{maximise.group(0)}; say one direction"
        )
    if not (minimise or maximise):
        raise GoalFileError(
            f"line {first_line}: the goal does not say whether to minimise or maximise"
        )
    named = re.search(r"`([A-Za-z_][A-Za-z0-9_]*)`", text)
    metric = named.group(1) if named else _metric_named_in(text)
    if metric is None:
        raise GoalFileError(
            f"line {first_line}: the goal names no metric the harness measures "
            "(e.g. validation loss, or a result key in backticks)"
        )
    return Objective(metric, "minimize" if minimise else "maximize", text)


def _metric_named_in(text: str) -> str | None:
    """The harness metric whose phrase appears earliest in `text` (longest phrase on ties)."""
    lowered = text.lower()
    found = [
        (match.start(), -len(phrase), key)
        for key, phrases in METRIC_PHRASES.items()
        for phrase in phrases
        if (match := re.search(rf"\b{re.escape(phrase)}\b", lowered))
    ]
    return min(found)[2] if found else None


def _metrics(lines: list[tuple[int, str]]) -> tuple[list[str], list[str]]:
    """Known metric keys, and the phrases the harness does not measure."""
    known: list[str] = []
    unknown: list[str] = []
    for _, line in lines:
        line = re.sub(r"^\s*[-*]\s*", "", line).strip()
        line = re.sub(r"^(track|record|measure|report|log)\s+", "", line, flags=re.I)
        for phrase in re.split(r",|;|\band\b", line):
            phrase = phrase.strip(" .")
            if not phrase:
                continue
            key = _metric_named_in(phrase)
            if key is None:
                unknown.append(f"metric: {phrase}")
            elif key not in known:
                known.append(key)
    return known, unknown


class _Constraints:
    """Reads constraint lines one by one, refusing unreadable values and contradictions."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}
        self.lines: dict[str, int] = {}
        self.not_enforced: list[str] = []

    def read(self, number: int, line: str) -> None:
        line = re.sub(r"^\s*[-*]\s*", "", line).strip()
        if not line:
            return
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        kind = self._kind(name)
        if kind is None or not value:
            self.not_enforced.append(line)
            return
        parsed = getattr(self, f"_{kind}")(value)
        if parsed is None:
            raise GoalFileError(f"line {number}: cannot read a value from '{line}'")
        if kind in self.values and self.values[kind] != parsed:
            raise GoalFileError(
                f"line {number} contradicts line {self.lines[kind]}: '{line}'"
            )
        self.values[kind], self.lines[kind] = parsed, number

    @staticmethod
    def _kind(name: str) -> str | None:
        if "editable" in name:
            return "editable"
        if "protected" in name:
            return "protected"
        if name in ("time", "budget") or "training time" in name or "time budget" in name:
            return "time"
        if "hardware" in name or "gpu" in name:
            return "gpus"
        if "model size" in name or "parameter" in name or name == "params":
            return "params"
        if "memory" in name:
            return "memory"
        return None

    @staticmethod
    def _time(value: str) -> float | None:
        match = re.match(r"([\d.]+|[a-z]+)\s*([a-z]+)", value.lower())
        if not match:
            return None
        amount = _number(match.group(1))
        unit = _TIME_UNITS.get(match.group(2).rstrip("s") or "s")
        if amount is None or unit is None or amount <= 0:
            return None
        return amount * unit

    @staticmethod
    def _gpus(value: str) -> int | None:
        lowered = value.lower()
        if re.search(r"\bcpu\b|\bno gpu", lowered):
            return 0
        match = re.search(r"([\d]+|[a-z]+)\s*(?:x\s*)?(?:\w+\s+)?gpus?\b", lowered)
        amount = _number(match.group(1)) if match else None
        return int(amount) if amount is not None and amount >= 1 else None

    @staticmethod
    def _params(value: str) -> int | None:
        match = re.match(
            r"(<=|≤|<|at most|under|below|fewer than|less than|max(?:imum)?)?\s*"
            r"([\d.,]+)\s*(k|m|b|thousand|million|billion)?\b",
            value.lower(),
        )
        if not match or not match.group(2).strip(",."):
            return None
        amount = _number(match.group(2).replace(",", ""))
        if amount is None or amount <= 0:
            return None
        count = int(round(amount * _SUFFIXES[match.group(3) or ""]))
        inclusive = match.group(1) in ("<=", "≤", "at most", "max", "maximum")
        return count + 1 if inclusive else count

    @staticmethod
    def _memory(value: str) -> float | None:
        match = re.search(r"([\d.]+)\s*(gib|gb|mib|mb)\b", value.lower())
        amount = _number(match.group(1)) if match else None
        if amount is None or amount <= 0:
            return None
        return amount * _MEMORY_UNITS[match.group(2)]

    @staticmethod
    def _editable(value: str) -> tuple[str, ...] | None:
        files = tuple(name.strip(" `") for name in re.split(r",|\band\b", value))
        return tuple(name for name in files if name) or None

    _protected = _editable


def _number(word: str) -> float | None:
    try:
        return float(word)
    except ValueError:
        return _NUMBER_WORDS.get(word)
