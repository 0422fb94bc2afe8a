"""The population: islands, their heads, the shared baseline, the noise, and every keep/confirm/
promote decision. One owner of this state (the driver); pure logic, no git and no Ray, so that each
rule can be tested on its own.

The rules, in the order a result meets them:
- The starting code is run on several seeds first (the noise runs). The noise sigma is pooled from
  every group of runs of one code made at one time, per accelerator type: the noise runs, then the
  candidate runs and the control runs of every confirmation. It keeps improving through the
  search, and its degrees of freedom enter every test as a Student-t quantile.
- Scores are compared within one accelerator type: a member's level on a type is the mean of its
  latest runs there (`LEVEL_RUNS`); where it has none there, of its latest runs elsewhere, each
  moved by the gap the baseline's own runs show between the two types.
- A child that beats its parent's level is kept: it joins its island's archive, and becomes the
  island's head when it beats the head too. Everything else is discarded (but stays in the
  results).
- A child whose one run beats the baseline's level by more than
  `SCREEN_Z * sigma * sqrt(1 + 1/n)` is a candidate, kept or not: a parent's lucky score must not
  hide a real gain over the baseline. One run never promotes anything: the
  candidate is run again on `confirm_runs` fresh seeds, interleaved with as many control runs of
  the baseline made at the same time, all pinned to the accelerator type of its first run, so that
  drift and hardware cancel. The run that selected it never counts again: its luck is why it was
  chosen.
- Once those runs are in, the candidate is promoted only if its runs beat the control runs by more
  than the one-sided Student-t quantile at level `alpha` (0.01), on the pooled sigma and its
  degrees of freedom; runs that landed on other types are compared type by type and combined by
  inverse variance. A candidate whose runs all give the very same score while the controls do not
  is ignoring its seed: never promoted. Either way its level is now that of its unselected runs.
- Confirmations against one baseline on one GPU model that end together are decided together: one
  that has ended waits for those beside it that are half-way through. Of the winners, the one
  that beat its control runs by the most is promoted, and the others' changes are combined with
  it in one candidate. (Promoted in the order they ended, the first winner of a wave was promoted
  alone, and every other waited one more confirmation to be combined with it.)
- A candidate whose baseline was replaced while it was being confirmed, and which beat the one it
  was confirmed against, is combined with the new one (a three-way merge, engine/search/combine.py;
  where both changed the same lines, the candidate's are kept), together with every other such
  winner whose changes do not overlap. The combination is confirmed at once, beside its own run,
  which is not screened: its parts passed a confirmation or a screen already, and the screen only
  saves GPU time (its confirmation decides). Otherwise (the combination is the candidate itself,
  or it did not beat its own controls) its runs are tested against the new baseline's latest
  runs, fresh runs made in about the same window of time: beyond the noise, it replaces the new
  baseline at once (on a wide search many candidates are confirmed side by side, and the first
  to finish is not always the best); ahead but within the noise, it is confirmed again, against
  the new baseline. A child of code an older baseline led to is combined with today's too.
- An island whose head lags the baseline and has not advanced for `reseed_after` results is
  reseeded from the baseline.
- Parents are mostly the island's head; sometimes another archive member, favouring good ones with
  few children (the child-count penalty keeps some diversity, as in the evolutionary code-search
  systems this follows).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.experiment.objective import Objective
from engine.protocol import Attempt
from engine.search.combine import Winners, combine
from engine.search.compare import ALPHA, LEVEL_RUNS, Comparison
from engine.search.members import CPU, Decision, Island, Member
from engine.search.noise import Noise

ARCHIVE_SIZE = 8  # kept members an island remembers as possible parents

@dataclass
class _Confirmation:
    member: Member
    island: int
    against: Member  # the baseline its control runs run
    base: Member  # the baseline its code descends from
    accelerator: str  # the GPU model its runs are pinned to
    generation: int  # how many promotions there had been when it was queued
    runs_due: int  # runs of the candidate still to come
    controls_due: int  # control runs still to come
    began: int = 0  # how many confirmations began before it
    told: int = 0  # runs of either kind that have come back
    # How many confirmations had begun when its first run came back: once it has ended, it
    # waits for those of them beside it that are half-way through (None until then).
    waits_for: int | None = None
    runs: list[tuple[float, str]] = field(default_factory=list)  # the candidate's, with types
    controls: list[tuple[float, str]] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.runs_due <= 0 and self.controls_due <= 0

    @property
    def half_way(self) -> bool:
        """Under way, with at least half its runs back: the rest are likely running (its runs
        are queued in turns, ahead of everything else), and it ends within about one run."""
        return not self.ended and self.told >= self.runs_due + self.controls_due


class Population:
    """Islands, baseline and noise; every decision about results goes through `observe_*`."""

    def __init__(self, objective: Objective, start: Member, islands: int, *, alpha: float = ALPHA,
                 confirm_seeds: int = 3, reseed_after: int = 6, explore: float = 0.2,
                 seed: int = 0) -> None:
        self.objective = objective
        self.baseline = Member(start.commit, start.files, [], start.exp_id)
        self.noise_runs: list[float] = []
        self.noise = Noise()
        self._noise_groups: dict[str, list[float]] = {}  # the noise runs by type, pooled on end
        self.islands = [Island(k, self.baseline) for k in range(islands)]
        self.compare = Comparison(objective, self.noise, alpha)
        self.confirm_seeds, self.reseed_after, self.explore = (
            confirm_seeds, reseed_after, explore)
        self.kept: set[str] = set()  # exp ids that advanced or joined an island
        self.promotions: list[Member] = []
        self._confirming: dict[str, _Confirmation] = {}  # commit -> its confirmation
        self._began = 0  # confirmations begun
        # commit -> the baseline its code descends from, for every code judged: a result may
        # come back after its island was reseeded, and its changes still count on that baseline.
        self._descends: dict[str, Member] = {self.baseline.commit: self.baseline}
        # commit -> (the baseline its code descends from, a winner a combination may bundle)
        self._winners = Winners()  # winners a combination may bundle
        # The islands' best members, for every agent's briefing: kept until a result changes an
        # island or a score (most results are discarded and change neither).
        self._best_kept: tuple[int, list[Member]] | None = None  # how many asked, the best
        self._rng = random.Random(seed)
        # Reads a commit's files: set while a resume replays (engine/search/replay.py), whose
        # members come without them, for the decisions that read code (combinations).
        self.files_at: Callable[[str], dict[str, str]] | None = None

    # -- the baseline and the noise ------------------------------------------------------------

    @property
    def sigma(self) -> float | None:
        """The measured noise, pooled over every accelerator type (None before it is known)."""
        estimate = self.noise.estimate()
        return estimate[0] if estimate else None

    def observe_baseline_run(self, objective: float | None, accelerator: str = CPU) -> None:
        """A run of the starting code on one of the noise seeds (None: it failed)."""
        if objective is None:
            return
        self.noise_runs.append(objective)
        self._noise_groups.setdefault(accelerator, []).append(objective)
        self.baseline.add_run(objective, accelerator)
        self._best_kept = None

    def noise_measured(self) -> None:
        """Every noise run is in: their spread, type by type, is the first estimate of sigma."""
        for accelerator, values in self._noise_groups.items():
            self.noise.add_group(accelerator, values)
        self._noise_groups = {}

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
        ranked = self.objective.ranked(candidates, lambda m: m.objective)
        weights = [1.0 / (1 + rank) / (1 + m.children) for rank, m in enumerate(ranked)]
        return self._rng.choices(ranked, weights)[0]

    # -- judging results ------------------------------------------------------------------------

    def observe_child(self, island: int, parent: Member, child: Member, attempt: Attempt, *,
                      confirm_because: str = "", screen: bool = True) -> list[Decision]:
        """A mutation's result: `child.runs` holds its one run (with its accelerator type), or
        nothing when it has no score. `confirm_because` names why it is judged (a tuning trial:
        the best of its trials so far) in the confirmation's reason; without `screen` (a
        combination, confirmed at once) it is not considered for a confirmation."""
        home = self.islands[island]
        home.history.append(attempt)
        self._descends[child.commit] = self._descends.get(parent.commit, self.baseline)
        parent.children += 1
        home.stale += 1
        if not child.runs or not parent.runs:
            return self._maybe_reseed(home, [Decision("discard", island, child)])
        value, accelerator = child.runs[-1], child.accelerators[-1]
        if self._better(value, self._level(parent, accelerator)):
            self.kept.add(child.exp_id)
            home.archive = self._bounded_archive(home.archive + [child])
            self._best_kept = None
            decisions = [Decision("keep", island, child)]
            if self._better(value, self._level(home.head, accelerator)):
                home.head, home.stale = child, 0
                decisions.append(Decision("advance", island, child))
        else:
            decisions = [Decision("discard", island, child)]
        if screen:
            decisions += self._screen(island, parent, child, confirm_because)
        return self._maybe_reseed(home, decisions)

    def observe_confirmation(self, commit: str, objective: float | None,
                             accelerator: str = CPU) -> list[Decision]:
        """A fresh-seed run of a candidate waiting for promotion (None: it failed)."""
        return self._confirmation_run(commit, objective, accelerator, control=False)

    def observe_control(self, commit: str, objective: float | None,
                        accelerator: str = CPU) -> list[Decision]:
        """A control run of the baseline made beside the confirmation of candidate `commit`."""
        return self._confirmation_run(commit, objective, accelerator, control=True)

    def _confirmation_run(self, commit: str, objective: float | None, accelerator: str, *,
                          control: bool) -> list[Decision]:
        pending = self._confirming.get(commit)
        if pending is None:
            return []
        self._best_kept = None  # a score changes, or the baseline
        pending.told += 1
        if pending.waits_for is None:
            pending.waits_for = self._began
        if control:
            pending.controls_due -= 1
        else:
            pending.runs_due -= 1
        if objective is not None:
            (pending.controls if control else pending.runs).append((objective, accelerator))
            if control and pending.generation == len(self.promotions):
                self.baseline.add_run(objective, accelerator)  # its level follows conditions
        if not pending.ended:
            return []
        return self._decide_ended()

    def _decide_ended(self) -> list[Decision]:
        """Decide the confirmations that have ended, in rounds (`_round_ended`)."""
        decisions = []
        while round_ := self._round_ended():
            for pending in round_:
                del self._confirming[pending.member.commit]
            decisions += self._decide_round(round_)
        return decisions

    def _round_ended(self) -> list[_Confirmation]:
        """A confirmation that has ended, with every other that has ended against the same
        baseline on the same GPU model, once none of those that began before its first run came
        back is half-way through (those end within about one run). Waiting for any that had
        begun also waited, with two GPU speeds, on runs still queued for a busy model, and lost
        what it won (benchmarks/simulate.py)."""
        for ended in (c for c in self._confirming.values() if c.ended):
            beside = [c for c in self._confirming.values()
                      if (c.generation, c.accelerator) == (ended.generation, ended.accelerator)]
            if not any(c.half_way and c.began < ended.waits_for for c in beside):
                return [c for c in beside if c.ended]
        return []

    def _decide_round(self, ended: list[_Confirmation]) -> list[Decision]:
        """Confirmations against the baseline that ended together: the winner that beat its
        control runs by the most is promoted, and the other winners' changes are combined with
        it in one candidate (promoted as they ended, each later winner waited one more
        confirmation to be combined with the one before it). Confirmations against a baseline
        that has been replaced since are decided one by one."""
        if ended[0].generation != len(self.promotions):
            return [decision for pending in ended for decision in self._decide_promotion(pending)]
        decisions, winners = [], []
        for pending in ended:
            refused = self._settle(pending)
            verdict = None if refused else self.compare.test(pending.runs, pending.controls)
            if verdict is not None and verdict.won:
                winners.append((verdict, pending))
            else:
                decisions.append(refused or Decision(
                    "reject_promotion", pending.island, pending.member, reason=verdict.summary))
        if not winners:
            return decisions
        winners.sort(key=lambda won: won[0].advantage, reverse=True)
        (verdict, best), others = winners[0], winners[1:]
        decisions.append(self._promote(best.island, best.member, verdict.summary))
        for verdict, pending in others:
            self._winners.add(self._with_code(pending.base), self._with_code(pending.member))
            decisions.append(Decision("reject_promotion", pending.island, pending.member, reason=(
                f"it beat its control runs ({verdict.summary}), and {best.member.exp_id}, "
                "confirmed beside it, by more: that one is promoted, and the other winners' "
                "changes are combined with it where they can be")))
        for verdict, pending in others:  # the first whose changes are not the baseline's
            combined = self._combination(pending.island, pending.member, pending.base,
                                         pending.accelerator, (
                f"it beat its control runs ({verdict.summary}), as {best.member.exp_id}, "
                "confirmed beside it and promoted, did by more"))
            if combined is not None:
                return decisions + [combined]
        return decisions

    def _screen(self, island: int, parent: Member, child: Member, because: str) -> list[Decision]:
        """What a child's one run earns: a confirmation when it is far enough ahead of the
        baseline. A child of code an earlier baseline led to is combined with today's instead
        (promoting it alone would drop the baseline's changes): when it is ahead of the
        baseline, or when its own change is ahead of both its parent and that earlier baseline
        (a result that came back after its island moved on)."""
        if child.commit in self._confirming:
            return []
        accelerator = child.accelerators[-1]
        advantage, margin = self._screened(child.runs[-1:], accelerator, self.baseline)
        base = self._descends[child.commit]
        if base.commit != self.baseline.commit:
            # Ahead of its parent too: the lineage's earlier gains were judged with the parent,
            # and its other children must not each queue them again.
            (over_base, base_margin), (over_parent, parent_margin) = (
                self._screened(child.runs[-1:], accelerator, reference)
                for reference in (base, parent))
            if advantage > margin:
                why = f"one run beats the baseline by {advantage:.4g} (screen {margin:.4g})"
            elif over_base > base_margin and over_parent > parent_margin:
                why = (f"one run beats the baseline its code descends from by {over_base:.4g} "
                       f"(screen {base_margin:.4g}) and its parent by {over_parent:.4g}")
            else:
                return []
            combined = self._combination(island, child, base, accelerator,
                                         f"{why}, on an older baseline")
            if combined is not None:
                return [combined]
        if advantage <= margin:
            return []
        reason = (f"{because}; " if because else "") + (
            f"one run beats the baseline by {advantage:.4g} (screen {margin:.4g}): confirming on "
            f"{self.confirm_seeds} fresh seeds beside {self.confirm_seeds} control runs")
        return [self._confirm(island, child, accelerator, reason)]

    def confirm_combination(self, island: int, member: Member, accelerator: str,
                            why: str) -> Decision:
        """The combination a "combine" decision asked for, committed as `member`, to be confirmed
        at once on `accelerator`."""
        self._descends[member.commit] = self.baseline
        return self._confirm(island, member, accelerator, f"{why}: confirming on "
                             f"{self.confirm_seeds} fresh seeds beside {self.confirm_seeds} "
                             "control runs")

    def _confirm(self, island: int, member: Member, accelerator: str,
                 reason: str) -> Decision:
        self._confirming[member.commit] = _Confirmation(
            member, island, self.baseline, self._descends[member.commit], accelerator,
            len(self.promotions), self.confirm_seeds, self.confirm_seeds, self._began)
        self._began += 1
        return Decision("confirm", island, member, self.confirm_seeds, self.baseline,
                        accelerator, reason)

    def _settle(self, pending: _Confirmation) -> Decision | None:
        """A confirmation's runs into the noise, and into the candidate's level; its refusal when
        they cannot promote it whatever the test says."""
        member, island = pending.member, pending.island
        for accelerator in {a for _, a in pending.runs + pending.controls}:
            for group in (pending.runs, pending.controls):
                self.noise.add_group(accelerator, [v for v, a in group if a == accelerator])
        if not pending.runs:
            return Decision("reject_promotion", island, member,
                            reason="none of its confirmation runs has a score")
        # Its level is now that of runs nobody selected it on.
        member.runs = [v for v, _ in pending.runs]
        member.accelerators = [a for _, a in pending.runs]
        if len(member.runs) > 1 and len(set(member.runs)) == 1 and len(
                {v for v, _ in pending.controls}) > 1:
            return Decision("reject_promotion", island, member,
                            reason="gives the same score on every seed: it ignores its seed")
        return None

    def _decide_promotion(self, pending: _Confirmation) -> list[Decision]:
        """One confirmation against a baseline replaced since it began."""
        member, island = pending.member, pending.island
        refused = self._settle(pending)
        if refused is not None:
            return [refused]
        combined = self._combined(pending)
        if combined is not None:
            return [combined]
        # Its runs and the new baseline's latest (its confirmation runs, or control runs
        # made since) are fresh runs of both from about one window of time: compared as a
        # confirmation compares. Where winners are confirmed side by side (a wide search),
        # the best is promoted at once, not confirmed again for one more experiment length.
        verdict, summary, _ = self.compare.test(pending.runs, list(zip(
            self.baseline.runs[-LEVEL_RUNS:], self.baseline.accelerators[-LEVEL_RUNS:],
            strict=True)), controls_are=f"runs of {self.baseline.exp_id or 'it'}")
        if verdict:
            return [self._promote(island, member, f"the baseline changed while it was "
                                  f"confirmed, and its runs beat the new one's: {summary}")]
        accelerator = member.accelerators[-1]
        advantage, margin = self._screened(member.runs_on(accelerator), accelerator,
                                           self.baseline)
        if advantage <= margin:
            return [Decision("reject_promotion", island, member, reason=(
                f"the baseline changed while it was confirmed, and its runs are not ahead of "
                f"the new one by more than {margin:.4g} ({advantage:.4g})"))]
        return [self._confirm(island, member, accelerator, "the baseline changed while it "
                              "was confirmed, and it is still ahead: again, against the new "
                              "one")]

    def _promote(self, island: int, member: Member, reason: str) -> Decision:
        self.baseline = member
        self.promotions.append(member)
        return Decision("promote", island, member, reason=reason)

    def _combined(self, pending: _Confirmation) -> Decision | None:
        """For a candidate that beat the baseline it was confirmed against, which another winner
        replaced meanwhile: its changes on top of the new baseline, unless that is itself."""
        won, summary, _ = self.compare.test(pending.runs, pending.controls)
        if won:
            self._winners.add(self._with_code(pending.base), self._with_code(pending.member))
        return self._combination(pending.island, pending.member, pending.base,
                                 pending.accelerator, (
            f"it beat the baseline it was confirmed against ({summary}), which "
            f"{self.baseline.exp_id} replaced meanwhile")) if won else None

    def _combination(self, island: int, member: Member, base: Member, accelerator: str,
                     why: str) -> Decision | None:
        """`member`'s changes since `base` on top of the baseline (`member`'s lines where both
        changed the same ones), as a candidate to confirm: it keeps the gains of both, where
        promoting `member` alone would drop the baseline's. None when it is the baseline or
        `member` itself."""
        base, baseline, member = map(self._with_code, (base, self.baseline, member))
        files = combine(base.files, baseline.files, member.files, theirs_first=True)
        if files in (baseline.files, member.files):
            return None
        files, bundled = self._winners.bundle(files, baseline.files, leave_out=member)
        also = f", with those of {', '.join(bundled)}" if bundled else ""
        return Decision("combine", island, member, against=self.baseline, files=files,
                        accelerator=accelerator,
                        reason=f"{why}: its changes on the baseline{also}")

    def migrate(self) -> list[Decision]:
        """After a promotion: every island whose head is not ahead of the new baseline starts
        from it at once, rather than spending more results on code the baseline has passed (at
        64 GPUs, waiting for `reseed_after` results of an island took half an hour)."""
        decisions = []
        for island in self.islands:
            if island.head is not self.baseline and not (
                    island.head.runs and self._better(island.head.objective,
                                                      self.baseline.objective)):
                island.head = self.baseline
                island.archive, island.stale = [], 0
                decisions.append(Decision("reseed", island.index, self.baseline,
                                          reason="the baseline moved past it"))
        self._best_kept = None
        return decisions

    def rebase_baseline(self, commit: str) -> None:
        """The driver committed the promotion onto the baseline branch as `commit`."""
        winner = self.baseline
        self.baseline = Member(commit, winner.files, list(winner.runs), winner.exp_id,
                               accelerators=list(winner.accelerators))
        self._best_kept = None
        self._descends[commit] = self.baseline

    def _maybe_reseed(self, island: Island, decisions: list[Decision]) -> list[Decision]:
        lagging = not self._better(island.head.objective, self.baseline.objective) if (
            island.head.runs and self.baseline.runs) else False
        if lagging and island.stale >= self.reseed_after and (
                island.head is not self.baseline):
            island.head = self.baseline
            island.archive, island.stale = [], 0
            self._best_kept = None
            decisions.append(Decision("reseed", island.index, island.head,
                                      reason="lagged the baseline"))
        return decisions

    def to_dict(self) -> dict:
        """The state a checkpoint keeps (commits and scores; the code lives in the run's git)."""
        estimate = self.noise.estimate()
        return {
            "noise": {"sigma": self.sigma, "df": estimate[1] if estimate else 0,
                      "runs": self.noise_runs, "by_accelerator": self.noise.to_dict()},
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
    def confirming(self) -> dict[str, tuple[int, int]]:
        """Candidates being confirmed: commit -> (their runs, control runs) still to come."""
        return {commit: (c.runs_due, c.controls_due) for commit, c in self._confirming.items()}

    def confirmation(self, commit: str) -> tuple[Member, int, Member, str]:
        """The candidate `commit` being confirmed, its island, the baseline it is against and the
        GPU model its runs are pinned to."""
        pending = self._confirming[commit]
        return pending.member, pending.island, pending.against, pending.accelerator

    def reachable(self) -> list[Member]:
        """Every member a later decision may use: the baseline, heads, archives, candidates."""
        members = [self.baseline]
        for pending in self._confirming.values():
            members += [pending.member, pending.against]
        members += self._winners.members()
        for island in self.islands:
            members += [island.head, *island.archive]
        return members

    # -- helpers -------------------------------------------------------------------------------

    def _better(self, candidate: float, reference: float) -> bool:
        return self.objective.is_better(candidate, reference)

    def _level(self, member: Member, accelerator: str) -> float:
        return self.compare.level(member, accelerator, self.baseline)[0]

    def _screened(self, values: list[float], accelerator: str,
                  against: Member) -> tuple[float, float]:
        """How far `values` are ahead of `against`, and how far they must be to be confirmed."""
        return self.compare.screened(values, accelerator, against, self.baseline)

    def _with_code(self, member: Member) -> Member:
        """`member`, its files read where a replay made it without them."""
        if not member.files and self.files_at is not None:
            member.files = self.files_at(member.commit)
        return member

    def _bounded_archive(self, members: list[Member]) -> list[Member]:
        return self.objective.ranked(members, lambda m: m.objective)[:ARCHIVE_SIZE]

    def best_kept(self, count: int) -> list[Member]:
        """The `count` best scored members the islands hold (heads and archives; the starting
        code left out), best first."""
        if self._best_kept is None or self._best_kept[0] < count:
            members = {m.commit: m for island in self.islands
                       for m in (island.head, *island.archive) if m.runs and m.exp_id}
            self._best_kept = (count, self.objective.top(members.values(),
                                                         lambda m: m.objective, count))
        return self._best_kept[1][:count]

    def best(self) -> Member:
        """The best scored member anywhere (the baseline when nothing beat it)."""
        members = [self.baseline] + [island.head for island in self.islands]
        best = self.objective.best(members, lambda m: m.objective if m.runs else None)
        return best or self.baseline


def _as_dict(member: Member) -> dict:
    return {"commit": member.commit, "exp_id": member.exp_id, "runs": member.runs,
            "accelerators": member.accelerators, "children": member.children}
