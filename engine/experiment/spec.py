"""The goal file (`program.md`) parsed into what the engine can enforce.

The goal file is Markdown with three sections the engine reads: `# Goal` (what to optimise, with
a direction), `# Constraints` (one `- Name: value` line each) and `# Metrics` (what to record).
Everything else, and every line the engine cannot enforce, stays text for the agents; the
unenforced lines are listed when a search starts. A goal file the engine cannot trust is refused
with a `GoalFileError` whose message is one sentence naming the line.

Metrics are named by result key in backticks, or by phrase. The phrases come from the harness:
its `METRICS` declares the keys it reports, each with the phrases that mean it, so "validation
loss" is whatever key the task's harness says it is. A goal naming more than one metric is refused
as ambiguous (backticks settle it), and so is a limit the harness declares no way to measure.

A harness may declare a holdout score: the objective's key prefixed `holdout_`, measured on data
neither training nor selection sees. It is recorded and shown beside the score, never selected on:
a goal cannot name it as its objective.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from engine.experiment.objective import Objective
from engine.experiment.syntax import parse

GOAL_FILE = "program.md"
HARNESS_FILE = "prepare.py"
DEFAULT_EDITABLE = ("train.py",)
HOLDOUT_PREFIX = "holdout_"  # a harness key reported for the record only, never selected on

# What the engine measures of every experiment itself (engine/experiment/runner.py), with the
# phrases a goal file may use for it.
ENGINE_METRICS = {
    "loss_spikes": ("training stability", "stability", "loss spikes"),
    "steps": ("training steps",),
    "steps_per_s": ("training speed", "training throughput", "steps per second"),
    "final_train_loss": ("final training loss", "training loss"),
    "peak_memory_gb": ("peak memory", "memory use"),
}
# What a harness that declares no METRICS is taken to report: what the bundled harness reported
# before harnesses declared their keys.
UNDECLARED_HARNESS_METRICS = {
    "val_bpb": ("validation bits per byte", "bits per byte", "bpb", "validation loss",
                "val loss", "loss"),
    "val_perplexity": ("validation perplexity", "perplexity"),
    "inference_tokens_per_s": ("inference speed", "inference throughput", "tokens per second"),
    "params": ("parameter count", "model size", "parameters"),
}
# Words that name a metric in a goal: one that no declared phrase covers still counts as a
# candidate, so "maximize validation accuracy with few parameters" is refused as ambiguous
# rather than read as "maximize parameters".
_METRIC_NOUNS = re.compile(
    r"(?:\b[a-z]+\s+)?\b(accuracy|loss|error|perplexity|f1|auc|precision|recall|reward|bpb|"
    r"parameters|params|speed|throughput|latency|memory)\b")
_KEY = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")
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
    declared_metrics: tuple[str, ...] | None = None  # the harness's METRICS; None: undeclared
    holdout: str | None = None  # the objective's holdout key, when the harness declares one


def parse_goal_file(text: str, harness_metrics: dict[str, str | tuple[str, ...]] | None = None,
                    ) -> Spec:
    """Parse the text of a goal file into a `Spec`, or raise `GoalFileError`.

    `harness_metrics` are the result keys the task's harness declares, each with the phrases a
    goal file may use for it (`declared_metrics`); None reads the goal as the harnesses that
    declare nothing were read (UNDECLARED_HARNESS_METRICS)."""
    vocabulary = _Vocabulary(harness_metrics)
    sections = _sections(text)
    goal_lines = sections.get("goal") or sections.get("objective")
    if not goal_lines or not any(line.strip() for _, line in goal_lines):
        raise GoalFileError("the goal file has no '# Goal' section saying what to optimise")
    objective = _objective(goal_lines, vocabulary)
    holdout = HOLDOUT_PREFIX + objective.metric
    constraints = _Constraints()
    for number, line in sections.get("constraints", []):
        constraints.read(number, line)
    metrics, unknown_metrics = _metrics(sections.get("metrics", []), vocabulary)
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
    if "params" in constraints.values and not vocabulary.measures("params"):
        raise GoalFileError(
            f"line {constraints.lines['params']}: the model size limit cannot be enforced: "
            f"{HARNESS_FILE} does not declare `params` in its METRICS"
        )
    return Spec(
        objective=objective,
        time_budget_s=constraints.values.get("time", 300.0),
        gpus_per_experiment=constraints.values.get("gpus", 1),
        param_limit=constraints.values.get("params"),
        memory_limit_gb=constraints.values.get("memory"),
        metrics=tuple(m for m in metrics
                      if m != objective.metric and not m.startswith(HOLDOUT_PREFIX)),
        editable_files=tuple(editable),
        protected_files=protected,
        not_enforced=tuple(constraints.not_enforced + unknown_metrics),
        text=text,
        declared_metrics=None if harness_metrics is None else tuple(harness_metrics),
        holdout=holdout if holdout in (harness_metrics or {}) else None,
    )


def load_spec(task_dir: Path) -> Spec:
    """Read and parse the goal file of a task folder, with the metrics its harness declares."""
    folder = Path(task_dir)
    path = folder / GOAL_FILE
    if not path.is_file():
        raise GoalFileError(f"{task_dir} has no {GOAL_FILE} (the goal file)")
    harness = folder / HARNESS_FILE
    declared = declared_metrics(harness.read_text(encoding="utf-8")) if harness.is_file() else None
    return parse_goal_file(path.read_text(encoding="utf-8"), declared)


def task_spec(files: dict[str, str]) -> Spec:
    """The spec of a task given as files (a commit's): its goal file read against its harness."""
    return parse_goal_file(files[GOAL_FILE], declared_metrics(files.get(HARNESS_FILE, "")))


def declared_metrics(harness_source: str) -> dict[str, tuple[str, ...]] | None:
    """The `METRICS` a harness declares: a module-level dict literal of its result keys, each with
    a phrase (or a tuple of phrases) a goal file may use for it. Read without running the
    harness; None when it declares none."""
    try:
        module = parse(harness_source)
    except SyntaxError:
        return None
    for node in module.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == "METRICS"):
            try:
                value = ast.literal_eval(node.value)
            except ValueError as error:
                raise GoalFileError(f"{HARNESS_FILE} line {node.lineno}: METRICS must be a "
                                    "literal dict of result keys to phrases") from error
            if not isinstance(value, dict) or not all(
                    isinstance(key, str) and isinstance(phrases, (str, tuple))
                    for key, phrases in value.items()):
                raise GoalFileError(f"{HARNESS_FILE} line {node.lineno}: METRICS must map "
                                    "result keys to a phrase or a tuple of phrases")
            return {key: (phrases,) if isinstance(phrases, str) else tuple(phrases)
                    for key, phrases in value.items()}
    return None


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


class _Vocabulary:
    """The metrics a goal file may name: the harness's declared keys and the engine's own, each
    by its key or one of its phrases."""

    def __init__(self, harness_metrics: dict[str, tuple[str, ...]] | None) -> None:
        self.declared = harness_metrics is not None
        harness = UNDECLARED_HARNESS_METRICS if harness_metrics is None else harness_metrics
        self.phrases = {key: (phrases,) if isinstance(phrases, str) else tuple(phrases)
                        for key, phrases in {**ENGINE_METRICS, **harness}.items()
                        if not key.startswith(HOLDOUT_PREFIX)}
        self.holdout = {key for key in harness if key.startswith(HOLDOUT_PREFIX)}

    def measures(self, key: str) -> bool:
        return key in self.phrases or key in self.holdout

    def named_in(self, text: str) -> list[tuple[str, str | None]]:
        """The metrics `text` names, in order, as (phrase, key): the longest phrase wins where
        phrases overlap; a metric word no phrase covers comes with key None."""
        lowered = text.lower()
        pairs = sorted(((phrase.lower(), key) for key, phrases in self.phrases.items()
                        for phrase in (key, *phrases)), key=lambda pair: -len(pair[0]))
        taken: list[tuple[int, int]] = []
        found: list[tuple[int, str, str | None]] = []
        for phrase, key in pairs:
            for match in re.finditer(rf"(?<![\w`]){re.escape(phrase)}(?![\w`])", lowered):
                if not any(match.start() < end and start < match.end() for start, end in taken):
                    taken.append(match.span())
                    found.append((match.start(), phrase, key))
        for match in _METRIC_NOUNS.finditer(lowered):
            noun = match.span(1)
            if not any(noun[0] < end and start < noun[1] for start, end in taken):
                found.append((match.start(), match.group(0), None))
        return [(phrase, key) for _, phrase, key in sorted(found)]

    def check_key(self, key: str, number: int) -> None:
        """Refuse a backticked key the harness does not declare (it could never be measured)."""
        if self.declared and not self.measures(key):
            raise GoalFileError(
                f"line {number}: `{key}` is not a metric {HARNESS_FILE} declares or the engine "
                f"measures (there are: {', '.join(sorted(self.phrases))})"
            )


def _objective(goal_lines: list[tuple[int, str]], vocabulary: _Vocabulary) -> Objective:
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
    direction = "minimize" if minimise else "maximize"
    named = list(dict.fromkeys(_KEY.findall(text)))
    if len(named) > 1:
        raise GoalFileError(f"line {first_line}: the goal names several result keys in "
                            f"backticks ({', '.join(named)}); keep only the one to optimise")
    if named:
        vocabulary.check_key(named[0], first_line)
        if named[0] in vocabulary.holdout:
            raise GoalFileError(
                f"line {first_line}: `{named[0]}` is a holdout score: it is recorded beside the "
                f"score and never selected on; name `{named[0].removeprefix(HOLDOUT_PREFIX)}`")
        return Objective(named[0], direction, text)
    candidates = list({key or phrase: (phrase, key)
                       for phrase, key in vocabulary.named_in(_KEY.sub("", text))}.values())
    if not candidates:
        raise GoalFileError(
            f"line {first_line}: the goal names no metric the harness measures "
            "(e.g. validation loss, or a result key in backticks)"
        )
    if len(candidates) > 1 or candidates[0][1] is None:
        described = ", ".join(f"'{phrase}' ({key or f'not a metric {HARNESS_FILE} declares'})"
                              for phrase, key in candidates)
        raise GoalFileError(f"line {first_line}: the goal's metric is ambiguous: it names "
                            f"{described}; put the result key to optimise in backticks")
    return Objective(candidates[0][1], direction, text)


def _metrics(lines: list[tuple[int, str]],
             vocabulary: _Vocabulary) -> tuple[list[str], list[str]]:
    """The metric keys the Metrics section names (in backticks or by phrase), and the phrases
    nobody measures."""
    known: list[str] = []
    unknown: list[str] = []
    for number, line in lines:
        line = re.sub(r"^\s*[-*]\s*", "", line).strip()
        line = re.sub(r"^(track|record|measure|report|log)\s+", "", line, flags=re.I)
        for phrase in re.split(r",|;|\band\b", line):
            phrase = phrase.strip(" .")
            if not phrase:
                continue
            keys = _KEY.findall(phrase)
            for key in keys:
                vocabulary.check_key(key, number)
            keys = keys or [key for _, key in vocabulary.named_in(phrase) if key is not None]
            if not keys:
                unknown.append(f"metric: {phrase}")
            known += [key for key in keys if key not in known]
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
