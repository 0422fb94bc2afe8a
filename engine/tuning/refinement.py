"""Refinement: Optuna, through Ray Tune, tunes the knobs of one member while the agents go on.

LLMs change structure well and constants badly; Optuna is the opposite. A `Refinement` takes the
files of one member (a freshly promoted winner), finds its knobs (engine/tuning/knobs.py) and
runs a Ray Tune experiment over them in a thread of its own (every call into Ray Tune is in
engine/tuning/ray_tune.py):
- the search is Optuna's TPE (`OptunaSearch`), whose first trial is the member's own values, its
  study kept in a journal file in the run dir;
- every trial writes its values into the files (only the literals change) and trains them with
  the ordinary runner on one GPU of the same pool as the mutation experiments, as a Ray task of
  its own, all on one seed, so that trials differ only by their values; at most `concurrency`
  trials run at once;
- ASHA stops a trial whose training loss, at the same number of training seconds, is worse than
  most trials' before it. The harness has no validation loss mid-training, so ASHA reads the
  training loss train.py reports (prepare.report), smoothed. That number comes from the
  candidate's own process: it can decide when a trial is cut, never its score;
- every trial that ends is written to a ledger (`trials.jsonl`, fsynced) and handed to the driver
  through a queue (`finished_trials`): the driver stays the only writer of the results and the
  population, and decides what to commit.

Everything lives under `<run dir>/tune/<name>/`: Tune's own experiment state, the Optuna journal
and the ledger. Starting a refinement whose name already has a Tune run there restores it
(`Tuner.restore`): trials that finished are not run again (a trial the ledger holds but Tune's
last snapshot still saw running reports its recorded result at once instead of training), trials
that were interrupted run again under their own ids, and the study goes on from its journal.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import optuna

from engine.experiment.records import ExperimentResult, Job, Outcome, Status
from engine.experiment.spec import Spec
from engine.tuning import ray_tune
from engine.tuning.knobs import Value, find_knobs, write_knobs
from engine.tuning.ray_tune import LOSS, OUTCOME, SECONDS

log = logging.getLogger("autoresearch")

STARTUP_SHARE = 0.25  # TPE samples at random for this share of the trials (at least 2) first
STOP_WAIT_S = 60.0
# Two Tune runs started at once in one process race on Tune's global registry (measured: a
# RuntimeError); refinements of one process run one after the other.
_ONE_AT_A_TIME = threading.Lock()


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


class Refinement:
    """Tunes the knobs of one member through Ray Tune and Optuna, in a thread of its own.

    Thread-safety: `finished_trials`, `running_trials`, `slots_wanted`, `done`, `best` and `stop`
    may be called from any thread (the driver's loop); Tune's own work happens in the
    refinement's thread."""

    def __init__(self, name: str, files: dict[str, str], spec: Spec, folder: Path, *,
                 trials: int, concurrency: int, seed: int, budget_s: float,
                 grace_s: float | None = None, expected_fingerprint: str | None = None,
                 threads: int = 1, gpus_per_trial: int = 1, early_stopping: bool = True,
                 sampler: optuna.samplers.BaseSampler | None = None,
                 run: Callable[..., ExperimentResult] | None = None,
                 recorded: Collection[str] = ()) -> None:
        """`name` names the Tune run kept in `folder` (the same folder resumes it); `trials`
        in all, at most `concurrency` at once, each on `seed` for `budget_s` seconds. `sampler`
        replaces TPE (a benchmark compares Optuna's random sampler); `run` replaces the runner,
        with its signature and `on_progress`. `recorded`: ids of trials the driver already holds
        results for; finished trials in the ledger that it lacks are handed over again. Raises
        engine.tuning.knobs.KnobError for an annotation it cannot read and ValueError when there is
        nothing to tune."""
        self.name, self.files, self.spec = name, dict(files), spec
        self.knobs = [knob for knob in find_knobs(files, spec.editable_files) if knob.tunable]
        if not self.knobs:
            raise ValueError("the editable files have no knob to tune")
        self.start_values: dict[str, Value] = {knob.label: knob.value for knob in self.knobs}
        self.trials, self.concurrency = trials, max(concurrency, 1)
        self.path = Path(folder).resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.error: BaseException | None = None  # what ended Tune, if not the end of its trials
        self.job = Job(dict(files), spec, seed, budget_s, grace_s, expected_fingerprint,
                       threads, run, tuple(self.knobs))
        self.gpus_per_trial, self.early_stopping = gpus_per_trial, early_stopping
        self.sampler = sampler or optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=max(2, round(trials * STARTUP_SHARE)),
            multivariate=True, constant_liar=True)
        self._lock = threading.Lock()
        self._outbox: queue.Queue[TrialOutcome] = queue.Queue()
        self._ended: dict[str, TrialOutcome] = {}
        self._running: set[str] = set()
        self._stopping = threading.Event()
        self._fitting = threading.Event()  # its turn came: it holds _ONE_AT_A_TIME
        self._thread: threading.Thread | None = None
        for entry in self._read_ledger():
            outcome = self._outcome_from(entry)
            self._ended[outcome.trial_id] = outcome
            if outcome.trial_id not in recorded:
                self._outbox.put(outcome)

    # -- the driver's side ---------------------------------------------------------------------

    def start(self) -> Refinement:
        """Start (or resume) the Tune run in the background; returns self."""
        ray_tune.prepare()
        self._thread = threading.Thread(target=self._fit, name=f"tune-{self.name}", daemon=True)
        self._thread.start()
        return self

    def finished_trials(self) -> list[TrialOutcome]:
        """Every trial that ended since the last call, in the order they ended; never blocks."""
        drained = []
        while True:
            try:
                drained.append(self._outbox.get_nowait())
            except queue.Empty:
                return drained

    @property
    def running_trials(self) -> int:
        """Trials holding a GPU now."""
        with self._lock:
            return len(self._running)

    @property
    def slots_wanted(self) -> int:
        """GPUs to keep for this refinement now: one per trial running, up to its concurrency.
        A trial runs once Tune has started its actor, which holds no GPU; its training task asks
        for one then and takes the next that frees, as the driver starts nothing in its place.
        Keeping GPUs for trials Tune has made but not started kept them idle for the 20 to 35 s
        an actor took to start (measured at 64 logical GPUs on 2 loaded cores)."""
        if self.done or not self._fitting.is_set():
            return 0
        with self._lock:
            return min(self.concurrency, len(self._running))

    @property
    def done(self) -> bool:
        """Whether its Tune run has ended (every trial ran, or it stopped or failed)."""
        return self._thread is not None and not self._thread.is_alive()

    def best(self) -> TrialOutcome | None:
        """The trial with the best score so far, if any trial was scored."""
        with self._lock:
            scored = [t for t in self._ended.values() if t.objective is not None]
        if not scored:
            return None
        sign = 1 if self.spec.objective.direction == "minimize" else -1
        return min(scored, key=lambda t: sign * t.objective)

    def stop(self, timeout_s: float = STOP_WAIT_S) -> None:
        """Stop the Tune run and wait for its trials to end (at most `timeout_s`). Trials in
        flight are not handed over: a resume runs them again."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    # -- Tune's side (the refinement's thread, through engine/tuning/ray_tune.py) --------------

    def _fit(self) -> None:
        with _ONE_AT_A_TIME:
            if self._stopping.is_set():
                return
            self._fitting.set()
            try:
                ray_tune.fit(self)
            except BaseException as error:  # noqa: BLE001 - it ends this thread, not the search
                if not self._stopping.is_set():
                    self.error = error
                    log.error("tuning %s failed: %s", self.name, error)
            finally:
                with self._lock:
                    self._running.clear()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def has_ended(self, trial_id: str) -> bool:
        with self._lock:
            return trial_id in self._ended

    def ended(self) -> dict[str, TrialOutcome]:
        with self._lock:
            return dict(self._ended)

    def trial_started(self, trial_id: str) -> None:
        with self._lock:
            self._running.add(trial_id)

    def trial_ended(self, trial_id: str, last: dict, values: dict[str, Value],
                    error: str | None) -> None:
        """Ledger and hand over a trial that ended (`error`: why Tune failed it); a trial that a
        stop interrupted is left for the resume to run again."""
        with self._lock:
            self._running.discard(trial_id)
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
        ended = TrialOutcome(trial_id, values, self._files_for(values), outcome, stopped)
        self._append_ledger(ended)
        with self._lock:
            self._ended[ended.trial_id] = ended
        self._outbox.put(ended)

    def _stopped_outcome(self, last: dict) -> Outcome:
        budget, seconds, loss = self.job.budget_s, last.get(SECONDS, 0.0), last.get(LOSS)
        result = ExperimentResult(
            status=Status.STOPPED, objective=None, seed=self.job.seed, budget_s=budget,
            train_wall_s=seconds,
            metrics={"steps": float(last.get("step", 0)) + 1, "final_train_loss": loss},
            message=f"stopped early by ASHA after {seconds:.1f} s of its {budget:g} s of "
                    f"training, at a smoothed training loss of {loss:.4f}")
        return _outcome_of(result, last)

    def _failed_outcome(self, detail: str, last: dict) -> Outcome:
        result = ExperimentResult(status=Status.CRASH, objective=None, seed=self.job.seed,
                                  budget_s=self.job.budget_s,
                                  message=f"the trial failed in Ray Tune: {detail}")
        return _outcome_of(result, last)

    def _files_for(self, values: dict[str, Value]) -> dict[str, str]:
        return write_knobs(self.files, {knob: values[knob.label] for knob in self.knobs})

    def _outcome_from(self, entry: dict) -> TrialOutcome:
        return TrialOutcome(entry["trial_id"], entry["values"], self._files_for(entry["values"]),
                            Outcome.from_dict(entry["outcome"]), entry["stopped_early"])

    def _append_ledger(self, ended: TrialOutcome) -> None:
        entry = {"trial_id": ended.trial_id, "values": ended.values,
                 "outcome": ended.outcome.to_dict(),
                 "stopped_early": ended.stopped_early}
        with open(self.path / "trials.jsonl", "a", encoding="utf-8") as ledger:
            ledger.write(json.dumps(entry) + "\n")
            ledger.flush()
            os.fsync(ledger.fileno())

    def _read_ledger(self) -> list[dict]:
        path = self.path / "trials.jsonl"
        if not path.is_file():
            return []
        entries = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash: its trial runs again
                continue
        return entries


def _outcome_of(result: ExperimentResult, last: dict) -> Outcome:
    """The outcome of a trial that did not return one, from its last report."""
    return Outcome(result, last.get("started_at", time.time()), time.time(),
                   last.get("node", ""), last.get("gpu", ""), last.get("accelerator", ""))
