"""How runs of two codes compare beyond the noise: a member's level on one accelerator type, the
screen one run must pass to be worth a confirmation, and the confirmation's test. The rules they
serve are in engine/search/population.py; the noise itself in engine/search/noise.py."""

from __future__ import annotations

import math
import statistics
from typing import NamedTuple

from engine.experiment.objective import Objective
from engine.search.members import Member
from engine.search.noise import MIN_SIGMA, Noise, t_quantile

# The latest runs of a member that make its level: older ones saw other conditions. With 3, the
# control runs of one confirmation replace the baseline's level whole; with 6 it lagged a drifting
# machine, and confirmations took 0.46 of the runs of a drifting search of 30 no-op candidates
# rather than 0.37 (benchmarks/selection.py, 500 searches).
LEVEL_RUNS = 3
# The one-sided level of the promotion test. The benchmark (benchmarks/selection.py) measured the
# share of no-op candidates promoted at this level, under drift and two accelerator types too.
ALPHA = 0.01
# How far one run must beat the baseline, in sigmas, to be worth a confirmation. It only spends
# GPUs (the test above decides which candidate wins): in benchmarks/selection.py (500 searches of
# 30 candidates, iid), 2.0 spent 0.16 of the runs of no-op searches on confirmations, with a power
# of 0.42 at a 2 sigma gain and 0.96 at 4 sigma; 1.75 spent 0.20, for 0.48 and 0.98.
SCREEN_Z = 2.0

Runs = list[tuple[float, str]]  # scores, each with the accelerator type it ran on


class Verdict(NamedTuple):
    """A test's outcome: whether the runs won, the figures in words, and by how much they are
    ahead (on the objective's scale, positive when better)."""

    won: bool
    summary: str
    advantage: float


class Comparison:
    """Levels, screens and tests on the objective's scale, with the noise measured so far."""

    def __init__(self, objective: Objective, noise: Noise, alpha: float = ALPHA) -> None:
        self.objective, self.noise, self.alpha = objective, noise, alpha

    def level(self, member: Member, accelerator: str, baseline: Member) -> tuple[float, int]:
        """The member's level on `accelerator`, and how many runs make it: the mean of its latest
        runs there; where it has none there, of its latest runs elsewhere, each moved by the gap
        the baseline's own runs show between the two types."""
        there = member.runs_on(accelerator)[-LEVEL_RUNS:]
        if there:
            return statistics.fmean(there), len(there)
        latest = list(zip(member.runs, member.accelerators, strict=True))[-LEVEL_RUNS:]
        moved = [v + _gap(baseline, a, accelerator) for v, a in latest]
        return statistics.fmean(moved), len(moved)

    def screened(self, values: list[float], accelerator: str, against: Member,
                 baseline: Member) -> tuple[float, float]:
        """How far the mean of `values` (runs on `accelerator`) is ahead of `against`'s level
        there, and how far it must be to be worth confirming."""
        reference, n = self.level(against, accelerator, baseline)
        margin = SCREEN_Z * self._sigma(accelerator) * math.sqrt(1 / len(values) + 1 / n)
        return self.objective.advantage(statistics.fmean(values), reference), margin

    def test(self, runs: Runs, controls: Runs, *,
             controls_are: str = "control runs") -> Verdict:
        """Whether a candidate's runs beat the control runs beyond the noise: a one-sided
        t-test on the pooled sigma, type by type, the types combined by inverse variance; and
        the figures, in words (`controls_are` names the controls there)."""
        weights = advantage = 0.0
        df = None
        for accelerator in sorted({a for _, a in runs} & {a for _, a in controls}):
            mine = [v for v, a in runs if a == accelerator]
            theirs = [v for v, a in controls if a == accelerator]
            estimate = self.noise.estimate(accelerator)
            if estimate is None:
                continue
            sigma, type_df = estimate
            weight = 1 / (sigma ** 2 * (1 / len(mine) + 1 / len(theirs)))
            advantage += weight * self.objective.advantage(statistics.fmean(mine),
                                                           statistics.fmean(theirs))
            weights += weight
            df = type_df if df is None else min(df, type_df)
        if df is None:
            return Verdict(False, f"{len(runs)} runs and {len(controls)} {controls_are} share no "
                           "accelerator type with a measured noise: nothing to compare", 0.0)
        advantage /= weights
        statistic, critical = advantage * math.sqrt(weights), t_quantile(self.alpha, df)
        return Verdict(statistic > critical, (
            f"{len(runs)} runs against {len(controls)} {controls_are}: ahead by {advantage:.4g}, "
            f"t = {statistic:.2f} against {critical:.2f} (one-sided {self.alpha:g}, {df} df)"),
            advantage)

    def _sigma(self, accelerator: str) -> float:
        estimate = self.noise.estimate(accelerator)
        return estimate[0] if estimate else MIN_SIGMA


def _gap(baseline: Member, source: str, target: str) -> float:
    """How much higher the baseline scores on `target` than on `source` (0 where it has not run
    on both)."""
    here, there = baseline.runs_on(source), baseline.runs_on(target)
    if not here or not there:
        return 0.0
    return statistics.fmean(there[-LEVEL_RUNS:]) - statistics.fmean(here[-LEVEL_RUNS:])
