"""The Tune side of a refinement: its plan, the state Ray Tune's callbacks report to, the
ledger of its trials, and the host they run in: a Ray actor the search keeps on the driver's
node (`TuneHost`). The driver's side, which starts a run and hears from it, is
engine/tuning/refinement.py.

Why a process of its own: Tune's controller is a loop of Python that wakes many times a second
while trials run. As a thread of the driver's process it took the interpreter from the driver's
loop: at 64 logical GPUs on 2 cores the driver's work per experiment went from 28 to 57 ms with
tuning on (benchmarks/utilization.py). The host is pinned to the driver's node because the
refinement's folder (Tune's state, the Optuna journal, the ledger) lies in the run dir there, and
asks for no CPU, as the driver asks for none.

Every trial that ends is written to the ledger (`trials.jsonl`, fsynced) before the driver hears
of it, so that a trial the ledger holds is never trained again, whatever happens next. The driver
hears through `news`, a call that returns as soon as something changed (a long poll): one call
per event, not one per turn of its loop.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import ray

from engine.experiment.records import ExperimentResult, Job, Outcome, Status
from engine.rundir.journal import Journal
from engine.tuning import ray_tune
from engine.tuning.knobs import Knob, Value, write_knobs
from engine.tuning.ray_tune import LOSS, OUTCOME, SECONDS


@dataclass(frozen=True)
class TrialOutcome:
    """One trial that ended: what it ran and what came of it."""

    trial_id: str  # Tune's id, the same after a resume
    values: dict[str, Value]  # knob label -> the value written into the files
    files: dict[str, str]  # what it trained
    outcome: Outcome
    stopped_early: bool  # ASHA stopped it (its result's status is "stopped")

    @property
    def objective(self) -> float | None:
        """Its score, when it trained to the end and was scored without fault."""
        result = self.outcome.result
        return result.objective if result.status is Status.OK else None

    def to_entry(self) -> dict:
        """Its line in the ledger (`TunePlan.ledgered` reads it back)."""
        return {"trial_id": self.trial_id, "values": self.values,
                "outcome": self.outcome.to_dict(), "stopped_early": self.stopped_early}


@dataclass(frozen=True)
class TunePlan:
    """What a refinement's Tune run does, and where it keeps its state."""

    name: str  # names the Tune run in `path` (the same folder resumes it)
    path: Path  # the refinement's folder: Tune's state, the Optuna journal, the ledger
    files: dict[str, str]  # the member's files, whose knobs are tuned
    knobs: tuple[Knob, ...]
    job: Job  # how each trial trains: one seed, the budget, the runner
    trials: int  # in all
    concurrency: int  # at most this many at once
    gpus_per_trial: int
    early_stopping: bool  # ASHA, or every trial to the end
    sampler: optuna.samplers.BaseSampler
    direction: str  # the objective's: "minimize" or "maximize"

    @property
    def start_values(self) -> dict[str, Value]:
        return {knob.label: knob.value for knob in self.knobs}

    def files_for(self, values: dict[str, Value]) -> dict[str, str]:
        """The member's files with `values` (label -> value) written into its knobs."""
        return write_knobs(self.files, {knob: values[knob.label] for knob in self.knobs})

    def ledger(self) -> Journal:
        """The ledger of its trials: one line per trial that ended, fsynced."""
        return Journal(self.path / "trials.jsonl")

    def ledgered(self) -> list[TrialOutcome]:
        """Every trial the ledger holds, in the order they ended (a line cut short by a crash is
        left out: its trial runs again)."""
        return [TrialOutcome(entry["trial_id"], entry["values"], self.files_for(entry["values"]),
                             Outcome.from_dict(entry["outcome"]), entry["stopped_early"])
                for entry in self.ledger().entries()]


@dataclass(frozen=True)
class News:
    """What the driver hears from a Tune run: what changed since it last asked."""

    version: int  # ask again with it: the next answer waits for a change after it
    ended: list[TrialOutcome] = field(default_factory=list)  # in the order they ended
    running: int = 0  # trials holding a GPU now
    fitting: bool = False  # Tune's run has begun


class TuneRun:
    """A refinement's Tune run (engine/tuning/ray_tune.py), and the state its callbacks report
    to. In its actor, `fit` runs in one thread while the driver calls `news` and `stop` from
    others."""

    def __init__(self, plan: TunePlan, ended: dict[str, TrialOutcome]) -> None:
        """`ended`: the trials the ledger holds; each reports its recorded result to Tune at
        once, were Tune's last snapshot to run it again."""
        self.plan = plan
        self._ledger = plan.ledger()
        self._changed = threading.Condition()
        self._version = 0
        self._ended = dict(ended)
        self._unheard: list[TrialOutcome] = []  # ended since the driver last asked
        self._running: set[str] = set()
        self._fitting = False
        self._stopping = threading.Event()

    # -- the driver's calls --------------------------------------------------------------------

    def fit(self) -> str | None:
        """Run (or resume) the Tune run to its end. Returns why it failed, if it did."""
        with self._changed:
            if self._stopping.is_set():
                return None
            self._fitting = True
            self._change()
        ray_tune.prepare()
        try:
            ray_tune.fit(self)
        except BaseException as error:  # noqa: BLE001 - it ends the tuning, not the search
            if not self._stopping.is_set():
                return f"{type(error).__name__}: {error}"
        finally:
            self._ledger.close()
            with self._changed:
                self._running.clear()
                self._change()
        return None

    def news(self, seen: int, wait_s: float) -> News:
        """What changed after version `seen`, once something has (at most `wait_s` later)."""
        with self._changed:
            self._changed.wait_for(lambda: self._version != seen, timeout=wait_s)
            heard, self._unheard = self._unheard, []
            return News(self._version, heard, len(self._running), self._fitting)

    def stop(self) -> None:
        """End the Tune run at its next step; the trials in flight are not ledgered, so that a
        resume runs them again."""
        with self._changed:
            self._stopping.set()
            self._change()

    # -- Tune's callbacks (engine/tuning/ray_tune.py) ------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def has_ended(self, trial_id: str) -> bool:
        with self._changed:
            return trial_id in self._ended

    def ended(self) -> dict[str, TrialOutcome]:
        with self._changed:
            return dict(self._ended)

    def trial_started(self, trial_id: str) -> None:
        with self._changed:
            self._running.add(trial_id)
            self._change()

    def trial_ended(self, trial_id: str, last: dict, values: dict[str, Value],
                    error: str | None) -> None:
        """Ledger a trial that ended (`error`: why Tune failed it) and let the driver hear of
        it; a trial that a stop interrupted is left for the resume to run again."""
        with self._changed:
            self._running.discard(trial_id)
            self._change()
            if trial_id in self._ended:  # its recorded result, replayed after a resume
                return
        if OUTCOME in last:
            outcome, stopped = Outcome.from_dict(json.loads(last[OUTCOME])), False
        elif self._stopping.is_set():
            return
        elif error is not None:
            outcome, stopped = self._failed_outcome(error, last), False
        else:
            outcome, stopped = self._stopped_outcome(last), True
        ended = TrialOutcome(trial_id, values, self.plan.files_for(values), outcome, stopped)
        self._ledger.append(ended.to_entry())
        with self._changed:
            self._ended[trial_id] = ended
            self._unheard.append(ended)
            self._change()

    def _change(self) -> None:
        self._version += 1
        self._changed.notify_all()

    def _stopped_outcome(self, last: dict) -> Outcome:
        job = self.plan.job
        seconds, loss = last.get(SECONDS, 0.0), last.get(LOSS)
        result = ExperimentResult(
            status=Status.STOPPED, objective=None, seed=job.seed, budget_s=job.budget_s,
            train_wall_s=seconds,
            metrics={"steps": float(last.get("step", 0)) + 1, "final_train_loss": loss},
            message=f"stopped early by ASHA after {seconds:.1f} s of its {job.budget_s:g} s "
                    f"of training, at a smoothed training loss of {loss:.4f}")
        return _outcome_of(result, last)

    def _failed_outcome(self, detail: str, last: dict) -> Outcome:
        job = self.plan.job
        result = ExperimentResult(status=Status.CRASH, objective=None, seed=job.seed,
                                  budget_s=job.budget_s,
                                  message=f"the trial failed in Ray Tune: {detail}")
        return _outcome_of(result, last)


class TuneHost:
    """The process Tune runs in, kept for the search so that each refinement starts at once (a
    fresh process would import Tune and Optuna first: seconds of the head's CPU): refinements
    one after another, each under its name, while the driver asks for their news and stops
    them from other threads."""

    def __init__(self) -> None:
        self._runs: dict[str, TuneRun] = {}
        self._stopped: set[str] = set()  # runs stopped, begun or not
        self._began = threading.Condition()

    def fit(self, plan: TunePlan, ended: dict[str, TrialOutcome]) -> str | None:
        """Run (or resume) the Tune run of `plan` to its end. Returns why it failed, if it did."""
        run = TuneRun(plan, ended)
        with self._began:
            if plan.name in self._stopped:
                run.stop()
            self._runs[plan.name] = run
            self._began.notify_all()
        return run.fit()

    def news(self, name: str, seen: int, wait_s: float) -> News:
        """`TuneRun.news` of the run `name`, once it has begun (at most `wait_s` later)."""
        with self._began:
            self._began.wait_for(lambda: name in self._runs or name in self._stopped,
                                timeout=wait_s)
            run = self._runs.get(name)
        return run.news(seen, wait_s) if run else News(seen)

    def stop(self, name: str) -> None:
        """Stop the run `name`, or keep it from beginning."""
        with self._began:
            self._stopped.add(name)
            run = self._runs.get(name)
            self._began.notify_all()  # a call for its news waiting for it to begin answers
        if run:
            run.stop()

    def forget(self, name: str) -> None:
        """The driver has heard the last of run `name`."""
        with self._began:
            self._runs.pop(name, None)


# Started on the driver's node, with threads for `fit`, `news` and `stop` at once.
TuneActor = ray.remote(max_concurrency=4)(TuneHost)


def _outcome_of(result: ExperimentResult, last: dict) -> Outcome:
    """The outcome of a trial that did not return one, from its last report."""
    return Outcome(result, last.get("started_at", time.time()), time.time(),
                   last.get("node", ""), last.get("gpu", ""), last.get("accelerator", ""))
