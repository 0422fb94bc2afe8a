"""How often the population's selection rules promote what they should, on scores drawn from known
distributions: a Monte Carlo run of the real evolution core (`engine.search.evolution.Evolution`:
the population, the queue, the deferred results, the confirmations) on a simulated clock.

One simulated search is `search --gpus 2 --agents 2` on a simulated clock: two workers, two
islands; three noise runs of the starting code queued first, then one mutation proposed per free
worker (islands in turn, the parent chosen by the population) until 30 mutations have been run.
The core queues the runs the population asks for (a candidate's confirmation runs and the
baseline's control runs, taking turns) ahead of the rest, pinned to one accelerator type as Ray's
label selector pins them: a free worker takes the first queued run the core lets it run. Mutations
that finish before every noise run is in wait, and are judged best first once it is.
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
from dataclasses import dataclass

from engine.experiment.records import (
    Experiment,
    ExperimentResult,
    Kind,
    Outcome,
    Result,
    Status,
)
from engine.experiment.spec import parse_goal_file
from engine.protocol import Proposal
from engine.search.evolution import Evolution
from engine.search.members import Member
from engine.search.options import SearchOptions

WORKERS = 2  # unless --workers says otherwise; islands: as many
NOISE_RUNS = 3  # the driver's default --noise-seeds
MUTATIONS = 30  # per search, unless --mutations says otherwise
# Two workers run a search of n mutations (and the noise runs) in about 2/3 n time units when
# nothing is confirmed: the drift condition spreads its drift over that time.
UNITS_PER_MUTATION = 2 / 3
RUN_LENGTH = 1.0
# The gain candidate is the j-th mutation, j uniform over the search but for this many at each end.
GAIN_MARGIN = 5
START = "start"  # the starting code's commit
START_FILES = {"train.py": "import random\n"}
SPEC = parse_goal_file("# Goal\nMinimize `score`\n")


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


class SimulatedSearch:
    """The real evolution core (engine/search/evolution.py) on a simulated clock: this class is
    the clock, the workers, the proposer and the score model; every decision, queue order and
    pin is the core's own, through `admit`, `enqueue`, `ask` and `tell`."""

    def __init__(self, condition: Condition, cell: Cell, rng: random.Random,
                 population_seed: int, mutations: int = MUTATIONS,
                 workers: int = WORKERS) -> None:
        """`workers` workers and as many islands; the conditions' workers taken in turn."""
        self.condition, self.cell, self.rng, self.mutations = condition, cell, rng, mutations
        self.islands = workers
        options = SearchOptions(agents=workers, noise_seeds=NOISE_RUNS, tune_trials=0,
                                seed=population_seed % 2**31)
        self.core = Evolution(SPEC, Member(START, dict(START_FILES), []), options, "sim",
                              self._promoted, self._committed)
        self.true = {START: 0.0}  # commit -> true value, what the scores are drawn around
        self.baseline = START  # the commit a promotion replaces, to judge it by true values
        self.running: list[tuple[float, int, Experiment, float, int]] = []  # heap
        self.free = list(range(workers))
        # the search takes about as long, in time units, however many workers run it
        self.units = UNITS_PER_MUTATION * mutations * WORKERS / workers
        self.now = 0.0
        self.proposed = 0
        self.gain_at = rng.randint(GAIN_MARGIN, mutations - GAIN_MARGIN) if cell.gain else 0
        self.tally = Tally(searches=1)
        self.carrying_gain: set[str] = set()  # the gain candidate and its descendants
        self.gain_line: str | None = None  # the line the gain candidate added, once proposed
        self.core.noise_runs()

    def run(self) -> Tally:
        """Run the search to its end; returns what it did."""
        while True:
            self._dispatch()
            if not self.running:
                break
            self.now, _, experiment, score, worker = heapq.heappop(self.running)
            self.free.append(worker)
            accelerator = self.condition.accelerators[worker % WORKERS]
            result = Result.of(experiment, Outcome(ExperimentResult(Status.OK, score), 0.0, 0.0,
                                                   accelerator=accelerator),
                               run="sim", budget_s=RUN_LENGTH)
            self.tally.candidates += experiment.kind is Kind.MUTATION
            self.core.tell(result, experiment)
        self.tally.searches_promoting = int(self.tally.promotions > 0)
        return self.tally

    def _dispatch(self) -> None:
        """Give every free worker the first queued run the core lets it run, proposing a
        mutation when there is none."""
        for worker in sorted(self.free):  # at the start all are free: a fast one goes first
            accelerator = self.condition.accelerators[worker % WORKERS]
            may = lambda pinned, accelerator=accelerator: pinned in ("", accelerator)  # noqa: E731
            experiment = self.core.ask(may)
            if experiment is None and self.proposed < self.mutations:
                self._propose()
                experiment = self.core.ask(may)
            if experiment is not None:
                self.free.remove(worker)
                self._start(experiment, worker)

    def _propose(self) -> None:
        island = self.proposed % self.islands
        self.proposed += 1
        parent = self.core.parent(island)
        line = (f"random.seed({self.proposed})" if self.cell.name == "seed-only"
                else f"VARIANT = {self.proposed}")
        proposal = Proposal(f"change {self.proposed}",
                            {"train.py": parent.files["train.py"] + line + "\n"})
        experiment, refusal = self.core.admit(island, parent, proposal, "simulated")
        assert refusal is None, refusal
        experiment.commit = commit = f"m{self.proposed}"
        gain = self.cell.gain if self.proposed == self.gain_at else 0.0
        if gain:
            self.gain_line = line
        if gain or parent.commit in self.carrying_gain:
            self.carrying_gain.add(commit)
        self.true[commit] = self.true[parent.commit] - gain
        self.core.enqueue(experiment)

    def _start(self, experiment: Experiment, worker: int) -> None:
        # The score is drawn now: drift follows the start time, when the run's budget is spent.
        condition = self.condition
        kind = worker % WORKERS  # the conditions describe two workers: the rest take turns
        drift = condition.drift * self.now / self.units
        score = (self.true[experiment.commit] + drift
                 + condition.offsets[kind] + self.rng.gauss(0.0, 1.0))
        length = RUN_LENGTH * condition.duration_factors[kind] * self.rng.uniform(0.8, 1.2)
        heapq.heappush(self.running, (self.now + length, self.tally.runs, experiment, score,
                                      worker))
        self.tally.runs += 1
        self.tally.extra_runs += experiment.kind.confirmation

    def _committed(self, experiment: Experiment, parent_files: dict[str, str]) -> None:
        """The core's commit of code it made (winners combined): it carries the gain when it
        holds the line of the change that made it."""
        experiment.commit = commit = f"c{experiment.exp_id}"
        carries = self.gain_line is not None and self.gain_line in experiment.files["train.py"]
        if carries:
            self.carrying_gain.add(commit)
        self.true[commit] = -self.cell.gain if carries else 0.0

    def _promoted(self, member: Member, reason: str) -> str:
        """The core's merge: the baseline stays at the candidate's own commit, so that its true
        value is found under it."""
        self.tally.promotions += 1
        self.tally.false_promotions += not self.true[member.commit] < self.true[self.baseline]
        # The gain counts once, whether the candidate itself or a descendant carried it in.
        taken_in = member.commit in self.carrying_gain and self.baseline not in self.carrying_gain
        self.tally.gain_promoted += taken_in
        self.baseline = member.commit
        return member.commit


# -- the table -----------------------------------------------------------------------------------


def measure(condition: Condition, cell: Cell, searches: int, mutations: int,
            rng: random.Random, workers: int = WORKERS) -> Tally:
    """`searches` searches of one cell, added up."""
    total = Tally()
    for _ in range(searches):
        search_rng = random.Random(rng.getrandbits(64))
        total.add(SimulatedSearch(condition, cell, search_rng, rng.getrandbits(64),
                                 mutations, workers).run())
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
    parser.add_argument("--workers", type=int, default=WORKERS,
                        help="workers (and islands): with more, candidates are confirmed side "
                             "by side, and one may finish after another replaced its baseline")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print("| condition | candidates | promoted per candidate | searches promoting any | power "
          "| false promotions per 1,000 experiments | confirmation cost |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for condition in CONDITIONS:
        for cell in CELLS:
            tally = measure(condition, cell, args.searches, args.mutations, rng, args.workers)
            print(row(condition, cell, tally), flush=True)


if __name__ == "__main__":
    main()
