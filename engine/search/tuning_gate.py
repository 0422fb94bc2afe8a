"""The tuning gate: which member is refined next, and which of its trials are judged.

A refinement (engine/tuning/) runs many trials of one member's knobs, several at once. A trial is
judged like a mutation only when it beats its member and every earlier trial of the same tuning,
and one trial of a tuning is confirmed at a time: a better one that comes meanwhile waits for that
confirmation to end (then the best that waited is judged). Confirming every trial that edged ahead
would spend the GPUs on runs of one member's near-twins.

Part of the evolution core (engine/search/evolution.py), which asks it and acts on its answers: no
Ray, git, threads or files here.
"""

from __future__ import annotations

from engine.experiment.objective import Objective
from engine.experiment.records import Experiment, Result
from engine.search.members import Member
from engine.search.options import SearchOptions


class TuningGate:
    """The member being refined, the next one wanted, and the trials let through."""

    def __init__(self, objective: Objective, options: SearchOptions) -> None:
        self.objective, self.options = objective, options
        self.tuning: tuple[Member, int] | None = None  # the member being refined, its island
        self._wanted: tuple[Member, int] | None = None
        self._since = 0  # the agents' results judged since the last tuning began
        self._baseline_island = 0  # the island the baseline came from
        self._best: dict[str, float] = {}  # tuned commit -> best trial score so far
        self._confirming: dict[str, str] = {}  # trial commit -> the commit it tunes
        self._waiting: dict[str, tuple[Experiment, Result]] = {}  # tuned commit -> trial

    def promoted(self, member: Member, island: int) -> None:
        """`member`, from `island`, is the baseline now: the next one to refine (when tuning)."""
        self._baseline_island = island
        if self.options.tune_trials:
            self._wanted = (member, island)

    def counted(self) -> None:
        """One more result of the agents judged (toward --tune-every)."""
        self._since += 1

    def next(self, baseline: Member, ready: bool) -> tuple[Member, int] | None:
        """The member to refine next, with its island (a fresh winner, or the baseline every
        --tune-every results once it is `ready`), taken as the one being tuned from now on;
        None: nothing to tune."""
        options = self.options
        if (options.tune_every and self._wanted is None and options.tune_trials
                and self._since >= options.tune_every and ready):
            self._wanted = (baseline, self._baseline_island)
        if self._wanted is None:
            return None
        self.tuning, self._wanted = self._wanted, None
        self._since = 0
        return self.tuning

    def admits(self, experiment: Experiment, result: Result, parent: Member) -> bool:
        """Whether a trial of `parent` is judged now: it beats its member and every earlier trial
        of the same tuning, and no other trial of that tuning is being confirmed (else it waits
        for that confirmation to end)."""
        score = result.score
        if score is None or experiment.commit == experiment.parent:
            return False
        best = self._best.get(experiment.parent, parent.objective if parent.runs else None)
        if best is not None and not self.objective.is_better(score, best):
            return False
        self._best[experiment.parent] = score
        if experiment.parent in self._confirming.values():
            self._waiting[experiment.parent] = (experiment, result)
            return False
        return True

    def confirming(self, trial: Experiment) -> None:
        """The judged `trial` is being confirmed: its tuning's later trials wait."""
        self._confirming[trial.commit] = trial.parent

    def decided(self, commit: str) -> list[tuple[Experiment, Result]]:
        """A confirmation of `commit` ended (promoted or not): the trial of the same tuning that
        waited for it, if `commit` is a trial and one waited."""
        if commit not in self._confirming:
            return []
        tuned = self._confirming.pop(commit)
        return [self._waiting.pop(tuned)] if tuned in self._waiting else []
