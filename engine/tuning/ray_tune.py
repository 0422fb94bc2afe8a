"""The Ray Tune glue of knob tuning, on both sides: the Tune run a refinement drives (in its own
actor, engine/tuning/tune_run.py), and the trial Tune runs on a worker.

The run's side: Optuna's TPE (`OptunaSearch`) whose first trial is the member's own values, its
study kept in a journal file in the refinement's folder; ASHA, which stops a trial whose training
loss, at the same number of training seconds, is worse than most trials' before it (the harness
has no validation loss mid-training, so ASHA reads the training loss train.py reports, smoothed:
that number comes from the candidate's own process and can decide when a trial is cut, never its
score); a callback that tells the run's state when trials start and end.

The trial's side: a trial's Tune actor writes its values into the member's files (only the
literals change) and trains them as a Ray task like a mutation experiment's (one GPU, a warm
worker of the same pool, the ordinary runner: engine/tuning/trial_task.py). The actor holds no
GPU itself: starting it takes a fresh worker process, measured at 20 to 35 s on a loaded 2-core
head, and a GPU held meanwhile idles (benchmarks/utilization.py). The task streams the training's
steps back to the actor, which reports them to Tune as they come; its last report carries the
outcome the driver records.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
import ray
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch
from ray.tune.utils import flatten_dict

from engine.experiment.progress import Progress
from engine.experiment.records import Job, Outcome, Status
from engine.tuning.knobs import Knob, Value, write_knobs, written_value
from engine.tuning.trial_task import TRAINING

log = logging.getLogger("autoresearch")

if TYPE_CHECKING:
    from engine.tuning.tune_run import TuneRun

FIRST_RUNG = 0.25  # ASHA's first decision, as a share of the budget
REDUCTION_FACTOR = 3  # ASHA keeps the best third at each rung
MAX_FAILURES = 2  # Tune's retries of a trial whose worker died
# A trial's actor only waits on its training task (which holds the GPU): it asks for no CPU or GPU.
# Tune wants a resource in every request; one byte of memory is one that every node has.
ACTOR_RESOURCES = {"cpu": 0, "memory": 1}
# Read by Tune in the process of a run when it starts. Tune's strict check wants every report to
# carry the objective, which only a trial's last report has. Tune snapshots its state every
# second rather than every ten, so that a stop or crash rarely loses track of a trial. Tune's
# newer console output ignores verbose=0; the driver has its own live view. Tune's own loggers
# (CSV, JSON, TensorBoard) go: the results store has every trial, and the TensorBoard one alone
# spent 8 s of the interpreter importing tensorboardX when a first tuning began (measured at 64
# logical GPUs, benchmarks/utilization.py, when Tune ran in the driver's process). With a
# searcher, Tune starts one trial actor at a time (each a fresh process, seconds apart on a busy
# head): every trial it may run at once is started together instead (the concurrency bounds them).
TUNE_ENVIRONMENT = {"TUNE_DISABLE_STRICT_METRIC_CHECKING": "1", "TUNE_GLOBAL_CHECKPOINT_S": "1",
                    "RAY_AIR_NEW_OUTPUT": "0", "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
                    "TUNE_MAX_PENDING_TRIALS_PG": "1024"}

# Tune pickles its callbacks and its searcher into the run dir; what they hold is only the key
# to the live run of this process that they report to.
_LIVE: dict[str, TuneRun] = {}


# Without its own loggers' files, Tune's summary of a finished run (`fit`'s ResultGrid, which
# nothing here reads: every trial is in the ledger and the results) warns, on the terminal, of
# every trial's "result.json and progress.csv were not found".
QUIET_TUNE_LOGGERS = ("ray.tune.analysis.experiment_analysis",)


def prepare() -> None:
    """What Tune reads from this process's environment, set before a run starts."""
    os.environ.update({k: v for k, v in TUNE_ENVIRONMENT.items() if k not in os.environ})
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in QUIET_TUNE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def resumable(path: Path) -> bool:
    """Whether `path` holds a Tune run to resume."""
    return tune.Tuner.can_restore(str(path))


def fit(run: TuneRun) -> None:
    """Run (or resume) the Tune run of `run.plan` to its end, reporting to `run`."""
    _LIVE[str(run.plan.path)] = run
    try:
        tuner(run).fit()
    finally:
        _LIVE.pop(str(run.plan.path), None)


def tuner(run: TuneRun) -> tune.Tuner:
    """The Tune run of `run.plan`: new, or restored from its folder."""
    plan = run.plan
    finished = {trial_id: last_report(ended.values, ended.outcome, ended.stopped_early)
                for trial_id, ended in run.ended().items()}
    resourced = tune.with_resources(
        trainable(plan.job, plan.name, finished, _training_options(plan.gpus_per_trial)),
        ACTOR_RESOURCES)
    if resumable(plan.path):
        return tune.Tuner.restore(str(plan.path), resourced, resume_errored=True)
    search = _KnobSearch(
        space=_space(plan.knobs), metric=OBJECTIVE,
        mode="min" if plan.direction == "minimize" else "max",
        points_to_evaluate=[plan.start_values], sampler=plan.sampler,
        study_name=plan.name, key=str(plan.path),
        storage=JournalStorage(JournalFileBackend(str(plan.path / "optuna.journal"))))
    budget = plan.job.budget_s
    scheduler = (ASHAScheduler(time_attr=SECONDS, metric=LOSS, mode="min", max_t=budget,
                               grace_period=FIRST_RUNG * budget,
                               reduction_factor=REDUCTION_FACTOR)
                 if plan.early_stopping else FIFOScheduler())
    return tune.Tuner(
        resourced,
        tune_config=tune.TuneConfig(
            search_alg=search, scheduler=scheduler, num_samples=plan.trials,
            max_concurrent_trials=plan.concurrency, reuse_actors=True,
            trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name=plan.path.name, storage_path=str(plan.path.parent), verbose=0,
            callbacks=[_Recorder(str(plan.path))],
            failure_config=tune.FailureConfig(max_failures=MAX_FAILURES)))

def _training_options(gpus_per_trial: int) -> dict:
    """A trial's training task holds GPUs like a mutation experiment (engine/search/ray_pool.py):
    no CPU where the cluster has GPUs (NOTES.md: otherwise only as many run as there are cores),
    one CPU where it has none. Outside the placement group of the actor that starts it, which
    Tune makes to hold what the actor asks for, and nothing more."""
    if ray.cluster_resources().get("GPU", 0):
        return {"num_gpus": max(gpus_per_trial, 1), "num_cpus": 0, "scheduling_strategy": "DEFAULT"}
    return {"num_gpus": 0, "num_cpus": 1, "scheduling_strategy": "DEFAULT"}


class _Recorder(tune.Callback):
    """Tells the live run when trials start and end, and stops Tune when asked."""

    def __init__(self, key: str) -> None:
        self.key = key

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        run = _LIVE.get(self.key)
        if run is not None and run.stopping:
            # Ends the run like a crash would, without marking the trials in flight finished:
            # Tune's last snapshot holds them as running, so a resume runs them again.
            raise _Stopped

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        if run := _LIVE.get(self.key):
            run.trial_started(trial.trial_id)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended(trial, error=False)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._ended(trial, error=True)

    def _ended(self, trial, error: bool) -> None:
        run = _LIVE.get(self.key)
        if run is None:
            return
        last = dict(trial.last_result or {})
        values = last.get("values") or written_values(run.plan.knobs, trial.config)
        detail = None
        if error:
            detail = "no error recorded"
            if trial.error_file and Path(trial.error_file).is_file():
                lines = Path(trial.error_file).read_text(errors="replace").strip().splitlines()
                detail = lines[-1] if lines else detail
        run.trial_ended(trial.trial_id, last, values, detail)


class _Stopped(Exception):
    """Raised inside Tune's loop to end a run that `TuneRun.stop` asked to end."""


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
        run = _LIVE.get(self.key)
        if run is not None and run.has_ended(trial_id):
            self._completed_trials.add(trial_id)
            return
        interrupted = (run is not None and run.stopping
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


OBJECTIVE = "objective"  # the harness's score, in the final report of a trial that scored
LOSS = "train_loss"  # the smoothed training loss, in every report: what ASHA compares
SECONDS = "train_seconds"  # seconds of training so far: ASHA's clock
OUTCOME = "outcome_json"  # the trial's outcome as the driver gets it, in its final report
SMOOTHING = 0.9  # the training loss is an exponential moving average with this decay
REPORTS_PER_TRIAL = 20  # at most this many intermediate reports over a budget
LAST_REPORT = 0.9  # no intermediate report past this share of the budget: ASHA never stops a
# trial that is about to be scored (its last rung lies at 3/4 of the budget)


class LossReporter:
    """Forwards train.py's steps to Tune as they come: the training loss smoothed (an average
    that forgets, corrected for its start at zero), at most REPORTS_PER_TRIAL times."""

    def __init__(self, budget_s: float, identity: dict) -> None:
        self.every, self.until = budget_s / REPORTS_PER_TRIAL, LAST_REPORT * budget_s
        self.identity = identity  # values, start time, node, GPU: what a stopped trial's row needs
        self.average, self.steps, self.next_at = 0.0, 0, 0.0

    @property
    def smoothed(self) -> float | None:
        return self.average / (1 - SMOOTHING**self.steps) if self.steps else None

    def __call__(self, progress: Progress) -> None:
        self.steps += 1
        self.average = SMOOTHING * self.average + (1 - SMOOTHING) * progress.loss
        if self.next_at <= progress.elapsed_s < self.until:
            tune.report({SECONDS: progress.elapsed_s, LOSS: self.smoothed,
                         "step": progress.step, **self.identity})
            self.next_at = progress.elapsed_s + self.every


def trainable(job: Job, name: str, finished: dict[str, dict],
              training: dict) -> Callable[[dict], None]:
    """The function Ray Tune calls with each trial's config, for the refinement `name`; a trial
    in `finished` (the ledger: trial id -> last report) reports its recorded result at once.
    `training`: the Ray options of its training task."""
    def knob_trial(config: dict) -> None:
        run_trial(config, job, finished, training)

    # Tune registers a trainable cluster-wide under its function's name: two refinements at
    # once must not share one, and a resume must find its own again.
    knob_trial.__name__ = knob_trial.__qualname__ = f"knob_trial_{name}"
    return knob_trial


def run_trial(config: dict, job: Job, finished: dict[str, dict], training: dict) -> None:
    """One trial, in its Tune actor: write the values, train them in a Ray task, report."""
    recorded = finished.get(tune.get_context().get_trial_id())
    if recorded is not None:
        tune.report(recorded)
        return
    values = written_values(job.knobs, config)
    files = write_knobs(job.files, {knob: values[knob.label] for knob in job.knobs})
    stream = TRAINING.options(**training).remote(dataclasses.replace(job, files=files, knobs=()))
    reporter, outcome = None, None
    try:
        for ref in stream:
            item = ray.get(ref)
            if isinstance(item, Outcome):
                outcome = item
            elif reporter is None:  # where it trains, first
                reporter = LossReporter(job.budget_s, {"values": values, **item})
            else:
                reporter(item)
    finally:
        if outcome is None:  # ASHA stopped it (Tune ends it at a report) or the actor failed:
            ray.cancel(stream, force=True)  # its GPU and its training tree go at once
    tune.report(last_report(values, outcome, stopped_early=False, loss=reporter.smoothed))




def written_values(knobs: Collection[Knob], config: dict) -> dict[str, Value]:
    """The values a trial's config gives its knobs, as the files hold them once written. (Tune
    nests the config where a label holds a "/", as a knob of `src/model.py` does.)"""
    flat = flatten_dict(config, delimiter="/")
    return {knob.label: written_value(knob, flat[knob.label]) for knob in knobs}


def last_report(values: dict[str, Value], outcome: Outcome, stopped_early: bool,
                loss: float | None = None) -> dict:
    """A trial's last report to Tune: the objective when it was scored, and its outcome. A
    trial that ASHA stopped reports none of either, as when it was stopped."""
    result = outcome.result
    if loss is None:
        loss = result.metrics.get("final_train_loss")
    report = {SECONDS: result.budget_s, "values": values}
    if loss is not None:  # none when train.py reported no step: ASHA then has nothing to compare
        report[LOSS] = loss
    if stopped_early:
        return {**report, SECONDS: result.train_wall_s}
    if result.status is Status.OK and result.objective is not None:
        report[OBJECTIVE] = result.objective
    return {**report, OUTCOME: json.dumps(outcome.to_dict())}
