"""The population: islands, their heads, the shared baseline, the noise, and every keep/promote
decision. One owner of this state (the driver); pure logic, no git and no Ray, so that each rule
can be tested on its own.

The rules, in the order a result meets them:
- The baseline is run on several seeds first; the spread of those runs is the noise (sigma).
- A child that beats its parent is kept: it joins its island's archive, and becomes the island's
  head when it beats the head too. Everything else is discarded (but stays in the results).
- A kept child that beats the baseline by more than `z * sigma * sqrt(1 + 1/n_baseline)` is
  promoted at once; one that beats it by less, or whose only change is a seed, is first re-run on
  fresh seeds, and promoted only if the mean of all its runs still beats the baseline's mean by
  `z * sigma * sqrt(1/n_runs + 1/n_baseline)`. A candidate whose fresh-seed runs all give the very
  same score while the baseline's do not is ignoring the seed it is handed: never promoted.
- An island whose head lags the baseline and has not advanced for `reseed_after` results is
  reseeded from the baseline.
- Parents are mostly the island's head; sometimes another archive member, favouring good ones with
  few children (the child-count penalty keeps some diversity, as in the evolutionary code-search
  systems this follows).
"""

from __future__ import annotations

import math
import random
import statistics
from collections import deque
from dataclasses import dataclass, field

from agents.base import Attempt
from engine.spec import Objective

HISTORY_LENGTH = 30  # attempts an agent sees of its island
ARCHIVE_SIZE = 8  # kept members an island remembers as possible parents
MIN_SIGMA = 1e-6  # a task with no measurable noise still needs a strictly positive margin


@dataclass
class Member:
    """A scored commit that may be a parent."""

    commit: str
    files: dict[str, str]
    runs: list[float]  # objective of each run of this exact code
    exp_id: str = ""  # the experiment that produced it ("" for the starting code)
    children: int = 0

    @property
    def objective(self) -> float:
        return statistics.fmean(self.runs)


@dataclass
class Island:
    """A sub-population worked by one agent, with its own head."""

    index: int
    head: Member
    archive: list[Member] = field(default_factory=list)
    stale: int = 0  # results since the head last advanced
    history: deque[Attempt] = field(default_factory=lambda: deque(maxlen=HISTORY_LENGTH))


@dataclass
class Decision:
    """What the driver must do after a result; the population has already updated itself."""

    kind: str  # "keep", "advance", "discard", "confirm", "promote", "reject_promotion", "reseed"
    island: int | None = None
    member: Member | None = None  # the commit concerned
    confirm_seeds: int = 0  # for "confirm": how many fresh-seed runs to queue
    reason: str = ""


@dataclass
class _Confirmation:
    member: Member
    island: int
    outstanding: int


class Population:
    """Islands, baseline and noise; every decision about results goes through `observe_*`."""

    def __init__(self, objective: Objective, start: Member, islands: int, *, z: float = 2.0,
                 confirm_seeds: int = 2, reseed_after: int = 6, explore: float = 0.2,
                 seed: int = 0) -> None:
        self.objective = objective
        self.baseline = Member(start.commit, start.files, [], start.exp_id)
        self.noise_runs: list[float] = []
        self.islands = [Island(k, Member(start.commit, start.files, [], start.exp_id))
                        for k in range(islands)]
        self.z, self.confirm_seeds, self.reseed_after, self.explore = (
            z, confirm_seeds, reseed_after, explore)
        self.kept: set[str] = set()  # exp ids that advanced or joined an island
        self.promotions: list[Member] = []
        self._confirming: dict[str, _Confirmation] = {}  # commit -> its fresh-seed runs
        self._rng = random.Random(seed)

    # -- the baseline and the noise ------------------------------------------------------------

    @property
    def sigma(self) -> float | None:
        """The measured noise: the standard deviation of the baseline's seed runs."""
        if len(self.noise_runs) < 2:
            return None
        return max(statistics.stdev(self.noise_runs), MIN_SIGMA)

    def observe_baseline_run(self, objective: float | None) -> None:
        """A run of the starting code on one of the noise seeds (None: it failed)."""
        if objective is None:
            return
        self.noise_runs.append(objective)
        self.baseline.runs.append(objective)
        for island in self.islands:
            if island.head.commit == self.baseline.commit:
                island.head.runs = list(self.baseline.runs)

    @property
    def ready(self) -> bool:
        """Whether the baseline has a score, so that children can be judged."""
        return bool(self.baseline.runs)

    # -- choosing parents -----------------------------------------------------------------------

    def choose_parent(self, island: int) -> Member:
        """The island's head mostly; sometimes an archive member (good ones with few children)."""
        chosen = self.islands[island]
        candidates = [m for m in chosen.archive if m.commit != chosen.head.commit and m.runs]
        if not candidates or self._rng.random() >= self.explore:
            return chosen.head
        ranked = sorted(candidates, key=lambda m: m.objective,
                        reverse=self.objective.direction == "maximize")
        weights = [1.0 / (1 + rank) / (1 + m.children) for rank, m in enumerate(ranked)]
        return self._rng.choices(ranked, weights)[0]

    # -- judging results ------------------------------------------------------------------------

    def observe_child(self, island: int, parent: Member, child: Member, attempt: Attempt, *,
                      seed_only: bool, confirm_because: str = "") -> list[Decision]:
        """A mutation's result. `child.runs` is empty unless it has a score. A child whose only
        change is a seed, or that comes with a `confirm_because` (the best of many tuning
        trials: chosen among many, so its score flatters it), is confirmed on fresh seeds before
        it is promoted, however far ahead it looks."""
        if seed_only:
            confirm_because = "only its seed or random generator changed"
        home = self.islands[island]
        home.history.append(attempt)
        parent.children += 1
        home.stale += 1
        if not child.runs or not parent.runs:
            return self._maybe_reseed(home, [Decision("discard", island, child)])
        if not self._better(child.objective, parent.objective):
            return self._maybe_reseed(home, [Decision("discard", island, child)])
        self.kept.add(child.exp_id)
        home.archive = self._bounded_archive(home.archive + [child])
        decisions = [Decision("keep", island, child)]
        if self._better(child.objective, home.head.objective):
            home.head, home.stale = child, 0
            decisions.append(Decision("advance", island, child))
        if self._better(child.objective, self.baseline.objective):
            decisions += self._toward_promotion(island, child, confirm_because)
        return self._maybe_reseed(home, decisions)

    def observe_confirmation(self, commit: str, objective: float | None) -> list[Decision]:
        """A fresh-seed run of a candidate waiting for promotion (None: it failed)."""
        pending = self._confirming.get(commit)
        if pending is None:
            return []
        pending.outstanding -= 1
        if objective is not None:
            pending.member.runs.append(objective)
        if pending.outstanding > 0:
            return []
        del self._confirming[commit]
        return self._decide_promotion(pending.member, pending.island)

    def _toward_promotion(self, island: int, child: Member,
                          confirm_because: str) -> list[Decision]:
        sigma = self.sigma or MIN_SIGMA
        margin = self.z * sigma * math.sqrt(1 + 1 / len(self.baseline.runs))
        advantage = abs(child.objective - self.baseline.objective)
        if advantage > margin and not confirm_because:
            return self._promote(island, child, f"beats the baseline by {advantage:.4g} "
                                                f"(margin {margin:.4g})")
        if child.commit in self._confirming:
            return []
        self._confirming[child.commit] = _Confirmation(child, island, self.confirm_seeds)
        reason = confirm_because or (
            f"beats the baseline by {advantage:.4g}, within the noise margin {margin:.4g}")
        return [Decision("confirm", island, child, self.confirm_seeds, reason)]

    def _decide_promotion(self, member: Member, island: int) -> list[Decision]:
        if len(member.runs) > 1 and len(set(member.runs)) == 1 and len(set(self.noise_runs)) > 1:
            return [Decision("reject_promotion", island, member,
                             reason="gives the same score on every seed: it ignores its seed")]
        sigma = self.sigma or MIN_SIGMA
        margin = self.z * sigma * math.sqrt(1 / len(member.runs) + 1 / len(self.baseline.runs))
        advantage = self.baseline.objective - member.objective
        if self.objective.direction == "maximize":
            advantage = -advantage
        summary = f"mean of {len(member.runs)} runs beats the baseline by {advantage:.4g}"
        if advantage > margin:
            return self._promote(island, member, f"{summary} (margin {margin:.4g})")
        return [Decision("reject_promotion", island, member,
                         reason=f"{summary}, not more than the margin {margin:.4g}")]

    def _promote(self, island: int, member: Member, reason: str) -> list[Decision]:
        self.baseline = member
        self.promotions.append(member)
        return [Decision("promote", island, member, reason=reason)]

    def rebase_baseline(self, commit: str) -> None:
        """The driver committed the promotion onto the baseline branch as `commit`."""
        self.baseline = Member(commit, self.baseline.files, self.baseline.runs,
                               self.baseline.exp_id)

    def _maybe_reseed(self, island: Island, decisions: list[Decision]) -> list[Decision]:
        lagging = not self._better(island.head.objective, self.baseline.objective) if (
            island.head.runs and self.baseline.runs) else False
        if lagging and island.stale >= self.reseed_after and (
                island.head.commit != self.baseline.commit):
            island.head = Member(self.baseline.commit, self.baseline.files,
                                 list(self.baseline.runs), self.baseline.exp_id)
            island.archive, island.stale = [], 0
            decisions.append(Decision("reseed", island.index, island.head,
                                      reason="lagged the baseline"))
        return decisions

    def to_dict(self) -> dict:
        """The state a checkpoint keeps (commits and scores; the code lives in the run's git)."""
        return {
            "noise": {"sigma": self.sigma, "runs": self.noise_runs},
            "baseline": _as_dict(self.baseline),
            "islands": [{"head": _as_dict(i.head), "stale": i.stale,
                         "archive": [_as_dict(m) for m in i.archive]} for i in self.islands],
            "kept": sorted(self.kept),
            "promotions": [_as_dict(m) for m in self.promotions],
            "confirming": sorted(self._confirming),
        }

    def member(self, island: int | None, commit: str) -> Member | None:
        """The member with `commit` that the population still holds (its island first), if any."""
        homes = ([self.islands[island]] if island is not None else []) + self.islands
        for home in homes:
            for member in (home.head, *home.archive):
                if member.commit == commit:
                    return member
        return self.baseline if self.baseline.commit == commit else None

    @property
    def confirming(self) -> dict[str, int]:
        """Candidates waiting for fresh-seed runs: commit -> runs still to come."""
        return {commit: c.outstanding for commit, c in self._confirming.items()}

    def reachable(self) -> list[Member]:
        """Every member a later decision may use: the baseline, heads, archives, candidates."""
        members = [self.baseline, *(c.member for c in self._confirming.values())]
        for island in self.islands:
            members += [island.head, *island.archive]
        return members

    # -- helpers -------------------------------------------------------------------------------

    def _better(self, candidate: float, reference: float) -> bool:
        return self.objective.is_better(candidate, reference)

    def _bounded_archive(self, members: list[Member]) -> list[Member]:
        ranked = sorted(members, key=lambda m: m.objective,
                        reverse=self.objective.direction == "maximize")
        return ranked[:ARCHIVE_SIZE]

    def best(self) -> Member:
        """The best scored member anywhere (the baseline when nothing beat it)."""
        scored = [self.baseline] + [i.head for i in self.islands if i.head.runs]
        scored = [m for m in scored if m.runs]
        if not scored:
            return self.baseline
        pick = min if self.objective.direction == "minimize" else max
        return pick(scored, key=lambda m: m.objective)


def _as_dict(member: Member) -> dict:
    return {"commit": member.commit, "exp_id": member.exp_id, "runs": member.runs,
            "children": member.children}
