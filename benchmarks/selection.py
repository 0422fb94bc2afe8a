"""How often the population's selection rules promote what they should, on scores drawn from known
distributions: a Monte Carlo run of the real `engine.search.population.Population` behind an
emulated driver.

One simulated search is `search --gpus 2 --agents 2` on a simulated clock: two workers, two
islands; three noise runs of the starting code queued first, then one mutation proposed per free
worker (islands in turn, the parent chosen by the population) until 30 mutations have been run.
The runs the population asks for (a candidate's confirmation runs and the baseline's control
runs, taking turns) go to the front of the queue, pinned to one accelerator type as Ray's label
selector pins them: a free worker takes the first queued run it may run. Mutations that finish
before every noise run is in wait, and are judged in order once it is, as in `engine/driver.py`.
A run takes 1.0 * uniform(0.8, 1.2) time units, times its worker's duration factor; the search
ends when nothing is queued or running.

Scores are minimised, with sigma = 1: the true value of the code, plus drift(t) at the run's start
t, plus the worker's offset, plus N(0, 1) drawn fresh per run. The conditions:
- iid: no drift, no offset; the noise model the rules assume.
- drift: the mean falls by 4 sigma over a search of ~20 time units. Scores follow how many steps
  fit a fixed time budget, so they move with the machine's load; falling load flatters late
  candidates against the baseline's early noise runs.
- two accelerators: worker 0 is fast (offset 0, duration x1.0), worker 1 slow (offset +3,
  duration x1.5), as on a cluster mixing GPU models: the same code scores worse on the slow one.

The candidates, by true value: the starting code is 0; a no-op has its parent's; a seed-only one
too; a gain-g one has its parent's minus g sigma. Cells: every mutation a no-op; every mutation
seed-only; every mutation a no-op but the j-th (j uniform in 5..n-5), which gains 1, 2 or 4 sigma.
Every run draws a fresh seed, so a seed-only change scores as a no-op does, and the rules treat
both alike (every promotion is confirmed): the two cells differ only by chance. Before the rules
were changed, seed-only candidates were always confirmed and no-ops not: commit ec134c1 has the
benchmark of those rules.

Printed, per condition and cell, over --searches searches: the share of candidates promoted and of
searches promoting any (no-op and seed-only cells); the power, the share of searches whose baseline
took in the gain, through the candidate or a descendant of it (gain cells); false promotions, those
whose candidate is not truly better than the baseline it replaces, per 1,000 experiments (the
mutations an agent proposed); and the confirmation cost, the share of all runs that were neither
noise runs nor mutations (confirmation and control runs).

    .venv/bin/python -m benchmarks.selection [--searches 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import heapq
import random
from collections import deque
from dataclasses import dataclass

from engine.experiment.spec import Objective
from engine.protocol import Attempt
from engine.search.population import Decision, Member, Population

WORKERS = 2
ISLANDS = 2
NOISE_RUNS = 3  # the driver's default --noise-seeds
MUTATIONS = 30  # per search, unless --mutations says otherwise
# Two workers run a search of n mutations (and the noise runs) in about 2/3 n time units when
# nothing is confirmed: the drift condition spreads its drift over that time.
UNITS_PER_MUTATION = 2 / 3
RUN_LENGTH = 1.0
# The gain candidate is the j-th mutation, j uniform over the search but for this many at each end.
GAIN_MARGIN = 5
START = "start"  # the starting code's commit
OBJECTIVE = Objective("score", "minimize", "Minimize score")


@dataclass(frozen=True)
class Condition:
    """How scores and run lengths depend on time and on the worker."""

    name: str
    drift: float  # added to every score over the length of a search, in sigmas
    offsets: tuple[float, ...]  # added to every score of a worker, by worker
    duration_factors: tuple[float, ...]  # a run's length on each worker, relative to RUN_LENGTH
    accelerators: tuple[str, ...]  # the accelerator type of each worker, as Ray would report it


CONDITIONS = (
    Condition("iid", 0.0, (0.0, 0.0), (1.0, 1.0), ("gpu", "gpu")),
    Condition("drift", -4.0, (0.0, 0.0), (1.0, 1.0), ("gpu", "gpu")),
    Condition("two accelerators", 0.0, (0.0, 3.0), (1.0, 1.5), ("fast", "slow")),
)


@dataclass(frozen=True)
class Cell:
    """What every mutation of a search does to its parent's true value."""

    name: str
    gain: float = 0.0  # one mutation (the j-th) improves on its parent by this many sigma


CELLS = (Cell("no-op"), Cell("seed-only"),
         Cell("gain 1σ", gain=1.0), Cell("gain 2σ", gain=2.0), Cell("gain 4σ", gain=4.0))


@dataclass
class Run:
    """One run of one commit on one worker: a noise run, a mutation, a confirmation or a
    control run."""

    kind: str  # "noise", "mutation", "confirm" or "control"
    commit: str
    island: int | None = None
    parent: str = ""  # for mutations: the parent's commit
    confirms: str = ""  # for confirmation and control runs: the candidate's commit
    pinned: str = ""  # the accelerator type it must run on ("": any)
    worker: int | None = None  # set when it starts: the accelerator it ran on


@dataclass
class Tally:
    """What one search, or many added up, did."""

    searches: int = 0
    candidates: int = 0  # mutations judged
    promotions: int = 0
    false_promotions: int = 0
    searches_promoting: int = 0
    gain_promoted: int = 0  # searches whose baseline took in the gain
    runs: int = 0
    extra_runs: int = 0  # neither noise runs nor mutations: confirmation and control runs

    def add(self, other: Tally) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


class EmulatedSearch:
    """The driver's scheduling and bookkeeping around a real `Population`, on a simulated clock.
    Every call into the population is in `_observe_noise`, `_judge`, `_observe_confirmation` and
    `_apply`."""

    def __init__(self, condition: Condition, cell: Cell, rng: random.Random,
                 population_seed: int, mutations: int = MUTATIONS) -> None:
        self.condition, self.cell, self.rng, self.mutations = condition, cell, rng, mutations
        self.population = Population(OBJECTIVE, Member(START, {}, []), ISLANDS,
                                     seed=population_seed)
        self.true = {START: 0.0}  # commit -> true value, what the scores are drawn around
        self.scores: dict[str, list[tuple[float, str]]] = {}  # commit -> its scores and types
        self.baseline = START  # the commit a promotion replaces, to judge it by true values
        self.queue = deque(Run("noise", START) for _ in range(NOISE_RUNS))
        self.running: list[tuple[float, int, Run, float]] = []  # heap: finish, order, run, score
        self.free = list(range(WORKERS))
        self.now = 0.0
        self.noise_outstanding = NOISE_RUNS
        self.deferred: list[tuple[Run, float]] = []  # mutations waiting for the noise
        self.proposed = 0
        self.gain_at = rng.randint(GAIN_MARGIN, mutations - GAIN_MARGIN) if cell.gain else 0
        self.tally = Tally(searches=1)
        self.carrying_gain: set[str] = set()  # the gain candidate and its descendants

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
        """Give every free worker the first queued run it may run, proposing a mutation when
        there is none."""
        for worker in sorted(self.free):  # at the start both are free: the fast one goes first
            accelerator = self.condition.accelerators[worker]
            runnable = next((run for run in self.queue if run.pinned in ("", accelerator)), None)
            if runnable is None and self.proposed < self.mutations:
                self._propose()
                runnable = self.queue[-1]
            if runnable is not None:
                self.queue.remove(runnable)
                self.free.remove(worker)
                self._start(runnable, worker)

    def _propose(self) -> None:
        island = self.proposed % ISLANDS
        self.proposed += 1
        parent = self.population.choose_parent(island)
        commit = f"m{self.proposed}"
        gain = self.cell.gain if self.proposed == self.gain_at else 0.0
        if gain:
            self.carrying_gain.add(commit)
        if parent.commit in self.carrying_gain:
            self.carrying_gain.add(commit)
        self.true[commit] = self.true[parent.commit] - gain
        self.queue.append(Run("mutation", commit, island, parent.commit))

    def _start(self, run: Run, worker: int) -> None:
        # The score is drawn now: drift follows the start time, when the run's budget is spent.
        condition = self.condition
        run.worker = worker
        drift = condition.drift * self.now / (UNITS_PER_MUTATION * self.mutations)
        score = (self.true[run.commit] + drift
                 + condition.offsets[worker] + self.rng.gauss(0.0, 1.0))
        length = RUN_LENGTH * condition.duration_factors[worker] * self.rng.uniform(0.8, 1.2)
        heapq.heappush(self.running, (self.now + length, self.tally.runs, run, score))
        self.tally.runs += 1
        self.tally.extra_runs += run.kind not in ("noise", "mutation")

    def _observe(self, run: Run, score: float) -> None:
        """As the driver's `_observe`: mutations wait until every noise run is in."""
        self.scores.setdefault(run.commit, []).append((score, self._accelerator(run)))
        if run.kind == "noise":
            self._observe_noise(run, score)
            self.noise_outstanding -= 1
            if self.noise_outstanding == 0:
                self.population.noise_measured()
                for waiting, waiting_score in self.deferred:
                    self._judge(waiting, waiting_score)
                self.deferred.clear()
        elif run.kind in ("confirm", "control"):
            self._observe_confirmation(run, score)
        elif self.noise_outstanding > 0:
            self.deferred.append((run, score))
        else:
            self._judge(run, score)

    # -- the calls into the population ---------------------------------------------------------

    def _accelerator(self, run: Run) -> str:
        return self.condition.accelerators[run.worker]

    def _observe_noise(self, run: Run, score: float) -> None:
        self.population.observe_baseline_run(score, self._accelerator(run))

    def _judge(self, run: Run, score: float) -> None:
        self.tally.candidates += 1
        # The parent as the driver's `_parent` finds it: the population's own member when it
        # still holds it (its runs and child count are what the rules read).
        scores = self.scores.get(run.parent, [])
        parent = self.population.member(run.island, run.parent) or Member(
            run.parent, {}, [v for v, _ in scores], accelerators=[a for _, a in scores])
        child = Member(run.commit, {}, [score], exp_id=run.commit,
                       accelerators=[self._accelerator(run)])
        attempt = Attempt("", "ok", score, parent.objective if parent.runs else None,
                          exp_id=run.commit)
        self._apply(self.population.observe_child(run.island, parent, child, attempt))

    def _observe_confirmation(self, run: Run, score: float) -> None:
        observe = (self.population.observe_control if run.kind == "control"
                   else self.population.observe_confirmation)
        self._apply(observe(run.confirms, score, self._accelerator(run)))

    def _apply(self, decisions: list[Decision]) -> None:
        """As the driver's `_apply`: a confirmation's runs and control runs, taking turns, to the
        front of the queue; a promotion rebased (on the candidate's own commit, so that its true
        value is found under either)."""
        for decision in decisions:
            member = decision.member
            if decision.kind == "confirm":
                pinned = decision.accelerator
                turns = []
                for _ in range(decision.confirm_seeds):
                    turns += [Run("control", decision.against.commit, decision.island,
                                  confirms=member.commit, pinned=pinned),
                              Run("confirm", member.commit, decision.island,
                                  confirms=member.commit, pinned=pinned)]
                self.queue.extendleft(reversed(turns))
            elif decision.kind == "promote":
                self._count_promotion(member.commit)
                self.population.rebase_baseline(member.commit)
                self.scores[member.commit] = list(zip(member.runs, member.accelerators,
                                                      strict=True))

    def _count_promotion(self, commit: str) -> None:
        self.tally.promotions += 1
        self.tally.false_promotions += not self.true[commit] < self.true[self.baseline]
        # The gain counts once, whether the candidate itself or a descendant carried it in.
        taken_in = commit in self.carrying_gain and self.baseline not in self.carrying_gain
        self.tally.gain_promoted += taken_in
        self.baseline = commit


# -- the table -----------------------------------------------------------------------------------


def measure(condition: Condition, cell: Cell, searches: int, mutations: int,
            rng: random.Random) -> Tally:
    """`searches` searches of one cell, added up."""
    total = Tally()
    for _ in range(searches):
        search_rng = random.Random(rng.getrandbits(64))
        total.add(EmulatedSearch(condition, cell, search_rng, rng.getrandbits(64),
                                 mutations).run())
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
    parser.add_argument("--mutations", type=int, default=MUTATIONS, help="mutations per search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print("| condition | candidates | promoted per candidate | searches promoting any | power "
          "| false promotions per 1,000 experiments | confirmation cost |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for condition in CONDITIONS:
        for cell in CELLS:
            tally = measure(condition, cell, args.searches, args.mutations, rng)
            print(row(condition, cell, tally), flush=True)


if __name__ == "__main__":
    main()
