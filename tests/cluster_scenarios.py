"""Searches of null experiments on a Ray cluster of several nodes on this machine, for
tests/test_cluster.py.

    python -m tests.cluster_scenarios RUN_ROOT

A cluster of several nodes (`ray.cluster_utils.Cluster`) cannot share a process with the test
session's local Ray, so the scenarios run here, one after another on one cluster: a head without
GPUs (the driver's node) and GPU nodes of 2 and 1 logical GPUs. It writes RUN_ROOT/report.json
(Ray prints on stdout): per scenario, the trained rows and what happened to the cluster meanwhile.
The two GPU nodes carry the label Ray gives a node with NVIDIA GPUs of one model: A10G and L4.

- spread: a search on the two GPU nodes;
- pinned: runs asked for on L4 (as a confirmation's runs are) all run there;
- joins: a node of 2 GPUs is added once the search has 6 results;
- leaves: that node is removed while experiments run on it, once it has finished one.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

import benchmarks.null_experiment
from agents import make_agents
from benchmarks.null_experiment import null_experiment
from engine.cluster import WORKERS_SOFT_LIMIT
from engine.driver import Search, SearchOptions
from engine.experiment.records import Job, Status
from engine.experiment.task import load_task, template_path
from engine.search.ray_pool import ACCELERATOR_LABEL, NODE_ID_SHOWN, RayPool

COLUMNS = ("exp_id", "status", "node", "started_at", "finished_at", "accelerator")


def node_name(node) -> str:
    """The node id as a result row's `node` column ends."""
    return node.node_id[:NODE_ID_SHOWN]


def search_on_cluster(run_dir: Path, budget_s: float, max_experiments: int,
                      on_tick=None) -> tuple[Search, list[dict]]:
    """A search of 2 islands with the offline proposer and null experiments (no knob tuning:
    these scenarios are about experiments); its trained rows."""
    options = SearchOptions(agents=2, budget_s=budget_s, max_experiments=max_experiments, seed=3,
                            tune_trials=0)
    search = Search(load_task(template_path()), run_dir, options, make_agents("offline", 2, 3),
                    run=null_experiment)
    search.run(on_tick=(lambda: on_tick(search)) if on_tick else None)
    return search, trained_rows(search)


def trained_rows(search: Search) -> list[dict]:
    return [{name: row[name] for name in COLUMNS} for row in search.store.rows()
            if Status(row["status"]).trained]


def spread(root: Path) -> dict:
    search, rows = search_on_cluster(root / "spread", budget_s=1.0, max_experiments=12)
    return {"rows": rows, "slots": search.state.slots}


def pinned() -> dict:
    """Six null experiments submitted for L4 at once, with a GPU free on the A10G node too."""
    task = load_task(template_path())
    dispatcher = RayPool(1)
    for k in range(6):
        job = Job(task.files, task.spec, k, 0.2, None, None, 1, null_experiment)
        dispatcher.submit(job, k, "L4")
    outcomes = []
    while len(outcomes) < 6:
        outcomes += dispatcher.wait(timeout_s=1.0)
    return {"runs": [{"node": outcome.node, "accelerator": outcome.accelerator}
                     for _, outcome in outcomes]}


def joins(root: Path, cluster: Cluster) -> tuple[dict, object]:
    event: dict = {}

    def add_node_after_six_results(search: Search) -> None:
        if "added_at" not in event and search.state.finished >= 6:
            # the same GPU model as a node already there: confirmations pinned to it may go there
            event["node"] = cluster.add_node(num_cpus=1, num_gpus=2,
                                             labels={ACCELERATOR_LABEL: "A10G"})
            event["added_at"] = time.time()

    search, rows = search_on_cluster(root / "joins", budget_s=1.0, max_experiments=24,
                                     on_tick=add_node_after_six_results)
    node = event.pop("node")
    return {**event, "rows": rows, "slots": search.state.slots, "node": node_name(node)}, node


def leaves(root: Path, cluster: Cluster, node) -> dict:
    event: dict = {}
    name, budget_s = node_name(node), 1.5

    def remove_node_mid_experiment(search: Search) -> None:
        """Once the node has finished an experiment, wait half an experiment (the driver gives
        it new ones at once), then remove it with every GPU of the cluster busy."""
        if "removed_at" in event:
            return
        if "due" not in event and search.state.finished != event.get("seen", 0):
            event["seen"] = search.state.finished
            if any(row["node"].endswith(name) for row in trained_rows(search)):
                event["due"] = time.time() + budget_s / 2
        running = search.pool.running
        if time.time() < event.get("due", float("inf")) or len(running) < search.state.slots:
            return
        event["finished_before"] = [row["exp_id"] for row in trained_rows(search)]
        event["in_flight"] = [experiment.exp_id for experiment in running]
        event["removed_at"] = time.time()
        cluster.remove_node(node)

    search, rows = search_on_cluster(root / "leaves", budget_s=budget_s, max_experiments=20,
                                     on_tick=remove_node_mid_experiment)
    return {"rows": rows, "slots": search.state.slots, "node": name,
            **{key: event[key] for key in ("finished_before", "in_flight", "removed_at")}}


def main(root: Path) -> None:
    cluster = Cluster(initialize_head=True, connect=True, head_node_args={
        "num_cpus": 0, "num_gpus": 0,
        "_system_config": {"num_workers_soft_limit": WORKERS_SOFT_LIMIT}})
    # Workers import the engine from the installed project; the null experiment travels by value.
    ray.cloudpickle.register_pickle_by_value(benchmarks.null_experiment)
    try:
        big = cluster.add_node(num_cpus=1, num_gpus=2, labels={ACCELERATOR_LABEL: "A10G"})
        small = cluster.add_node(num_cpus=1, num_gpus=1, labels={ACCELERATOR_LABEL: "L4"})
        report = {"head": node_name(cluster.head_node),
                  "gpu_nodes": {"2 GPUs": node_name(big), "1 GPU": node_name(small)},
                  "spread": spread(root), "pinned": pinned()}
        report["joins"], joined = joins(root, cluster)
        report["leaves"] = leaves(root, cluster, joined)
    finally:
        ray.shutdown()
        cluster.shutdown()
    (root / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
