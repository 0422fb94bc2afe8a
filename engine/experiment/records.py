"""The vocabulary of an experiment, from the queue to the results store.

    Experiment  a commit queued to run on one seed (journaled before any GPU sees it)
    Job         what a worker needs to train it: files, spec, seed, budget (knob trials too)
    Outcome     what the worker hands back: the runner's ExperimentResult, where and when it ran
    Result      the recorded result, one row of the results store: what the decisions read

`Kind` and `Status` are the only definitions of the kinds and statuses; they are `str`s, so a
row read from Parquet compares equal to them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum

from engine.experiment.spec import Spec

# What every experiment measures beside the goal file's own metrics (engine/experiment/runner.py).
STANDARD_METRICS = ("params", "peak_memory_gb", "steps", "steps_per_s", "final_train_loss",
                    "loss_spikes")


def metric_columns(spec: Spec) -> list[str]:
    """The results' metric columns: the objective, its holdout score when the harness declares
    one, the goal file's metrics, the standard ones."""
    holdout = [spec.holdout] if spec.holdout else []
    return list(dict.fromkeys([spec.objective.metric, *holdout, *spec.metrics,
                               *STANDARD_METRICS]))


class Kind(StrEnum):
    BASELINE = "baseline"  # a noise run of the starting code
    MUTATION = "mutation"  # an agent's change
    TUNE = "tune"  # a knob trial of a refinement (Optuna through Ray Tune)
    CONFIRM = "confirm"  # a fresh-seed run of a candidate for promotion
    CONTROL = "control"  # a run of the baseline beside a candidate's confirmation

    @property
    def confirmation(self) -> bool:
        """Runs the engine makes to decide a promotion, not to explore."""
        return self in (Kind.CONFIRM, Kind.CONTROL)


class Status(StrEnum):
    OK = "ok"  # trained and scored
    CRASH = "crash"  # train.py or the harness failed, or the worker was lost
    TIMEOUT = "timeout"  # went past its budget and grace
    INVALID = "invalid"  # the harness refused the model (a limit, the data, the export)
    STOPPED = "stopped"  # a knob trial that ASHA stopped early
    REJECTED = "rejected"  # a proposal refused before any GPU (or an agent that failed)
    INTERRUPTED = "interrupted"  # the search stopped while it ran: a resume runs it again

    @property
    def trained(self) -> bool:
        """Whether the experiment ran to its end (whatever the end)."""
        return self not in (Status.REJECTED, Status.INTERRUPTED)

    @property
    def in_tsv(self) -> bool:
        """Whether results.tsv (the original autoresearch's columns) lists it."""
        return self.trained and self is not Status.STOPPED


@dataclass
class ExperimentResult:
    """What the runner measured of one training. Every number here was measured by the engine or
    the harness, except `steps`, `steps_per_s`, `final_train_loss`, `loss_spikes` and the loss
    curve, which come from the steps train.py reported (engine/experiment/progress.py)."""

    status: Status  # OK, CRASH, TIMEOUT, INVALID (or STOPPED, for a trial ASHA cut)
    objective: float | None  # the spec's objective metric, when the harness could score the model
    metrics: dict[str, float] = field(default_factory=dict)  # everything the harness measured
    seed: int = 0  # chosen by the runner, handed to train.py
    budget_s: float = 0.0  # the training time budget
    train_wall_s: float = 0.0  # wall time of the training process, start-up included
    eval_wall_s: float = 0.0
    startup_s: float | None = None  # from train.py's start to its first reported step
    export_s: float | None = None  # the hand-over's export, where the harness reports it (kit)
    message: str = ""  # why, for any status but ok
    log_tail: str = ""  # the end of train.py's output
    left_behind: int = 0  # processes train.py left running, killed by the runner
    data_fingerprint: str = ""  # which data the harness scored against
    loss_curve: list[tuple[int, float]] = field(default_factory=list)  # (step, training loss)

    def __post_init__(self) -> None:
        self.status = Status(self.status)  # a run function may name it by its string

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentResult:
        return cls(**data)

    def text(self, metric: str) -> str:
        """What `autoresearch experiment` prints: the status, the objective (`metric`) first,
        then every other metric, and the end of train.py's output when it crashed."""
        lines = [f"status: {self.status}"] + ([f"message: {self.message}"] if self.message else [])
        lines.append(f"{metric}: {_number(self.objective)}")
        lines += [f"{name}: {_number(value)}" for name, value in sorted(self.metrics.items())
                  if name != metric]
        lines.append(f"train_wall_s: {self.train_wall_s:.1f}")
        if self.status is Status.CRASH and self.log_tail:
            lines.append("--- end of train.py's output ---\n" + self.log_tail)
        return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


@dataclass(frozen=True)
class Job:
    """What a worker needs to run one experiment (or one knob trial: `knobs` are then the
    refinement's, and the trial writes its own values into `files` before training)."""

    files: dict[str, str]
    spec: Spec
    seed: int
    budget_s: float
    grace_s: float | None
    expected_fingerprint: str | None
    threads: int  # CPU threads the training process may use
    run: Callable[..., ExperimentResult] | None = None  # None: engine.experiment.runner's
    knobs: tuple = ()  # engine.tuning.knobs.Knob, for a trial


@dataclass
class Outcome:
    """What a worker hands back for one job."""

    result: ExperimentResult
    started_at: float
    finished_at: float
    node: str = ""  # host name / Ray node id
    gpu: str = ""  # the GPU ids it held
    accelerator: str = "cpu"  # the GPU model of its node, as Ray detected it

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Outcome:
        return cls(**{**data, "result": ExperimentResult.from_dict(data["result"])})


@dataclass
class Experiment:
    """One commit queued or running on one seed."""

    exp_id: str
    kind: Kind
    island: int | None
    commit: str
    parent: str  # the parent's commit ("" for the starting code's noise runs)
    files: dict[str, str]
    description: str
    seed: int
    agent: str
    queued_at: float = field(default_factory=time.time)
    strategy: str = ""  # mutations of an agent: its island's strategy (agents/strategies.py)
    model: str = ""  # and the model that wrote the change, for an LLM agent
    started_at: float | None = None
    seed_only: bool = False  # its only effect is on randomness (engine/experiment/checks.py)
    cost_usd: float = 0.0
    tokens: int = 0
    code: str = ""  # the hash of its editable files (mutations): duplicates stay refused
    confirms: str = ""  # confirm and control runs: the commit of the candidate they serve
    accelerator: str = ""  # confirm and control runs: the GPU model they must run on

    def journal_entry(self) -> dict:
        """What the journal keeps of it: everything but the files, which its commit holds."""
        return {name: value for name, value in asdict(self).items()
                if name not in ("files", "started_at")}

    @classmethod
    def from_journal(cls, entry: dict) -> Experiment:
        """An experiment as the journal (or, for a refused proposal, its row) recorded it; its
        files are filled in only where needed."""
        known = {f.name for f in fields(cls)} - {"files", "started_at"}
        values = {name: value for name, value in entry.items() if name in known}
        values["kind"] = Kind(values["kind"])
        values["cost_usd"] = values.get("cost_usd") or 0.0
        values["tokens"] = values.get("tokens") or 0
        for name in ("confirms", "accelerator", "strategy", "model"):  # null in older rows
            values[name] = values.get(name) or ""
        return cls(files={}, **values)


@dataclass
class Result:
    """One experiment's recorded result: a row of the results store, what the decisions read."""

    exp_id: str
    run: str
    kind: Kind
    island: int | None
    agent: str
    commit: str
    parent: str
    confirms: str
    description: str
    seed: int
    budget_s: float
    queued_at: float
    cost_usd: float
    tokens: int
    status: Status
    message: str = ""
    objective: float | None = None
    log_tail: str = ""
    train_wall_s: float = 0.0
    eval_wall_s: float = 0.0
    left_behind: int = 0
    data_fingerprint: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    node: str = ""
    gpu: str = ""
    accelerator: str = ""
    trial: str = ""  # a knob trial: Tune's id
    knobs: str = ""  # a knob trial: its values, as JSON
    strategy: str = ""  # an agent's change: its island's strategy
    model: str = ""  # an LLM agent's change: the model that wrote it
    # The training loss at a few steps evenly spaced over the run (engine/experiment/progress.py)
    loss_curve: tuple[tuple[int, float], ...] = ()
    metrics: dict[str, float | None] = field(default_factory=dict)

    @property
    def score(self) -> float | None:
        """The objective, when the experiment trained and was scored without fault."""
        return self.objective if self.status is Status.OK else None

    @property
    def gpu_seconds(self) -> float:
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return self.finished_at - self.started_at

    @classmethod
    def of(cls, experiment: Experiment, outcome: Outcome | Exception | None, *, run: str,
           budget_s: float, status: Status | None = None, message: str = "",
           **columns) -> Result:
        """The result of a queued experiment from what its worker returned: an Outcome, the
        exception that ended its task, or None (it never ran: `status` says why)."""
        result = cls(
            exp_id=experiment.exp_id, run=run, kind=experiment.kind, island=experiment.island,
            agent=experiment.agent, commit=experiment.commit, parent=experiment.parent,
            confirms=experiment.confirms, description=experiment.description,
            seed=experiment.seed, budget_s=budget_s, queued_at=experiment.queued_at,
            cost_usd=experiment.cost_usd, tokens=experiment.tokens, status=status,
            message=message, strategy=experiment.strategy, model=experiment.model, **columns)
        if isinstance(outcome, Exception):
            result.status = Status.CRASH
            result.message = f"the worker failed: {outcome}"[:2000]
            result.started_at, result.finished_at = experiment.started_at, time.time()
        elif isinstance(outcome, Outcome):
            trained = outcome.result
            result.status, result.objective = Status(trained.status), trained.objective
            result.message, result.log_tail = trained.message, trained.log_tail
            result.train_wall_s, result.eval_wall_s = trained.train_wall_s, trained.eval_wall_s
            result.left_behind, result.data_fingerprint = (trained.left_behind,
                                                           trained.data_fingerprint)
            result.started_at, result.finished_at = outcome.started_at, outcome.finished_at
            result.node, result.gpu, result.accelerator = (outcome.node, outcome.gpu,
                                                           outcome.accelerator)
            result.metrics = dict(trained.metrics)
            result.loss_curve = tuple((int(step), float(loss)) for step, loss in trained.loss_curve)
        return result

    def to_row(self) -> dict:
        """The row's columns: the fixed ones, then every metric."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "metrics"}
        row["kind"], row["status"] = str(self.kind), str(self.status)
        row["loss_curve"] = json.dumps(self.loss_curve) if self.loss_curve else None
        return {**row, **self.metrics}

    @classmethod
    def from_row(cls, row: dict) -> Result:
        fixed = {f.name for f in fields(cls)} - {"metrics"}
        values = {name: row[name] for name in fixed if name in row}
        for name in ("log_tail", "node", "gpu", "accelerator", "trial", "knobs", "message",
                     "data_fingerprint", "confirms", "strategy", "model"):
            values[name] = values.get(name) or ""
        for name in ("train_wall_s", "eval_wall_s", "cost_usd"):
            values[name] = values.get(name) or 0.0
        values["left_behind"], values["tokens"] = (values.get("left_behind") or 0,
                                                   values.get("tokens") or 0)
        values["kind"], values["status"] = Kind(row["kind"]), Status(row["status"])
        values["loss_curve"] = tuple((int(step), float(loss))  # a row from before it had one: ()
                                     for step, loss in json.loads(row.get("loss_curve") or "[]"))
        metrics = {name: value for name, value in row.items() if name not in fixed}
        return cls(**values, metrics=metrics)
