"""One knob trial on its worker: write the values into the files, train, report to Ray Tune.

A refinement (engine/tuning/refinement.py) hands Ray Tune the function `trainable` makes; Tune runs
it on a worker holding a GPU of the same pool as the mutation experiments. The trial writes its
values into the member's files (only the literals change), trains them under the ordinary runner,
and reports as it goes: the training loss train.py reports (prepare.report), smoothed, is what ASHA
compares, since the harness has no validation loss mid-training. That number comes from the
candidate's own process: it can decide when a trial is cut, never its score. The last report carries
the outcome the driver records, the objective among it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import socket
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

import ray
from ray import tune
from ray.tune.utils import flatten_dict

from engine.experiment.records import Job
from engine.experiment.runner import Progress, run_experiment
from engine.search.ray_pool import accelerator_here, run_job
from engine.tuning.knobs import Knob, Value, write_knobs, written_value

OBJECTIVE = "objective"  # the harness's score, in the final report of a trial that scored
LOSS = "train_loss"  # the smoothed training loss, in every report: what ASHA compares
SECONDS = "train_seconds"  # seconds of training so far: ASHA's clock
OUTCOME = "outcome_json"  # the trial's outcome as the driver gets it, in its final report
SMOOTHING = 0.9  # the training loss is an exponential moving average with this decay
REPORTS_PER_TRIAL = 20  # at most this many intermediate reports over a budget
LAST_REPORT = 0.9  # no intermediate report past this share of the budget: ASHA never stops a
# trial that is about to be scored (its last rung lies at 3/4 of the budget)


@dataclass(frozen=True)
class TrialOutcome:
    """One trial that ended: what it ran and what came of it."""

    trial_id: str  # Tune's id, the same after a resume
    values: dict[str, Value]  # knob label -> the value written into the files
    files: dict[str, str]  # what it trained
    outcome: dict  # the Outcome as JSON data (records.Outcome.to_dict), as the ledger keeps it
    stopped_early: bool  # ASHA stopped it (its result's status is "stopped")

    @property
    def objective(self) -> float | None:
        """Its score, when it trained to the end and was scored without fault."""
        result = self.outcome["result"]
        return result["objective"] if result["status"] == "ok" else None


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


def trainable(job: Job, name: str, finished: dict[str, dict]) -> Callable[[dict], None]:
    """The function Ray Tune calls with each trial's config, for the refinement `name`; a trial
    in `finished` (the ledger: trial id -> last report) reports its recorded result at once."""
    def knob_trial(config: dict) -> None:
        run_trial(config, job, finished)

    # Tune registers a trainable cluster-wide under its function's name: two refinements at
    # once must not share one, and a resume must find its own again.
    knob_trial.__name__ = knob_trial.__qualname__ = f"knob_trial_{name}"
    return knob_trial


def run_trial(config: dict, job: Job, finished: dict[str, dict]) -> None:
    """One trial, on a worker: write the values, train under the runner, report."""
    recorded = finished.get(tune.get_context().get_trial_id())
    if recorded is not None:
        tune.report(recorded)
        return
    values = written_values(job.knobs, config)
    files = write_knobs(job.files, {knob: values[knob.label] for knob in job.knobs})
    gpus = ray.get_gpu_ids()
    reporter = LossReporter(job.budget_s, {
        "values": values, "started_at": time.time(), "node": socket.gethostname(),
        "gpu": ",".join(str(g) for g in gpus), "accelerator": accelerator_here()})
    outcome = run_job(dataclasses.replace(job, files=files, knobs=()),
                      functools.partial(job.run or run_experiment, on_progress=reporter))
    tune.report(last_report(TrialOutcome("", values, files, outcome.to_dict(), False),
                            loss=reporter.smoothed))


def written_values(knobs: Collection[Knob], config: dict) -> dict[str, Value]:
    """The values a trial's config gives its knobs, as the files hold them once written. (Tune
    nests the config where a label holds a "/", as a knob of `src/model.py` does.)"""
    flat = flatten_dict(config, delimiter="/")
    return {knob.label: written_value(knob, flat[knob.label]) for knob in knobs}


def last_report(ended: TrialOutcome, loss: float | None = None) -> dict:
    """A trial's last report to Tune: the objective when it was scored, and its outcome. A
    trial that ASHA stopped reports none of either, as when it was stopped."""
    result = ended.outcome["result"]
    if loss is None:
        loss = result["metrics"].get("final_train_loss")
    report = {SECONDS: result["budget_s"], "values": ended.values}
    if loss is not None:  # none when train.py reported no step: ASHA then has nothing to compare
        report[LOSS] = loss
    if ended.stopped_early:
        return {**report, SECONDS: result["train_wall_s"]}
    if ended.objective is not None:
        report[OBJECTIVE] = ended.objective
    return {**report, OUTCOME: json.dumps(ended.outcome)}
