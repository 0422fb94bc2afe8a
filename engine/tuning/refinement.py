"""Refinement: Optuna, through Ray Tune, tunes the knobs of one member while the agents go on.

LLMs change structure well and constants badly; Optuna is the opposite. A `Refinement` takes the
files of one member (a freshly promoted winner), finds its knobs (engine/tuning/knobs.py) and
runs a Ray Tune experiment over them in a thread of its own:
- the search is Optuna's TPE (`OptunaSearch`), whose first trial is the member's own values, its
  study kept in a journal file in the run dir;
- every trial writes its values into the files (only the literals change) and trains them with
  the ordinary runner on one GPU of the same pool as the mutation experiments, all on one seed,
  so that trials differ only by their values; at most `concurrency` trials run at once;
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
from pathlib import Path

import optuna
import ray
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from engine.experiment.records import ExperimentResult, Job, Outcome, Status
from engine.experiment.spec import Spec
from engine.tuning.knobs import Knob, Value, find_knobs, write_knobs
from engine.tuning.trial import (
    LOSS,
    OBJECTIVE,
    OUTCOME,
    SECONDS,
    TrialOutcome,
    last_report,
    trainable,
    written_values,
)

log = logging.getLogger("autoresearch")

FIRST_RUNG = 0.25  # ASHA's first decision, as a share of the budget
REDUCTION_FACTOR = 3  # ASHA keeps the best third at each rung
STARTUP_SHARE = 0.25  # TPE samples at random for this share of the trials (at least 2) first
MAX_FAILURES = 2  # Tune's retries of a trial whose worker died
STOP_WAIT_S = 60.0
# Read by Tune in this process when a run starts. Tune's strict check wants every report to
# carry the objective, which only a trial's last report has. Tune snapshots its state every
# second rather than every ten, so that a stop or crash rarely loses track of a trial. Tune's
# newer console output ignores verbose=0; the driver has its own live view.
TUNE_ENVIRONMENT = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1",
                    "RAY_AIR_NEW_OUTPUT": "0"}

# Tune pickles its callbacks and its searcher into the run dir; what they hold is only the key
# to the live refinement of this process that they report to.
_LIVE: dict[str, Refinement] = {}
# Two Tune runs started at once in one process race on Tune's global registry (measured: a
# RuntimeError); refinements of one process run one after the other.
_ONE_AT_A_TIME = threading.Lock()


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
        self._job = Job(dict(files), spec, seed, budget_s, grace_s, expected_fingerprint,
                        threads, run, tuple(self.knobs))
        self._gpus_per_trial, self._early_stopping = gpus_per_trial, early_stopping
        self._sampler = sampler or optuna.samplers.TPESampler(
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
        os.environ.update({k: v for k, v in TUNE_ENVIRONMENT.items() if k not in os.environ})
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        _LIVE[str(self.path)] = self
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
        """GPUs to keep free for this refinement now: its concurrency while trials remain, none
        while it waits for another refinement of this process to end."""
        if self.done or not self._fitting.is_set():
            return 0
        with self._lock:
            return min(self.concurrency, max(self.trials - len(self._ended), 0))

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

    # -- Tune's side (the refinement's thread) -------------------------------------------------

    def _fit(self) -> None:
        with _ONE_AT_A_TIME:
            if self._stopping.is_set():
                return
            self._fitting.set()
            try:
                self._tuner().fit()
            except BaseException as error:  # noqa: BLE001 - it ends this thread, not the search
                if not self._stopping.is_set():
                    self.error = error
                    log.error("tuning %s failed: %s", self.name, error)
            finally:
                _LIVE.pop(str(self.path), None)
                with self._lock:
                    self._running.clear()

    def _tuner(self) -> tune.Tuner:
        with self._lock:
            finished = {trial_id: last_report(outcome) for trial_id, outcome in
                        self._ended.items()}
        resourced = tune.with_resources(
            trainable(self._job, self.name, finished),
            self._resources())
        if tune.Tuner.can_restore(str(self.path)):
            log.info("tuning %s: resuming its Tune run", self.name)
            return tune.Tuner.restore(str(self.path), resourced, resume_errored=True)
        direction = self.spec.objective.direction
        search = _KnobSearch(
            space=_space(self.knobs), metric=OBJECTIVE,
            mode="min" if direction == "minimize" else "max",
            points_to_evaluate=[dict(self.start_values)], sampler=self._sampler,
            study_name=self.name, key=str(self.path),
            storage=JournalStorage(JournalFileBackend(str(self.path / "optuna.journal"))))
        budget = self._job.budget_s
        scheduler = (ASHAScheduler(time_attr=SECONDS, metric=LOSS, mode="min", max_t=budget,
                                   grace_period=FIRST_RUNG * budget,
                                   reduction_factor=REDUCTION_FACTOR)
                     if self._early_stopping else FIFOScheduler())
        return tune.Tuner(
            resourced,
            tune_config=tune.TuneConfig(
                search_alg=search, scheduler=scheduler, num_samples=self.trials,
                max_concurrent_trials=self.concurrency, reuse_actors=True,
                trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=self.path.name, storage_path=str(self.path.parent), verbose=0,
                callbacks=[_Recorder(str(self.path))],
                failure_config=tune.FailureConfig(max_failures=MAX_FAILURES)))

    def _resources(self) -> dict[str, float]:
        """A trial holds GPUs like a mutation experiment: no CPU where the cluster has GPUs
        (NOTES.md: otherwise only as many run as there are cores), one CPU where it has none."""
        if ray.cluster_resources().get("GPU", 0):
            return {"cpu": 0, "gpu": max(self._gpus_per_trial, 1)}
        return {"cpu": 1}

    def _trial_started(self, trial_id: str) -> None:
        with self._lock:
            self._running.add(trial_id)

    def _trial_ended(self, trial: tune.experiment.Trial, error: bool) -> None:
        """Ledger and hand over a trial that ended; a trial that a stop interrupted is left for
        the resume to run again."""
        last = dict(trial.last_result or {})
        with self._lock:
            self._running.discard(trial.trial_id)
            if trial.trial_id in self._ended:  # its recorded result, replayed after a resume
                return
        if OUTCOME in last:
            outcome, stopped = json.loads(last[OUTCOME]), False
        elif self._stopping.is_set():
            return
        elif error:
            outcome, stopped = self._failed_outcome(trial, last), False
        else:
            outcome, stopped = self._stopped_outcome(last), True
        values = last.get("values") or written_values(self.knobs, trial.config)
        ended = TrialOutcome(trial.trial_id, values, self._files_for(values), outcome, stopped)
        self._append_ledger(ended)
        with self._lock:
            self._ended[ended.trial_id] = ended
        self._outbox.put(ended)

    def _stopped_outcome(self, last: dict) -> dict:
        budget, seconds, loss = self._job.budget_s, last.get(SECONDS, 0.0), last.get(LOSS)
        result = ExperimentResult(
            status=Status.STOPPED, objective=None, seed=self._job.seed, budget_s=budget,
            train_wall_s=seconds,
            metrics={"steps": float(last.get("step", 0)) + 1, "final_train_loss": loss},
            message=f"stopped early by ASHA after {seconds:.1f} s of its {budget:g} s of "
                    f"training, at a smoothed training loss of {loss:.4f}")
        return _outcome_dict(result, last)

    def _failed_outcome(self, trial: tune.experiment.Trial, last: dict) -> dict:
        detail = "no error recorded"
        if trial.error_file and Path(trial.error_file).is_file():
            lines = Path(trial.error_file).read_text(errors="replace").strip().splitlines()
            detail = lines[-1] if lines else detail
        result = ExperimentResult(status=Status.CRASH, objective=None, seed=self._job.seed,
                                  budget_s=self._job.budget_s,
                                  message=f"the trial failed in Ray Tune: {detail}")
        return _outcome_dict(result, last)

    def _files_for(self, values: dict[str, Value]) -> dict[str, str]:
        return write_knobs(self.files, {knob: values[knob.label] for knob in self.knobs})

    def _outcome_from(self, entry: dict) -> TrialOutcome:
        return TrialOutcome(entry["trial_id"], entry["values"], self._files_for(entry["values"]),
                            entry["outcome"], entry["stopped_early"])

    def _append_ledger(self, ended: TrialOutcome) -> None:
        entry = {"trial_id": ended.trial_id, "values": ended.values, "outcome": ended.outcome,
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


class _Recorder(tune.Callback):
    """Tells the live refinement when trials start and end, and stops Tune when asked."""

    def __init__(self, key: str) -> None:
        self.key = key

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        refinement = _LIVE.get(self.key)
        if refinement is not None and refinement._stopping.is_set():
            # Ends the run like a crash would, without marking the trials in flight finished:
            # Tune's last snapshot holds them as running, so a resume runs them again.
            raise _Stopped

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        if refinement := _LIVE.get(self.key):
            refinement._trial_started(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        if refinement := _LIVE.get(self.key):
            refinement._trial_ended(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        if refinement := _LIVE.get(self.key):
            refinement._trial_ended(trial, error=True)


class _Stopped(Exception):
    """Raised inside Tune's loop to end a run that `Refinement.stop` asked to end."""


class _KnobSearch(OptunaSearch):
    """OptunaSearch for trials that report a training loss as they go and the objective once.

    Intermediate reports do not reach Optuna: they are ASHA's business, and a trial that ASHA
    stops is told to Optuna as pruned (no objective), which TPE ranks below every scored trial.
    A trial interrupted by a stop is not told at all, so that its rerun after a resume is; a
    trial the ledger holds was told before it was ledgered, and is not told twice."""

    def __init__(self, *args, key: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.key = key

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        return

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        refinement = _LIVE.get(self.key)
        if refinement is not None and trial_id in refinement._ended:
            self._completed_trials.add(trial_id)
            return
        interrupted = (refinement is not None and refinement._stopping.is_set()
                       and not (result and OUTCOME in result))
        if not interrupted:
            super().on_trial_complete(trial_id, result, error)

    def restore(self, checkpoint_path: str) -> None:
        """Restore, then mark failed every Optuna trial left running that no Tune trial will
        finish: a trial the stop or crash caught after Tune's last snapshot."""
        super().restore(checkpoint_path)
        pending = {trial.number for trial_id, trial in self._ot_trials.items()
                   if trial_id not in self._completed_trials}
        for trial in self._ot_study.get_trials(deepcopy=False,
                                               states=(optuna.trial.TrialState.RUNNING,)):
            if trial.number not in pending:
                self._ot_study.tell(trial.number, state=optuna.trial.TrialState.FAIL)


def _outcome_dict(result: ExperimentResult, last: dict) -> dict:
    """The Outcome of a trial that did not return one, as JSON data."""
    return Outcome(result, last.get("started_at", time.time()), time.time(),
                   last.get("node", ""), last.get("gpu", ""),
                   last.get("accelerator", "")).to_dict()


def _space(knobs: list[Knob]) -> dict[str, optuna.distributions.BaseDistribution]:
    space = {}
    for knob in knobs:
        if knob.alternatives:
            space[knob.label] = optuna.distributions.CategoricalDistribution(knob.alternatives)
        elif isinstance(knob.value, int):
            space[knob.label] = optuna.distributions.IntDistribution(
                int(knob.range.low), int(knob.range.high), log=knob.range.log)
        else:
            space[knob.label] = optuna.distributions.FloatDistribution(
                float(knob.range.low), float(knob.range.high), log=knob.range.log)
    return space


def _trial_dirname(trial) -> str:
    """Tune's default names a trial's folder after its config, which may hold paths."""
    return trial.trial_id
