"""The driver's side of knob tuning: one refinement at a time (engine/tuning/refinement.py), of
the member the evolution core asks for, its finished trials handed back as experiments."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import ray

from engine.experiment.records import Experiment, ExperimentResult, Outcome
from engine.experiment.spec import Spec
from engine.rundir.layout import RunDir
from engine.search.evolution import Evolution
from engine.search.members import Member
from engine.search.options import SearchOptions
from engine.tuning.knobs import describe_tuning
from engine.tuning.refinement import Refinement, start_host
from engine.tuning.tune_run import TrialOutcome

log = logging.getLogger("autoresearch")

TUNING_DONE = "done"  # marks a finished refinement in its folder: no code is tuned twice
TUNING_STOP_S = 15.0  # what a stop waits for the trials in flight to end
# Trials run in this many waves at least. Tune starts a fresh actor process for each trial it runs
# at once and reuses it for later ones: about 4 CPU-seconds each (measured: 12 took 46 on a 2-core
# head, whose driver and workers then waited). And TPE learns only from the trials that ended
# before it samples: with every trial at once it samples them all at random.
TRIAL_WAVES = 3


@dataclass
class Trial:
    """A finished trial as an experiment of the core, ready to be committed and recorded."""

    experiment: Experiment
    outcome: Outcome
    tuned: Member  # the member whose knobs it set
    columns: dict  # the trial's own result columns: Tune's id, its knob values


class Refiner:
    def __init__(self, run_dir: RunDir, spec: Spec, options: SearchOptions, budget_s: float,
                 run: Callable[..., ExperimentResult] | None) -> None:
        self.run_dir, self.spec, self.options, self.budget_s = run_dir, spec, options, budget_s
        self._run = run
        self.refinement: Refinement | None = None  # the tuning running now, if any
        self._host: ray.actor.ActorHandle | None = None  # the process Tune runs in
        self._said_no_ray = False

    @property
    def slots_wanted(self) -> int:
        return self.refinement.slots_wanted if self.refinement else 0

    def tend(self, core: Evolution, slots: int, threads: int, draining: bool) -> list[Trial]:
        """The trials that ended; then, when none runs and the core wants one, a new tuning."""
        if self._host is None and self.options.tune_trials and ray.is_initialized():
            self._host = start_host()  # starting while the first winner is found
        refinement = self.refinement
        if refinement is not None:
            done = refinement.done  # read first: every trial that ended before is drained next
            trials = [self._trial(core, ended) for ended in refinement.finished_trials()]
            if done:
                if not draining:
                    (refinement.path / TUNING_DONE).touch()
                if refinement.error is not None and self._host is not None:
                    ray.kill(self._host)  # a failed run may have left it dead, or unwell
                    self._host = None  # the next tuning starts a fresh one
                self.refinement = None
            elif draining:
                refinement.stop(timeout_s=0)  # trials in flight run again after a resume
            return trials
        if draining or not self._has_ray():
            return []
        wanted = core.next_tuning()
        if wanted is not None:
            self.refinement = self._start(core, wanted[0], slots, threads)
        return []

    def _has_ray(self) -> bool:
        """Tune runs on Ray: over GPUs that are not Ray's (the in-process pool of the tests and
        the simulator), the search goes on untuned rather than start a Ray of its own."""
        if not ray.is_initialized() and self.options.tune_trials and not self._said_no_ray:
            log.warning("not tuning knobs: tuning needs Ray, and this search's GPUs are not Ray's")
            self._said_no_ray = True
        return ray.is_initialized()

    def stop(self, core: Evolution) -> list[Trial]:
        """Stop the tuning (unfinished trials rerun on resume); the trials that ended."""
        trials = []
        if self.refinement is not None:
            self.refinement.stop(timeout_s=TUNING_STOP_S)
            self.refinement.close()
            trials = [self._trial(core, ended) for ended in self.refinement.finished_trials()]
        if self._host is not None:
            ray.kill(self._host)  # and with it what still runs of the tuning
        return trials

    def _start(self, core: Evolution, member: Member, slots: int,
               threads: int) -> Refinement | None:
        name = f"tune-{member.exp_id or 'start'}"
        concurrency = min(max(int(slots * self.options.tune_share), 1), slots - 1,
                          math.ceil(self.options.tune_trials / TRIAL_WAVES))
        if concurrency < 1 or (self.run_dir.tuning(name) / TUNING_DONE).exists():
            return None  # one GPU is the agents'; and no code is tuned twice
        try:
            refinement = Refinement(
                name, member.files, self.spec, self.run_dir.tuning(name),
                trials=self.options.tune_trials, concurrency=concurrency, seed=self.options.seed,
                budget_s=self.budget_s, grace_s=self.options.grace_s,
                expected_fingerprint=core.fingerprint, threads=threads,
                gpus_per_trial=self.spec.gpus_per_experiment, run=self._run,
                recorded=core.trials_recorded, host=self._host)
        except ValueError as error:  # no knobs, or an annotation it cannot read
            log.warning("not tuning %s: %s", member.exp_id or "the starting code", error)
            return None
        log.info("tuning %s: %d trials, %d at once, knobs %s", member.exp_id, refinement.trials,
                 concurrency, ", ".join(refinement.start_values))
        return refinement.start()

    def _trial(self, core: Evolution, ended: TrialOutcome) -> Trial:
        member = core.tuning[0]
        description = describe_tuning(self.refinement.start_values, ended.values)
        return Trial(core.trial(ended.files, description), ended.outcome,
                     member, {"trial": ended.trial_id, "knobs": json.dumps(ended.values)})
