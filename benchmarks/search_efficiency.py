"""The engine against the original's sequential greedy loop, on the bundled task.

Both use the same proposer (the offline agent, same seed), the same training budget and the same
total number of trained experiments. The sequential loop is the original autoresearch's: one
worker, propose on the current best, keep the child if it scores better, else discard. The
engine runs `--workers` experiments at once with its islands, noise measurement and confirmed
promotions; its noise, confirmation and control runs count as experiments too.

Printed: each side's wall time and final best, and for the engine the wall time and the number of
experiments it needed to reach the sequential loop's final best, with the ratios.

Every experiment trains with one CPU thread on either side, so that parallel experiments get the
same compute as a sequential one; keep --workers at or below the number of cores on a CPU machine
(on a GPU machine each experiment has its own GPU).

    .venv/bin/python -m benchmarks.search_efficiency [--workers 2] [--experiments 16] [--budget 10]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import ray

from agents.offline import OfflineAgent
from engine.cluster import start_ray
from engine.driver import Search, SearchOptions
from engine.experiment.runner import run_experiment
from engine.experiment.task import Task, load_task, template_path
from engine.protocol import Attempt, ProposalContext

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def sequential_greedy(task: Task, experiments: int, budget: float, seed: int) -> list[tuple]:
    """The original loop. Returns (seconds since start, objective or None) per experiment."""
    spec, agent = task.spec, OfflineAgent(seed=seed)
    started = time.monotonic()
    first = run_experiment(task.files, spec, seed, budget, env=ONE_THREAD)
    timeline = [(time.monotonic() - started, first.objective)]
    best_files, best, history = task.files, first.objective, []
    while len(timeline) < experiments:
        proposal = agent.propose(ProposalContext(
            island=0, goal=spec.text, files=best_files, editable=spec.editable_files,
            objective=spec.objective.metric, direction=spec.objective.direction,
            parent_objective=best, baseline_objective=best, history=tuple(history)))
        files = {**best_files, **proposal.files}
        result = run_experiment(files, spec, seed, budget, env=ONE_THREAD)
        timeline.append((time.monotonic() - started, result.objective))
        history.append(Attempt(proposal.description, result.status, result.objective, best))
        if result.objective is not None and spec.objective.is_better(result.objective, best):
            best_files, best = files, result.objective
    return timeline


def engine_search(task: Task, experiments: int, budget: float, seed: int,
                  workers: int) -> tuple[list[tuple], Counter, int]:
    """The engine with `workers` logical GPUs. Returns (seconds, objective or None) in finishing
    order, the experiments by kind, and the number of promotions. Objectives of confirmation and
    noise runs are left out of the best-so-far: they re-run code, they are not new ideas."""
    start_ray(None, workers)
    try:
        with tempfile.TemporaryDirectory() as folder:
            options = SearchOptions(agents=workers, budget_s=budget, max_experiments=experiments,
                                    seed=seed)
            search = Search(task, Path(folder) / "run", options,
                            [OfflineAgent(seed=seed + k) for k in range(workers)])
            started = time.time()
            search.run()
            rows = search.store.rows()
            promotions = len(search.population.promotions)
    finally:
        ray.shutdown()
    finished = sorted((r for r in rows if r["finished_at"]), key=lambda r: r["finished_at"])
    timeline = [(r["finished_at"] - started,
                 r["objective"] if r["status"] == "ok" and r["kind"] == "mutation" else None)
                for r in finished]
    return timeline, Counter(r["kind"] for r in finished), promotions


def best_so_far(timeline: list[tuple]) -> list[float]:
    best, out = float("inf"), []
    for _, objective in timeline:
        if objective is not None:
            best = min(best, objective)
        out.append(best)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--experiments", type=int, default=16)
    parser.add_argument("--budget", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    task = load_task(template_path())
    sequential = sequential_greedy(task, args.experiments, args.budget, args.seed)
    parallel, kinds, promotions = engine_search(task, args.experiments, args.budget, args.seed,
                                                args.workers)
    target = best_so_far(sequential)[-1]
    reached = next((i for i, best in enumerate(best_so_far(parallel)) if best <= target), None)
    seq_wall, par_wall = sequential[-1][0], parallel[-1][0]
    print(f"{args.experiments} experiments of {args.budget:g} s each, offline proposer, "
          f"seed {args.seed}; engine with {args.workers} workers")
    print(f"sequential greedy loop: {seq_wall:7.1f} s, final best {target:.4f}")
    print(f"engine:                 {par_wall:7.1f} s, final best {best_so_far(parallel)[-1]:.4f}")
    print(f"engine experiments: {kinds['mutation']} new ideas, {kinds['baseline']} noise runs, "
          f"{kinds['confirm']} confirmation runs, {kinds['control']} control runs; "
          f"{promotions} promotions")
    print(f"wall-time ratio (sequential / engine, whole runs): {seq_wall / par_wall:.2f}")
    if reached is None:
        print("the engine did not reach the sequential loop's final best")
        return
    print(f"engine reached the sequential best after {reached + 1} experiments and "
          f"{parallel[reached][0]:.1f} s")
    print(f"experiments ratio (sequential / engine, to that best): "
          f"{args.experiments / (reached + 1):.2f}")
    print(f"wall-time ratio (sequential / engine, to that best): "
          f"{seq_wall / parallel[reached][0]:.2f}")


if __name__ == "__main__":
    main()
