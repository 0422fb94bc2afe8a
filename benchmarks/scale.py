"""How many GPUs one driver keeps busy: the real search on simulated clusters of several nodes with
64 to 1,024 logical GPUs.

Each cluster is a `ray.cluster_utils.Cluster` on this machine: a head without GPUs, where the driver
runs, and four GPU nodes of unequal size (1/8, 1/8, 1/4 and 1/2 of the GPUs). The search is the real
one (engine.driver.Search through engine.search.ray_pool.RayPool, every experiment a Ray task
holding one logical GPU) with an instant proposer and null experiments (null_experiment.py) of
--length seconds; knob tuning is off, so every GPU runs the agents' experiments. Real 5-minute
experiments on N GPUs finish N/300 times a second; the default 30 s null experiments finish 10 times
as often, and --sweep runs shorter ones on the largest cluster that fits, to find where the driver
falls behind.

Printed per run:
- utilisation: busy GPU-seconds / GPU-seconds offered, in the steady window: from one length
  after the start until the search stops submitting (Ray's worker processes are started before,
  as a long search has started them once; the final drain is left out);
- least node: the same for the least busy node;
- exp/s, x real, as GPUs: results a second in the window; how many times as often as real
  5-minute experiments on these GPUs; the cluster size at which 30 s null experiments (10 times
  real) bring as many (a shorter length on a cluster that fits stands for a larger one);
- driver ms/exp: the driver loop's own work per experiment (`SearchState.driver_s`);
- CPU ms/exp: CPU time of the whole driver process per experiment (the loop, the proposer
  threads and Ray's client threads);
- load: the machine's 1-minute load average at the end of the run (other work on a shared
  machine takes CPU from the driver and from Ray);
- worker MiB: unique memory (USS) of one idle Ray worker process. One runs per GPU, so it decides
  the largest cluster this machine can simulate: sizes that would not fit in the memory available
  are skipped, saying so.

Projection: the driver's loop is one thread, so it takes at most 1/c results a second, c being its
cost per experiment: the larger of its own work (wall time, which counts the git processes and
fsyncs it waits for) and its process's CPU time, the highest measured in the run. Real 5-minute
experiments on G GPUs bring G/300 results a second. Kept at most half busy (results come in
bursts, and a result waiting for the driver is a GPU waiting too), one driver keeps
G = 0.5 x 300 / c GPUs busy.

    .venv/bin/python -m benchmarks.scale [--sizes 64,128,256,512,1024] [--length 30] [--rounds 4]
                                         [--sweep 15,10,7.5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

import benchmarks.null_experiment
from benchmarks.null_experiment import null_experiment
from benchmarks.utilization import InstantAgent, busy_fraction
from engine.cluster import WORKERS_SOFT_LIMIT
from engine.driver import Search, SearchOptions
from engine.experiment.task import load_task, template_path
from engine.search.ray_pool import NODE_ID_SHOWN

NODE_SHARES = (8, 8, 4, 2)  # the GPU nodes: 1/8, 1/8, 1/4 and 1/2 of the cluster's GPUs
REAL_EXPERIMENT_S = 300.0
TIMES_REAL = 10  # the pressure: null experiments 10 times as frequent as real ones
DRIVER_BUSY_AT_MOST = 0.5
WORKER_MIB_BEFORE_MEASURING = 60.0  # measured here: 48 to 57 MiB unique per worker
# What one more worker costs the machine beyond its unique memory (its share of the kernel's and
# the raylet's bookkeeping): a 256-GPU cluster here took 21 GiB, about 80 MiB a GPU all in.
WORKER_MIB_UNSEEN = 20.0
NODE_MIB = 500.0  # a node's raylet, agents and object store, about
MEMORY_LEFT_TO_OTHERS_GIB = 6.0  # the machine is shared: never take what others may need
WARM_UP_HOLD_S = 10.0


class SimulatedCluster:
    """A head without GPUs (the driver's node) and GPU nodes of unequal size, on this machine."""

    def __init__(self, gpus: int) -> None:
        self.cluster = Cluster(initialize_head=True, connect=True, head_node_args={
            "num_cpus": 0, "num_gpus": 0,
            "_system_config": {"num_workers_soft_limit": WORKERS_SOFT_LIMIT}})
        self.gpus = gpus
        self.gpus_of: dict[str, int] = {}  # node id prefix (as in a row's `node`) -> its GPUs
        for share in NODE_SHARES:
            node = self.cluster.add_node(num_cpus=1, num_gpus=gpus // share)
            self.gpus_of[node.node_id[:NODE_ID_SHOWN]] = gpus // share

    def warm_up(self) -> float:
        """Start one Ray worker process per GPU on every node, as a long search has, and return
        how long it took. Tasks hold every GPU until a deadline, so that no node can run two on
        one worker; the deadline doubles until every node has its workers."""

        # Defined here, so that it travels by value: workers need not import this module.
        @ray.remote(num_gpus=1, num_cpus=0, max_calls=0)
        def hold_until(deadline: float) -> None:
            time.sleep(max(0.0, deadline - time.time()))

        started, hold_s = time.monotonic(), WARM_UP_HOLD_S
        while any(len(self.idle_workers(node)) < count for node, count in self.gpus_of.items()):
            deadline = time.time() + hold_s
            ray.get([hold_until.remote(deadline) for _ in range(self.gpus)])
            hold_s *= 2
        return time.monotonic() - started

    def idle_workers(self, node_id: str) -> list[psutil.Process]:
        """The idle Ray worker processes of one node (named by its id's prefix)."""
        node = next(node for node in self.cluster.list_all_nodes()
                    if node.node_id.startswith(node_id))
        raylet = node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
        idle = []
        for process in psutil.Process(raylet).children():
            try:
                if process.cmdline()[:1] == ["ray::IDLE"]:
                    idle.append(process)
            except psutil.Error:  # a worker that exited meanwhile
                continue
        return idle

    def worker_mib(self, sample: int = 32) -> float:
        """Mean unique memory of this cluster's idle worker processes (a sample of them)."""
        sizes = []
        for process in [p for node in self.gpus_of for p in self.idle_workers(node)][:sample]:
            try:
                sizes.append(process.memory_full_info().uss)
            except psutil.Error:
                continue
        return statistics.mean(sizes) / 2**20 if sizes else WORKER_MIB_BEFORE_MEASURING

    def shutdown(self) -> None:
        ray.shutdown()
        self.cluster.shutdown()


def footprint_gib(gpus: int, worker_mib: float) -> float:
    """What a simulated cluster of `gpus` GPUs takes of this machine's memory, about."""
    return (gpus * (worker_mib + WORKER_MIB_UNSEEN) + (len(NODE_SHARES) + 1) * NODE_MIB) / 1024


def fits(gpus: int, worker_mib: float, running: int = 0) -> tuple[bool, str]:
    """Whether a cluster of `gpus` GPUs fits in the memory this machine has available, leaving
    others their share, once the cluster of `running` GPUs that holds memory now is gone."""
    needed = footprint_gib(gpus, worker_mib)
    available = psutil.virtual_memory().available / 2**30
    if running:
        available += footprint_gib(running, worker_mib)
    return needed <= available - MEMORY_LEFT_TO_OTHERS_GIB, (
        f"needs about {needed:.1f} GiB ({gpus} workers of {worker_mib + WORKER_MIB_UNSEEN:.0f} "
        f"MiB), {available:.1f} GiB available and {MEMORY_LEFT_TO_OTHERS_GIB:g} left to others")


def measure(simulated: SimulatedCluster, length: float, rounds: int, islands: int) -> dict:
    """One search of null experiments of `length` seconds, submitting for `rounds` lengths."""
    gpus = simulated.gpus
    with tempfile.TemporaryDirectory() as folder:
        options = SearchOptions(agents=islands, budget_s=length, hours=rounds * length / 3600,
                                surplus=max(4, gpus // 8), tune_trials=0)
        search = Search(load_task(template_path()), Path(folder) / "run", options,
                        [InstantAgent() for _ in range(islands)], run=null_experiment)
        cpu_before = time.process_time()
        state = search.run()
        cpu_s = time.process_time() - cpu_before
        rows = [row for row in search.store.rows() if row["status"] == "ok"]
    start, stop = state.started_at + length, state.started_at + rounds * length
    finished = sum(start <= row["finished_at"] <= stop for row in rows)
    per_node = [busy_fraction([row for row in rows if row["node"].endswith(node)], count,
                              start, stop) for node, count in simulated.gpus_of.items()]
    return {
        "gpus": gpus, "length": length, "experiments": len(rows),
        "per_s": finished / (stop - start),
        "utilisation": busy_fraction(rows, gpus, start, stop),
        "least_node": min(per_node),
        "driver_ms": 1000 * state.driver_s / len(rows),
        "cpu_ms": 1000 * cpu_s / len(rows),
        "load": os.getloadavg()[0],
    }


def print_header() -> None:
    print(f"{'GPUs':>6} {'length s':>9} {'exp/s':>7} {'x real':>7} {'as GPUs':>8} "
          f"{'experiments':>12} "
          f"{'utilisation':>12} {'least node':>11} {'driver ms/exp':>14} {'CPU ms/exp':>11} "
          f"{'load':>5} {'worker MiB':>11} {'start-up s':>11}")


def print_row(row: dict, worker_mib: float, start_up_s: float) -> None:
    times_real = row["per_s"] / (row["gpus"] / REAL_EXPERIMENT_S)
    as_gpus = row["per_s"] * REAL_EXPERIMENT_S / TIMES_REAL
    print(f"{row['gpus']:>6} {row['length']:>9g} {row['per_s']:>7.1f} {times_real:>7.1f} "
          f"{as_gpus:>8.0f} "
          f"{row['experiments']:>12} {row['utilisation']:>12.3f} {row['least_node']:>11.3f} "
          f"{row['driver_ms']:>14.1f} {row['cpu_ms']:>11.1f} {row['load']:>5.1f} "
          f"{worker_mib:>11.0f} {start_up_s:>11.1f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64,128,256,512,1024")
    parser.add_argument("--length", type=float, default=REAL_EXPERIMENT_S / TIMES_REAL)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--sweep", default="15,10,7.5",
                        help="shorter lengths, run on the largest cluster that fits")
    parser.add_argument("--islands", type=int, default=8)
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    sweep = [float(length) for length in args.sweep.split(",") if length]
    # Workers import the engine from the installed project; the null experiment travels by value.
    ray.cloudpickle.register_pickle_by_value(benchmarks.null_experiment)
    print(f"{len(NODE_SHARES)} GPU nodes of 1/8, 1/8, 1/4 and 1/2 of the GPUs; null experiments "
          f"submitted for {args.rounds} lengths; {args.islands} islands")
    print_header()
    worker_mib, results = WORKER_MIB_BEFORE_MEASURING, []
    for index, gpus in enumerate(sizes):
        if not fits(gpus, worker_mib)[0]:
            for skipped in sizes[index:]:
                print(f"{skipped:>6} skipped: {fits(skipped, worker_mib)[1]}", flush=True)
            break
        simulated = SimulatedCluster(gpus)
        try:
            start_up_s = simulated.warm_up()
            worker_mib = simulated.worker_mib()
            results.append(measure(simulated, args.length, args.rounds, args.islands))
            print_row(results[-1], worker_mib, start_up_s)
            larger = sizes[index + 1:]
            if not larger or not fits(larger[0], worker_mib, running=gpus)[0]:
                # The largest cluster that fits stands for the larger ones: shorter experiments
                # bring the results a second that they would.
                for length in sweep:
                    results.append(measure(simulated, length, args.rounds, args.islands))
                    print_row(results[-1], worker_mib, 0.0)
        finally:
            simulated.shutdown()
    cost_s = max(max(row["cpu_ms"], row["driver_ms"]) for row in results) / 1000
    print(f"driver cost per experiment, the highest measured: {1000 * cost_s:.1f} ms; one driver "
          f"kept at most half busy keeps about "
          f"{DRIVER_BUSY_AT_MOST * REAL_EXPERIMENT_S / cost_s:,.0f} GPUs busy with real "
          f"5-minute experiments")
    kept_up = [row for row in results if row["utilisation"] >= 0.97]
    if kept_up:
        fastest = max(kept_up, key=lambda row: row["per_s"])
        print(f"measured: {fastest['per_s']:.1f} results a second at utilisation "
              f"{fastest['utilisation']:.3f}, as many as real 5-minute experiments on "
              f"{fastest['per_s'] * REAL_EXPERIMENT_S:,.0f} GPUs bring")


if __name__ == "__main__":
    main()
