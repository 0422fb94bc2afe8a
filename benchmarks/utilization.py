"""How busy the engine keeps its GPUs, and what it costs the driver per experiment.

A search of the bundled task with an instant proposer and null experiments (they hold their GPU
for a fixed length and score on a known landscape, see null_experiment.py) on 4 to 256 logical
GPUs. The length is 10 s: experiments then finish 30 times as often as real 5-minute ones on the
same number of GPUs (300 s / 10 s), so the driver is under far more pressure than in a real search.

Printed per cluster size:
- utilisation: GPU-seconds spent in experiments / GPU-seconds offered, over the window in which the
  search was submitting work (from its start until it stopped submitting; the drain after is left
  out, as a real search runs for hours and drains once);
- steady: the same after the first experiment length (Ray starting its worker processes, once per
  slot, is left out);
- driver ms/exp: the driver's own work per experiment (proposals, checks, commits, results, the
  population), waits excluded: wall time, which on a machine with fewer cores than busy processes
  counts the time others held the CPU;
- CPU ms/exp: CPU time of the whole driver process per experiment (the loop, the proposers' and
  the notes' threads, Tune's controller when tuning runs), as scale.py measures it.

Target: utilisation of at least 0.97 at 64 logical GPUs and under 50 ms of driver time per
experiment.

    .venv/bin/python -m benchmarks.utilization [--sizes 4,16,64,256] [--length 10] [--rounds 4]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray

import benchmarks.null_experiment
from benchmarks.null_experiment import null_experiment
from engine.cluster import start_ray
from engine.driver import Search, SearchOptions
from engine.experiment.task import load_task, template_path
from engine.protocol import Proposal, ProposalContext


class InstantAgent:
    """Proposes a new harmless variant at once: the proposer is never what the GPUs wait for."""

    name = "instant"

    def __init__(self) -> None:
        self.made = 0

    def propose(self, context: ProposalContext) -> Proposal:
        self.made += 1
        # A statement, not a comment: a change to comments alone is refused before any GPU.
        train = context.files["train.py"] + f'\nVARIANT = "{context.island}-{self.made}"\n'
        return Proposal(f"variant {self.made}", {"train.py": train})


def busy_fraction(rows: list[dict], slots: int, start: float, end: float) -> float:
    """GPU-seconds inside [start, end] spent in experiments, over the GPU-seconds offered."""
    busy = sum(max(0.0, min(r["finished_at"], end) - max(r["started_at"], start))
               for r in rows if r["started_at"] and r["finished_at"])
    return busy / (slots * (end - start))


def warm_up(gpus: int) -> float:
    """Start one Ray worker process per GPU slot, as a long search has, and return how long it
    took (here every worker starts on one machine; on a cluster each node starts its own)."""
    started = time.monotonic()

    @ray.remote(num_gpus=1, num_cpus=0, max_calls=0)
    def hold() -> None:
        time.sleep(1.0)

    ray.get([hold.remote() for _ in range(gpus)])
    return time.monotonic() - started


@ray.remote(num_gpus=1, num_cpus=0, max_calls=0)
def _null_task(length: float) -> tuple[float, float]:
    started = time.time()
    time.sleep(length)
    return started, time.time()


def bare_ray(gpus: int, length: float, rounds: int) -> float:
    """The ideal on this machine: the same tasks kept in flight by a bare Ray loop that does no
    other work (no proposals, git, results or decisions). Returns its utilisation."""
    started = time.time()
    stop = started + rounds * length
    running = [_null_task.remote(length) for _ in range(gpus)]
    spans = []
    while running:
        ready, running = ray.wait(running, num_returns=1)
        spans.append(ray.get(ready[0]))
        if time.time() < stop:
            running.append(_null_task.remote(length))
    rows = [{"started_at": a, "finished_at": b} for a, b in spans]
    return busy_fraction(rows, gpus, started, stop)


def measure(gpus: int, length: float, rounds: int, islands: int, tune_every: int | None) -> dict:
    start_ray(None, gpus, cpus=2)
    ray.cloudpickle.register_pickle_by_value(benchmarks.null_experiment)
    try:
        start_up = warm_up(gpus)
        ideal = bare_ray(gpus, length, rounds)
        with tempfile.TemporaryDirectory() as folder:
            options = SearchOptions(agents=islands, budget_s=length,
                                    hours=(rounds * length) / 3600, surplus=max(4, gpus // 8),
                                    tune_trials=12 if tune_every else 0, tune_every=tune_every)
            search = Search(load_task(template_path()), Path(folder) / "run", options,
                            [InstantAgent() for _ in range(islands)], run=null_experiment)
            started, cpu_before = time.time(), time.process_time()
            state = search.run()
            cpu_s = time.process_time() - cpu_before
            stopped = started + rounds * length
            rows = search.store.rows()
            trained = [r for r in rows if r["status"] in ("ok", "stopped")]
            return {
                "gpus": gpus,
                "experiments": len(trained),
                "trials": sum(r["kind"] == "tune" for r in trained),
                "utilisation": busy_fraction(trained, gpus, started, stopped),
                "steady": busy_fraction(trained, gpus, started + length, stopped),
                "driver_ms": 1000 * state.driver_s / max(len(rows), 1),
                "cpu_ms": 1000 * cpu_s / max(len(rows), 1),
                "start_up_s": start_up,
                "ideal": ideal,
            }
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="4,16,64,256")
    parser.add_argument("--length", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--islands", type=int, default=8)
    parser.add_argument("--tuning", default="off,on",
                        help="off: no knob tuning; on: the baseline's knobs refined every "
                             "--tune-every results (12 trials, 4 at once)")
    parser.add_argument("--tune-every", type=int, default=64)
    args = parser.parse_args()
    print(f"null experiments of {args.length:g} s, {args.rounds} lengths per size, "
          f"{args.islands} islands")
    print(f"{'GPUs':>6} {'tuning':>7} {'experiments':>12} {'trials':>7} {'utilisation':>12} "
          f"{'bare Ray':>9} {'ratio':>6} {'steady':>7} {'driver ms/exp':>14} "
          f"{'CPU ms/exp':>11} {'worker start-up s':>18}")
    for gpus in (int(size) for size in args.sizes.split(",")):
        for tuning in args.tuning.split(","):
            row = measure(gpus, args.length, args.rounds, args.islands,
                          args.tune_every if tuning == "on" else None)
            print(f"{row['gpus']:>6} {tuning:>7} {row['experiments']:>12} {row['trials']:>7} "
                  f"{row['utilisation']:>12.3f} "
                  f"{row['ideal']:>9.3f} {row['utilisation'] / row['ideal']:>6.3f} "
                  f"{row['steady']:>7.3f} {row['driver_ms']:>14.1f} {row['cpu_ms']:>11.1f} "
                  f"{row['start_up_s']:>18.1f}", flush=True)


if __name__ == "__main__":
    main()
