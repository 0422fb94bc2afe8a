"""How often the population's selection rules promote what they should, on scores drawn from known
distributions: a Monte Carlo run of the real `engine.population.Population` behind an emulated
driver.

One simulated search is `search --gpus 2 --agents 2` on a simulated clock: two workers, two
islands; three noise runs of the starting code queued first, then one mutation proposed per free
worker (islands in turn, the parent chosen by the population) until 30 mutations have been run.
The runs the population asks for (confirmations) go to the front of the queue; mutations that
finish before every noise run is in wait, and are judged in order once it is, as in
`engine/driver.py`. A run takes 1.0 * uniform(0.8, 1.2) time units, times its worker's duration
factor; the search ends when nothing is queued or running.

Scores are minimised, with sigma = 1: the true value of the code, plus drift(t) at the run's start
t, plus the worker's offset, plus N(0, 1) drawn fresh per run. The conditions:
- iid: no drift, no offset; the noise model the rules assume.
- drift: the mean falls by 4 sigma over a search of ~20 time units. Scores follow how many steps
  fit a fixed time budget, so they move with the machine's load; falling load flatters late
  candidates against the baseline's early noise runs.
- two accelerators: worker 0 is fast (offset 0, duration x1.0), worker 1 slow (offset +3,
  duration x1.5), as on a cluster mixing GPU models: the same code scores worse on the slow one.

The candidates, by true value: the starting code is 0; a no-op has its parent's; a seed-only one
too, and is reported as seed-only; a gain-g one has its parent's minus g sigma. Cells: every
mutation a no-op; every mutation seed-only; every mutation a no-op but the j-th (j uniform in
5..25), which gains 1, 2 or 4 sigma.

Printed, per condition and cell, over --searches searches: the share of candidates promoted and of
searches promoting any (no-op and seed-only cells); the power, the share of searches that promote
the gain candidate itself (gain cells); false promotions, those whose candidate is not truly
better than the baseline it replaces, per 1,000 experiments (the mutations an agent proposed);
and the confirmation cost, the share of all runs that were neither noise runs nor mutations.

    .venv/bin/python -m benchmarks.selection [--searches 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections import deque
from dataclasses import dataclass

from agents.base import Attempt
from engine.population import Decision, Member, Population
from engine.spec import Objective

WORKERS = 2
ISLANDS = 2
NOISE_RUNS = 3  # the driver's default --noise-seeds
MUTATIONS = 30
RUN_LENGTH = 1.0
GAIN_AT = (5, 25)  # the gain candidate is the j-th mutation, j uniform in this range
START = "start"  # the starting code's commit
OBJECTIVE = Objective("score", "minimize", "Minimize score")


@dataclass(frozen=True)
class Condition:
    """How scores and run lengths depend on time and on the worker."""

    name: str
    drift_per_unit: float  # added to every score per unit of simulated time since the start
    offsets: tuple[float, ...]  # added to every score of a worker, by worker
    duration_factors: tuple[float, ...]  # a run's length on each worker, relative to RUN_LENGTH


CONDITIONS = (
    Condition("iid", 0.0, (0.0, 0.0), (1.0, 1.0)),
    Condition("drift", -4.0 / 20.0, (0.0, 0.0), (1.0, 1.0)),
    Condition("two accelerators", 0.0, (0.0, 3.0), (1.0, 1.5)),
)


@dataclass(frozen=True)
class Cell:
    """What every mutation of a search does to its parent's true value."""

    name: str
    seed_only: bool = False  # every mutation changes only a seed
    gain: float = 0.0  # one mutation (the j-th) improves on its parent by this many sigma


CELLS = (Cell("no-op"), Cell("seed-only", seed_only=True),
         Cell("gain 1σ", gain=1.0), Cell("gain 2σ", gain=2.0), Cell("gain 4σ", gain=4.0))


@dataclass
class Run:
    """One run of one commit on one worker: a noise run, a mutation or a confirmation."""

    kind: str  # "noise", "mutation" or "confirm"
    commit: str
    island: int | None = None
    parent: str = ""  # for mutations: the parent's commit
    seed_only: bool = False
    worker: int | None = None  # set when it starts: the accelerator it ran on


@dataclass
class Tally:
    """What one search, or many added up, did."""

    searches: int = 0
    candidates: int = 0  # mutations judged
    promotions: int = 0
    false_promotions: int = 0
    searches_promoting: int = 0
    gain_promoted: int = 0  # searches that promoted the gain candidate itself
    runs: int = 0
    extra_runs: int = 0  # neither noise runs nor mutations: confirmations (later, controls too)

    def add(self, other: Tally) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


class EmulatedSearch:
    """The driver's scheduling and bookkeeping around a real `Population`, on a simulated clock.
    Every call into the population is in `_observe_noise`, `_judge`, `_observe_confirmation` and
    `_apply`, so that a population with another interface needs changes there only."""

    def __init__(self, condition: Condition, cell: Cell, rng: random.Random,
                 population_seed: int) -> None:
        self.condition, self.cell, self.rng = condition, cell, rng
        self.population = Population(OBJECTIVE, Member(START, {}, []), ISLANDS,
                                     seed=population_seed)
        self.true = {START: 0.0}  # commit -> true value, what the scores are drawn around
        self.scores: dict[str, list[float]] = {}  # commit -> every score, as the driver keeps
        self.baseline = START  # the commit a promotion replaces, to judge it by true values
        self.queue = deque(Run("noise", START) for _ in range(NOISE_RUNS))
        self.running: list[tuple[float, int, Run, float]] = []  # heap: finish, order, run, score
        self.free = list(range(WORKERS))
        self.now = 0.0
        self.noise_outstanding = NOISE_RUNS
        self.deferred: list[tuple[Run, float]] = []  # mutations waiting for the noise
        self.proposed = 0
        self.gain_at = rng.randint(*GAIN_AT) if cell.gain else 0
        self.tally = Tally(searches=1)
        self.gain_commit = ""

    def run(self) -> Tally:
        """Run the search to its end; returns what it did."""
        while True:
            self._dispatch()
            if not self.running:
                break
            self.now, _, run, score = heapq.heappop(self.running)
            self.free.append(run.worker)
            self._observe(run, score)
        self.tally.searches_promoting = int(self.tally.promotions > 0)
        return self.tally

    # -- the schedule --------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Give every free worker the front of the queue, proposing a mutation when it is empty."""
        while self.free and (self.queue or self.proposed < MUTATIONS):
            if not self.queue:
                self._propose()
            worker = min(self.free)  # at the start both are free: the fast one goes first
            self.free.remove(worker)
            self._start(self.queue.popleft(), worker)

    def _propose(self) -> None:
        island = self.proposed % ISLANDS
        self.proposed += 1
        parent = self.population.choose_parent(island)
        commit = f"m{self.proposed}"
        gain = self.cell.gain if self.proposed == self.gain_at else 0.0
        if gain:
            self.gain_commit = commit
        self.true[commit] = self.true[parent.commit] - gain
        self.queue.append(Run("mutation", commit, island, parent.commit, self.cell.seed_only))

    def _start(self, run: Run, worker: int) -> None:
        # The score is drawn now: drift follows the start time, when the run's budget is spent.
        condition = self.condition
        run.worker = worker
        score = (self.true[run.commit] + condition.drift_per_unit * self.now
                 + condition.offsets[worker] + self.rng.gauss(0.0, 1.0))
        length = RUN_LENGTH * condition.duration_factors[worker] * self.rng.uniform(0.8, 1.2)
        heapq.heappush(self.running, (self.now + length, self.tally.runs, run, score))
        self.tally.runs += 1
        self.tally.extra_runs += run.kind not in ("noise", "mutation")

    def _observe(self, run: Run, score: float) -> None:
        """As the driver's `_observe`: mutations wait until every noise run is in."""
        self.scores.setdefault(run.commit, []).append(score)
        if run.kind == "noise":
            self._observe_noise(run, score)
            self.noise_outstanding -= 1
            if self.noise_outstanding == 0:
                for waiting, waiting_score in self.deferred:
                    self._judge(waiting, waiting_score)
                self.deferred.clear()
        elif run.kind == "confirm":
            self._observe_confirmation(run, score)
        elif self.noise_outstanding > 0:
            self.deferred.append((run, score))
        else:
            self._judge(run, score)

    # -- the calls into the population ---------------------------------------------------------

    def _observe_noise(self, run: Run, score: float) -> None:
        self.population.observe_baseline_run(score)

    def _judge(self, run: Run, score: float) -> None:
        self.tally.candidates += 1
        # The parent as the driver's `_parent` finds it: the population's own member when it
        # still holds it (its runs and child count are what the rules read).
        parent = self.population.member(run.island, run.parent) or Member(
            run.parent, {}, list(self.scores.get(run.parent, [])))
        child = Member(run.commit, {}, [score], exp_id=run.commit)
        attempt = Attempt("", "ok", score, parent.objective if parent.runs else None,
                          exp_id=run.commit)
        self._apply(self.population.observe_child(run.island, parent, child, attempt,
                                                  seed_only=run.seed_only))

    def _observe_confirmation(self, run: Run, score: float) -> None:
        self._apply(self.population.observe_confirmation(run.commit, score))

    def _apply(self, decisions: list[Decision]) -> None:
        """As the driver's `_apply`: confirmations to the front of the queue; a promotion rebased
        (on the candidate's own commit, so that its true value is found under either)."""
        for decision in decisions:
            member = decision.member
            if decision.kind == "confirm":
                for _ in range(decision.confirm_seeds):
                    self.queue.appendleft(Run("confirm", member.commit, decision.island))
            elif decision.kind == "promote":
                self._count_promotion(member.commit)
                self.population.rebase_baseline(member.commit)
                self.scores[member.commit] = list(member.runs)

    def _count_promotion(self, commit: str) -> None:
        self.tally.promotions += 1
        self.tally.false_promotions += not self.true[commit] < self.true[self.baseline]
        self.tally.gain_promoted += commit == self.gain_commit
        self.baseline = commit


# -- the table -----------------------------------------------------------------------------------


def measure(condition: Condition, cell: Cell, searches: int, rng: random.Random) -> Tally:
    """`searches` searches of one cell, added up."""
    total = Tally()
    for _ in range(searches):
        search_rng = random.Random(rng.getrandbits(64))
        total.add(EmulatedSearch(condition, cell, search_rng, rng.getrandbits(64)).run())
    return total


def row(condition: Condition, cell: Cell, tally: Tally) -> str:
    """One Markdown row; what does not apply to the cell is left blank."""
    share = tally.promotions / tally.candidates
    any_share = tally.searches_promoting / tally.searches
    power = tally.gain_promoted / tally.searches
    cells = [condition.name, cell.name,
             "" if cell.gain else f"{share:.4f}",
             "" if cell.gain else f"{any_share:.3f}",
             f"{power:.3f}" if cell.gain else "",
             f"{1000 * tally.false_promotions / tally.candidates:.1f}",
             f"{tally.extra_runs / tally.runs:.3f}"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, default=2000, help="simulated searches per cell")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print("| condition | candidates | promoted per candidate | searches promoting any | power "
          "| false promotions per 1,000 experiments | confirmation cost |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for condition in CONDITIONS:
        for cell in CELLS:
            print(row(condition, cell, measure(condition, cell, args.searches, rng)), flush=True)


if __name__ == "__main__":
    main()
