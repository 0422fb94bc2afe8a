"""The search on a simulated clock: how fast N GPUs reach a better model, and how honestly.

This runs the real search (engine/driver.py's loop, the evolution core, the offline proposer) on
synthetic tasks whose true objective is a known function of the knobs in their train.py. Only
what takes time or touches the world is simulated, through the driver's seams:
- the GPU pool (`SimulatedPool`): an experiment takes 5 simulated minutes of training plus 20 to
  60 s of start-up, export and scoring, and its score is the true objective plus Gaussian noise
  of a set sigma, drawn from the experiment's own seed; a slow GPU model scores worse by
  SLOW_PENALTY for the same code (it trains fewer steps in the same budget);
- the proposers' calls (`SimulatedCalls`): the offline agent is asked at once, and its proposal
  arrives after a simulated LLM call (a median of 20 s);
- the recorder (`MemoryRecorder`): rows in memory, commits named by the hash of their files, no
  git and no disk per experiment;
- the clock (`SimulatedClock`): a wait jumps to the next event, as nothing happens in between.

Tuning is off: Ray Tune cannot run on a simulated clock.

Measured per task and number of GPUs N, over seeds (medians, with the range):
- hours to 50% and to 90% of the attainable improvement of the baseline's true objective, and
  speedup(N)/N against N = 1;
- false promotions: promotions whose true objective is not better than that of the baseline they
  replaced, per 1,000 experiments and as a share of promotions;
- the share of GPU time spent on confirmation and control runs.

    .venv/bin/python -m benchmarks.simulate [--gpus 1,2,4,...] [--seeds 40] [--tasks additive]
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import heapq
import json
import math
import os
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from agents.offline import OfflineAgent
from engine.driver import Search
from engine.experiment.records import (
    Experiment,
    ExperimentResult,
    Job,
    Kind,
    Outcome,
    Result,
    Status,
)
from engine.experiment.spec import Spec
from engine.experiment.task import load_task
from engine.search.members import Member
from engine.search.options import SearchOptions
from engine.search.proposers import Proposers

TRAINING_S = 300.0
OVERHEAD_S = (20.0, 60.0)  # start-up, export and scoring, uniform
PROPOSAL_MEDIAN_S = 20.0  # an LLM call; lognormal with PROPOSAL_SPREAD
PROPOSAL_SPREAD = 0.5
SIGMA = 0.01  # noise of one run's score
SLOW_PENALTY = 2 * SIGMA  # a slow GPU's score is worse by this for the same code
FAST, SLOW = "H100", "A100"
START_S = 1.0e9  # the simulated epoch: any time but zero, which reads as "not set"


# -- synthetic tasks ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Landscape:
    """A synthetic task: its knobs (all 1.0 at the start) and the true objective (minimised) as a
    function of their values."""

    name: str
    knobs: int
    true: Callable[[dict[str, float]], float]
    best: float  # the best true objective there is

    def files(self) -> dict[str, str]:
        lines = [f"K{index:02d} = 1.0" for index in range(self.knobs)]
        return {"train.py": f'"""Synthetic task {self.name}."""\n' + "\n".join(lines) + "\n"}


def _additive(values: dict[str, float]) -> float:
    """Eight live knobs of 80, each worth LIVE_GAIN at its optimum (2.0 or 0.5, a doubling away),
    on a line in log space: about 5% of single proposals improve the code, and each improvement
    adds to the others."""
    gain = 0.0
    for index in range(8):
        optimum = 2.0 if index % 2 == 0 else 0.5
        distance = abs(math.log(values[f"K{index * 10:02d}"] / optimum)) / math.log(2)
        gain += 0.05 * (1.0 - min(distance, 2.0))
    return 1.0 - gain


def _rugged(values: dict[str, float]) -> float:
    """Ten pairs of knobs that count only through their product: each pair sits on a small local
    optimum at the start, and a higher one lies across a valley (the product at 4)."""
    gain = 0.0
    for pair in range(10):
        u = math.log2(values[f"K{2 * pair:02d}"] * values[f"K{2 * pair + 1:02d}"])
        gain += 0.05 * (0.4 * math.exp(-u * u / 0.5) + math.exp(-(u - 2) ** 2 / 0.5) - 0.4)
    return 1.0 - gain


def _null(values: dict[str, float]) -> float:
    """No change of any knob changes anything."""
    return 1.0


LANDSCAPES = {
    "additive": Landscape("additive", 80, _additive, 1.0 - 8 * 0.05),
    "rugged": Landscape("rugged", 40, _rugged, 1.0 - 10 * 0.05 * (1 + 0.4 * math.exp(-8) - 0.4)),
    "null": Landscape("null", 40, _null, 1.0),
}

GOAL = """# Goal
Minimize the validation loss (`val_bpb`) of a synthetic task.

# Constraints
- Training time: 5 minutes per experiment
- Hardware: 1 GPU per experiment
- Editable files: train.py
"""
HARNESS = 'METRICS = {"val_bpb": ("validation loss", "loss")}\n'


def make_task(landscape: Landscape, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "program.md").write_text(GOAL)
    (folder / "prepare.py").write_text(HARNESS)
    for name, text in landscape.files().items():
        (folder / name).write_text(text)
    return load_task(folder)


def true_objective(landscape: Landscape, files: dict[str, str]) -> float:
    return _true(landscape, files["train.py"])


@functools.lru_cache(maxsize=4096)
def _true(landscape: Landscape, train: str) -> float:
    return landscape.true({name: float(value) for name, value in KNOB.findall(train)})


KNOB = re.compile(r"^(K\d\d) = (\S+)$", re.MULTILINE)  # as Landscape.files writes them


# -- the simulated world, behind the driver's seams ---------------------------------------------

class SimulatedClock:
    """Simulated seconds; `advance` jumps to the next event anyone scheduled."""

    def __init__(self) -> None:
        self.now = START_S
        self._events: list[float] = []

    def __call__(self) -> float:
        return self.now

    def wake_at(self, at: float) -> None:
        heapq.heappush(self._events, at)

    def advance(self, fallback_s: float) -> None:
        """To the next scheduled event (or by `fallback_s` when none is)."""
        while self._events and self._events[0] <= self.now:
            heapq.heappop(self._events)
        self.now = heapq.heappop(self._events) if self._events else self.now + fallback_s


class _SimulatedCall(Future):
    """An agent's call, made at once, that counts as done once the clock reaches `due`."""

    def __init__(self, clock: SimulatedClock, due: float) -> None:
        super().__init__()
        self._clock, self._due = clock, due

    def done(self) -> bool:
        return self._clock() >= self._due


class SimulatedCalls(Executor):
    """Runs an agent's call at once; its answer arrives after a simulated LLM latency."""

    def __init__(self, clock: SimulatedClock, rng: random.Random) -> None:
        self.clock, self.rng = clock, rng

    def submit(self, fn, /, *args, **kwargs) -> Future:
        due = self.clock() + PROPOSAL_MEDIAN_S * math.exp(self.rng.gauss(0, PROPOSAL_SPREAD))
        call = _SimulatedCall(self.clock, due)
        try:
            call.set_result(fn(*args, **kwargs))
        except Exception as error:  # noqa: BLE001 - handed to the proposers as a real call's
            call.set_exception(error)
        self.clock.wake_at(due)
        return call


class SimulatedPool:
    """GPUs of one or two models; an experiment's score is the landscape's true objective plus
    noise from its seed, known at submission and handed back when its time has passed."""

    def __init__(self, clock: SimulatedClock, landscape: Landscape, gpus: int, slow: int,
                 rng: random.Random) -> None:
        self.clock, self.landscape, self.rng = clock, landscape, rng
        self.free = {FAST: gpus - slow, SLOW: slow}
        self.slots = gpus
        self._running: dict[int, tuple[str, Outcome]] = {}  # job -> its GPU model, its outcome
        self._tags: dict[int, object] = {}  # job -> its tag, in the order the jobs started
        self._ends: list[tuple[float, int]] = []
        self._next = 0

    def refresh(self) -> tuple[int, int]:
        return self.slots, 1

    def can_start(self, accelerator: str) -> bool:
        return self.free.get(accelerator, 0) > 0 if accelerator else sum(self.free.values()) > 0

    def submit(self, job: Job, tag: object, accelerator: str = "") -> None:
        model = accelerator or self.rng.choices(list(self.free), list(self.free.values()))[0]
        self.free[model] -= 1
        noise = random.Random(f"{job.seed}").gauss(0, SIGMA)
        score = (true_objective(self.landscape, job.files) + noise
                 + (SLOW_PENALTY if model == SLOW else 0.0))
        started = self.clock()
        finished = started + TRAINING_S + self.rng.uniform(*OVERHEAD_S)
        result = ExperimentResult(Status.OK, score, {"val_bpb": score}, seed=job.seed,
                                  budget_s=job.budget_s, train_wall_s=finished - started)
        self._running[self._next] = (model, Outcome(result, started, finished,
                                                    accelerator=model))
        self._tags[self._next] = tag
        heapq.heappush(self._ends, (finished, self._next))
        self.clock.wake_at(finished)
        self._next += 1

    @property
    def running(self) -> list[object]:
        return list(self._tags.values())

    def wait(self, timeout_s: float) -> list[tuple[object, Outcome | Exception]]:
        self.clock.advance(timeout_s)
        ended = []
        while self._ends and self._ends[0][0] <= self.clock():
            job = heapq.heappop(self._ends)[1]
            model, outcome = self._running.pop(job)
            self.free[model] += 1
            ended.append((self._tags.pop(job), outcome))
        return ended

    def cancel_all(self) -> list[object]:
        tags = self.running
        self._running.clear()
        self._tags.clear()
        self._ends.clear()
        return tags


class _Rows:
    """The results store's reading side, in memory."""

    def __init__(self) -> None:
        self.kept: list[Result] = []

    def results(self) -> list[Result]:
        return list(self.kept)

    def __len__(self) -> int:
        return len(self.kept)


@dataclass
class Promotion:
    at: float  # simulated seconds since the start
    true_before: float  # the true objective of the baseline it replaced
    true_after: float


class MemoryRecorder:
    """The recorder's surface (engine/rundir/recorder.py) in memory: commits named by a hash of
    their files, rows kept as Results, promotions noted with their true objectives."""

    landscape: Landscape  # set by `simulate` on the class it makes
    clock: SimulatedClock

    def __init__(self, run_dir, repo, spec: Spec) -> None:
        self.store, self.repo, self.problems = _Rows(), repo, []
        self.promotions: list[Promotion] = []
        self.baseline_true: float | None = None

    def start(self, task_path, options, commit: str, created: float, budget_s: float) -> None:
        return

    def journal(self, experiments: list[Experiment]) -> None:
        return

    def commit(self, experiment: Experiment, parent_files: dict[str, str]) -> None:
        digest = hashlib.sha1(json.dumps(experiment.files, sort_keys=True).encode())
        experiment.commit = f"{digest.hexdigest()[:32]}{experiment.exp_id[-8:]:>08}"

    def record(self, result: Result) -> None:
        self.store.kept.append(result)

    def move_island(self, island: int, commit: str) -> None:
        return

    def merge(self, member: Member, reason: str) -> str:
        after = true_objective(self.landscape, member.files)
        before = self.baseline_true
        self.promotions.append(Promotion(self.clock() - START_S, before, after))
        self.baseline_true = after
        return f"merge-{member.commit}"

    def write_derived(self, checkpoint, kept, now: bool = False) -> None:
        return

    def close(self) -> None:
        return


# -- one search, and the table -------------------------------------------------------------------

@dataclass
class Outcomes:
    experiments: int
    hours: float
    to_half: float | None  # simulated hours until the baseline held half the attainable gain
    to_most: float | None  # ... and 90% of it
    promotions: int
    false_promotions: int
    confirm_share: float  # of GPU time, on confirmation and control runs
    wall_s: float


def simulate(landscape: Landscape, gpus: int, seed: int, *, hours: float, slow: int = 0,
             agents: int | None = None, stop_at_most: bool = True) -> Outcomes:
    """One search of `landscape` on `gpus` simulated GPUs (`slow` of them the slower model) for
    `hours` simulated hours, or until 90% of the attainable gain when `stop_at_most`."""
    wall = time.perf_counter()
    clock = SimulatedClock()
    rng = random.Random(seed)
    recorder = type("Recorder", (MemoryRecorder,), {"landscape": landscape, "clock": clock})
    start_true = true_objective(landscape, landscape.files())
    attainable = start_true - landscape.best
    islands = agents or gpus
    with tempfile.TemporaryDirectory() as folder:
        task = make_task(landscape, Path(folder) / "task")
        options = SearchOptions(agents=islands, seed=seed, hours=hours, tune_trials=0)
        search = Search(
            task, Path(folder) / "run", options, [OfflineAgent(seed * 1000 + i)
                                                  for i in range(islands)],
            pool=lambda: SimulatedPool(clock, landscape, gpus, slow, rng),
            recorder=recorder,
            proposers=lambda agents, seed, clock_: Proposers(
                agents, seed, clock_, calls=SimulatedCalls(clock, rng)),
            clock=clock)
        search.recorder.baseline_true = start_true

        def reached(share: float) -> float | None:
            for promotion in search.recorder.promotions:
                if attainable > 0 and (start_true - promotion.true_after
                                       >= share * attainable - 1e-12):
                    return promotion.at / 3600
            return None

        def stop_when_most() -> None:
            if stop_at_most and reached(0.9) is not None:
                raise KeyboardInterrupt  # the driver's clean stop

        search.run(on_tick=stop_when_most)
        results = search.store.results()
    trained = [r for r in results if r.status.trained and r.started_at and r.finished_at]
    gpu_s = sum(r.finished_at - r.started_at for r in trained) or 1.0
    confirming = sum(r.finished_at - r.started_at for r in trained
                     if r.kind in (Kind.CONFIRM, Kind.CONTROL))
    promotions = search.recorder.promotions
    false = sum(p.true_after >= p.true_before for p in promotions)
    return Outcomes(len(trained), (clock() - START_S) / 3600, reached(0.5), reached(0.9),
                    len(promotions), false, confirming / gpu_s, time.perf_counter() - wall)


def _median(values: list[float | None]) -> float | None:
    """The median, a search that never reached the target counted as the slowest (None when
    that is the median)."""
    median = statistics.median(math.inf if v is None else v for v in values)
    return None if median == math.inf else median


def _median_range(values: list[float | None]) -> str:
    known = sorted(v for v in values if v is not None)
    median = _median(values)
    if median is None:
        return "never"
    missing = len(values) - len(known)
    text = f"{median:.2f} ({known[0]:.2f}-{known[-1]:.2f})"
    return text + (f" {missing} never" if missing else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", default="1,2,4,8,16,32,64,128,256")
    parser.add_argument("--seeds", type=int, default=40,
                        help="searches per task and size (with 20, the median at 256 GPUs "
                             "moved by a promotion's length from one set of seeds to another)")
    parser.add_argument("--tasks", default="additive,rugged,null")
    parser.add_argument("--hours", type=float, default=8.0,
                        help="the search's length in simulated hours (N < 64 GPUs get 64/N "
                             "times more, so that every N may reach the target)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(),
                        help="searches simulated at once, one process each")
    parser.add_argument("--slow-share", type=float, default=0.0,
                        help="share of the GPUs of the slower model")
    parser.add_argument("--plot", type=Path, help="write speedup/N and false promotions "
                                                  "against N to this image")
    parser.add_argument("--raw", type=Path, help="append each search's outcomes to this file, "
                                                 "one JSON object a line")
    args = parser.parse_args()
    print(f"{'task':>9} {'GPUs':>5} {'exps':>7} {'h to 50%':>20} {'h to 90%':>20} "
          f"{'speedup/N':>10} {'false/1k':>9} {'false share':>12} {'confirm':>8} {'wall s':>7}")
    table: dict[str, list[tuple[int, float | None, float]]] = {}
    for name in args.tasks.split(","):
        landscape = LANDSCAPES[name]
        base: float | None = None
        for gpus in (int(n) for n in args.gpus.split(",")):
            one = functools.partial(simulate, landscape, gpus,
                                    hours=args.hours * max(1, 64 // gpus),
                                    slow=round(gpus * args.slow_share),
                                    stop_at_most=name != "null")
            with ProcessPoolExecutor(args.jobs) as processes:
                runs = list(processes.map(one, range(args.seeds)))
            if args.raw:
                with args.raw.open("a") as raw:
                    raw.writelines(json.dumps({"task": name, "gpus": gpus, "seed": seed,
                                               "slow_share": args.slow_share, **asdict(r)}) + "\n"
                                   for seed, r in enumerate(runs))
            most = [r.to_most for r in runs]
            median_most = _median(most)
            if gpus == 1:
                base = median_most
            speedup = (base / median_most / gpus) if base and median_most else None
            experiments = sum(r.experiments for r in runs)
            promotions = sum(r.promotions for r in runs)
            false = sum(r.false_promotions for r in runs)
            table.setdefault(name, []).append((gpus, speedup, false / max(promotions, 1)))
            print(f"{name:>9} {gpus:>5} {experiments // len(runs):>7} "
                  f"{_median_range([r.to_half for r in runs]):>20} {_median_range(most):>20} "
                  f"{speedup if speedup is None else round(speedup, 2)!s:>10} "
                  f"{1000 * false / max(experiments, 1):>9.2f} "
                  f"{false / max(promotions, 1):>12.3f} "
                  f"{statistics.fmean(r.confirm_share for r in runs):>8.3f} "
                  f"{statistics.fmean(r.wall_s for r in runs):>7.1f}", flush=True)
    if args.plot:
        plot(table, args.plot)


def plot(table: dict[str, list[tuple[int, float | None, float]]], path: Path) -> None:
    """Speedup/N and the false share of promotions against N, one line per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (speed, false) = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in table.items():
        gpus = [n for n, _, _ in rows]
        if any(s is not None for _, s, _ in rows):
            speed.plot(gpus, [s if s is not None else float("nan") for _, s, _ in rows], "o-",
                       label=name)
        false.plot(gpus, [share for _, _, share in rows], "o-", label=name)
    for axes, title in ((speed, "speedup(N) / N to 90% of the attainable gain"),
                        (false, "false promotions, share of promotions")):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("GPUs (N)")
        axes.set_title(title, fontsize=10)
        axes.grid(alpha=0.3)
        axes.legend()
    speed.axhline(0.8, color="grey", linestyle=":")
    speed.axhline(0.5, color="grey", linestyle="--")
    false.axhline(0.05, color="grey", linestyle="--")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
