"""A result's way from the GPU pool to the decisions: recorded durably first, counted in the
search's summary, told to the evolution core, and what the core decided written to the run dir
(the code it made committed, the experiments it queued journaled, the islands' branches moved).
A refused proposal takes the same way, as a `rejected` result that never ran."""

from __future__ import annotations

from collections.abc import Callable

from engine.experiment.records import Experiment, Outcome, Result, Status
from engine.rundir.recorder import Recorder
from engine.search.evolution import Evolution
from engine.search.proposers import Proposed
from engine.tuning.refiner import Trial
from engine.views.summary import Summary


class Ledger:
    def __init__(self, core: Evolution, recorder: Recorder, state: Summary, run_name: str,
                 budget_s: float, checkpoint: Callable[[], dict]) -> None:
        self.core, self.recorder, self.state = core, recorder, state
        self.run_name, self.budget_s = run_name, budget_s
        self._checkpoint = checkpoint  # what run.json's checkpoint says, when it is written

    def admit(self, done: Proposed) -> Experiment | None:
        """The experiment the core makes of a finished proposal; None when it refuses it, and
        the refusal is recorded (`rejected`) with what the proposal cost."""
        experiment, refusal = self.core.admit(done.island, done.parent, done.proposal, done.agent,
                                              done.strategy, done.model)
        self.state.spent_usd += experiment.cost_usd
        if refusal is None:
            return experiment
        self.core.tell(self.record(experiment, None, status=Status.REJECTED, message=refusal),
                       experiment)
        return None

    def finish(self, experiment: Experiment, outcome: Outcome | Exception | None,
               **columns) -> None:
        """Record the result durably, then let the core decide, then write what it decided."""
        told = self.core.tell(self.record(experiment, outcome, **columns), experiment)
        self.recorder.journal(told.queued)
        for decision in told.decisions:
            if decision.kind in ("advance", "reseed"):
                self.recorder.move_island(decision.island, decision.member.commit)
        self.write_derived()

    def finish_trial(self, trial: Trial) -> None:
        """A tuning trial is an experiment like any other: a commit, a row, a judgement."""
        if trial.experiment.files != trial.tuned.files:
            self.recorder.commit(trial.experiment, trial.tuned.files)
        self.finish(trial.experiment, trial.outcome, **trial.columns)

    def interrupted(self, in_flight: list[Experiment], late: list[Proposed],
                    trials: list[Trial]) -> None:
        """What a stop cut short: the experiments that were running, the proposals that came
        back as it stopped (paid for, so recorded; a resume's agents propose afresh), and the
        tuning trials that ended as it stopped (those that did not rerun on resume)."""
        for experiment in in_flight:
            self.record(experiment, None, status=Status.INTERRUPTED,
                        message="the search stopped while it ran")
        for done in late:
            experiment = self.admit(done)
            if experiment is not None:
                self.record(experiment, None, status=Status.INTERRUPTED,
                            message="the search stopped before it could run")
        for trial in trials:
            self.finish_trial(trial)

    def record(self, experiment: Experiment, outcome: Outcome | Exception | None,
               **columns) -> Result:
        """The result's row, durably, and counted; nothing is decided on it."""
        result = Result.of(experiment, outcome, run=self.run_name,
                           budget_s=self.budget_s, **columns)
        self.recorder.record(result)
        self.state.add(result)
        return result

    def write_derived(self, now: bool = False) -> None:
        self.recorder.write_derived(self._checkpoint, lambda: self.core.population.kept, now=now)
