"""The numbers a search is watched by, counted one result at a time: the live view reads the
driver's, `status` folds the stored rows into one; both show the same rates."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from engine.experiment.records import Kind, Result, Status


@dataclass
class Summary:
    started_at: float  # when this process started searching
    slots: int = 0  # experiments the GPUs hold at once
    finished: int = 0  # experiments that trained (whatever the end)
    by_status: Counter = field(default_factory=Counter)
    by_kind: Counter = field(default_factory=Counter)  # experiments that trained, by kind
    busy_s: float = 0.0  # GPU-seconds spent in experiments
    capacity_s: float = 0.0  # GPU-seconds the cluster offered
    driver_s: float = 0.0  # the driver's own work, waits excluded
    spent_usd: float = 0.0  # what the agents' proposals cost
    finished_before: int = 0  # experiments finished before this process resumed the run
    running: list = field(default_factory=list)  # the experiments on GPUs now
    ticked_at: float = 0.0  # when the driver's loop last turned
    holdout_key: str | None = None  # the objective's holdout score, when the harness has one
    # For the live view's best line only (the search never reads them): holdout scores by
    # commit, and the commit of each experiment that has one.
    _holdout: dict[str, list[float]] = field(default_factory=dict)
    _commits: dict[str, str] = field(default_factory=dict)

    def add(self, result: Result) -> None:
        """Count one result."""
        self.by_status[str(result.status)] += 1
        if result.status.trained:
            self.finished += 1
            self.by_kind[str(result.kind)] += 1
            self.busy_s += result.gpu_seconds
        holdout = result.metrics.get(self.holdout_key) if self.holdout_key else None
        if holdout is not None and result.status is Status.OK:
            self._holdout.setdefault(result.commit, []).append(holdout)
            self._commits[result.exp_id] = result.commit

    def tick(self, slots: int, now: float, work_s: float, progressed: bool) -> None:
        """One turn of the driver's loop: the GPU-seconds `slots` offered since the last turn,
        and `work_s` of the driver's own work, counted only on a turn that moved something (a
        turn that only polled the GPUs is waiting, not work)."""
        self.slots = slots
        self.capacity_s += slots * (now - self.ticked_at)
        self.ticked_at = now
        if progressed:
            self.driver_s += work_s

    def holdout_of(self, commit: str, exp_id: str) -> float | None:
        """The mean holdout score of the runs of a member of the population: those of its
        commit, and of its experiment's (a promoted winner's baseline commit is a merge)."""
        values = [value for code in {commit, self._commits.get(exp_id)} if code
                  for value in self._holdout.get(code, [])]
        return sum(values) / len(values) if values else None

    @classmethod
    def of(cls, results: list[Result], started_at: float) -> Summary:
        """The summary of stored results (what the agents spent included)."""
        summary = cls(started_at=started_at)
        for result in results:
            summary.add(result)
            summary.spent_usd += result.cost_usd
        return summary

    def to_dict(self) -> dict:
        """What a checkpoint keeps: `status` reads the GPU accounting from it."""
        return {"spent_usd": self.spent_usd,
                "gpu": {"slots": self.slots, "busy_s": self.busy_s, "capacity_s": self.capacity_s}}

    @property
    def utilisation(self) -> float:
        return self.busy_s / self.capacity_s if self.capacity_s else 0.0

    @property
    def confirmation_share(self) -> float:
        """The share of trained experiments that were confirmation or control runs."""
        spent = self.by_kind[Kind.CONFIRM] + self.by_kind[Kind.CONTROL]
        return spent / self.finished if self.finished else 0.0

    def keep_rate(self, kept: int) -> float | None:
        """The share of the agents' trained changes that were kept (`kept` of them)."""
        mutations = self.by_kind[Kind.MUTATION]
        return kept / mutations if mutations else None
