"""Experiments as Ray tasks: one GPU each, files through the object store, results as they come.

Workers need neither git nor a shared filesystem: a task carries the commit's files and returns
the result as an Outcome. The GPU count is read from the cluster once a second, so a node that
joins mid-search is used without a restart; Ray places each task on whichever node has a GPU free,
and runs a task again elsewhere when its node leaves mid-experiment (`max_retries`).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import ray

from engine.experiment.records import ExperimentResult, Job, Outcome
from engine.experiment.runner import run_experiment, thread_env, threads_per_slot

REFRESH_S = 1.0  # how often the cluster's resources are read
NODE_ID_SHOWN = 8  # hex digits of the Ray node id in a result's `node`
# The node label Ray sets from the GPU model it detects (H100, A10G, L4, ...); a node without it
# trains on its CPUs, whatever logical GPUs it declares.
ACCELERATOR_LABEL = "ray.io/accelerator-type"
CPU = "cpu"


RunFunction = Callable[..., ExperimentResult]


def run_job(job: Job, run: RunFunction | None = None) -> Outcome:
    """Run one job where this process is (inside a Ray task, a thread of the in-process pool, or
    directly in a test). `run` replaces the job's own run function (a knob trial's reporter)."""
    run = run or job.run or run_experiment
    started = time.time()
    result = run(job.files, job.spec, job.seed, job.budget_s, grace_s=job.grace_s,
                 expected_fingerprint=job.expected_fingerprint, env=thread_env(job.threads))
    in_ray = ray.is_initialized()
    gpus = ray.get_gpu_ids() if in_ray else []
    # Ray nodes on one machine (and containers) can share a hostname; the node id tells them apart.
    node = socket.gethostname()
    if in_ray:
        node += "/" + ray.get_runtime_context().get_node_id()[:NODE_ID_SHOWN]
    return Outcome(result, started, time.time(), node, ",".join(str(g) for g in gpus),
                   accelerator_here())


def accelerator_here() -> str:
    """The GPU model of the node this process runs on, as Ray detected it; cpu where none."""
    if not ray.is_initialized():
        return CPU
    return ray.get_runtime_context().get_node_labels().get(ACCELERATOR_LABEL, CPU)


class RayPool:
    """The GPU pool of a Ray cluster (engine/search/pool.py's protocol): submits jobs as Ray tasks
    holding `gpus_per_experiment` GPUs (or one CPU slot where the cluster has never had a GPU)
    and hands back each outcome the moment it is ready."""

    def __init__(self, gpus_per_experiment: int) -> None:
        self.gpus_per_experiment = max(gpus_per_experiment, 1)
        self._running: dict[ray.ObjectRef, object] = {}
        # A worker never touches the GPU itself (training runs in a child process that exits),
        # so workers can be reused instead of Ray's default of one new process per GPU task.
        self._remote = ray.remote(max_calls=0)(run_job)
        self._options: dict[str, float] = {}
        self._refreshed_at = -REFRESH_S
        self._capacity = (0, 1)
        self._slots_of: dict[str, int] = {}  # GPU model -> experiments its nodes hold at once
        self._pinned: dict[ray.ObjectRef, str] = {}  # running jobs asked for on one model
        self._has_had_gpus = False
        self.refresh()

    def refresh(self) -> tuple[int, int]:
        """How many experiments the cluster can hold at once, and the CPU threads each may use,
        read from the cluster at most once a second: nodes that joined or left count."""
        if time.monotonic() - self._refreshed_at < REFRESH_S:
            return self._capacity
        self._refreshed_at = time.monotonic()
        resources = ray.cluster_resources()
        gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
        # A GPU cluster whose GPU nodes are all gone (spot reclaims) waits for GPUs to come back
        # rather than train on the CPUs that are left, which would score a different machine.
        self._has_had_gpus = self._has_had_gpus or gpus > 0
        if self._has_had_gpus:
            self._options = {"num_gpus": self.gpus_per_experiment, "num_cpus": 0}
            slots = gpus // self.gpus_per_experiment
        else:
            self._options = {"num_gpus": 0, "num_cpus": 1}
            slots = cpus
        self._capacity = (slots, threads_per_slot(cpus, slots))
        self._slots_of = {}
        for node in ray.nodes():
            model = node.get("Labels", {}).get(ACCELERATOR_LABEL)
            if node["Alive"] and model:
                self._slots_of[model] = self._slots_of.get(model, 0) + int(
                    node["Resources"].get("GPU", 0)) // self.gpus_per_experiment
        return self._capacity

    def can_start(self, accelerator: str) -> bool:
        """Whether a job for `accelerator` would start now rather than wait in Ray's queue while
        GPUs of other models idle: the nodes of that model have a slot its pinned jobs leave
        free. A job for no model, or for one the cluster no longer has, can always start."""
        slots = self._slots_of.get(accelerator)
        return slots is None or sum(m == accelerator for m in self._pinned.values()) < slots

    def submit(self, job: Job, tag: object, accelerator: str = "") -> None:
        """Start `job`; `tag` comes back with its outcome. A job for an `accelerator` type (a
        confirmation's runs, compared only within one type) runs on a node of that type while
        the cluster has one; on any node once none is left."""
        options = self._options
        if accelerator in self._slots_of:
            options = {**options, "label_selector": {ACCELERATOR_LABEL: accelerator}}
        ref = self._remote.options(**options).remote(job)
        self._running[ref] = tag
        if accelerator in self._slots_of:
            self._pinned[ref] = accelerator

    @property
    def running(self) -> list[object]:
        return list(self._running.values())

    def wait(self, timeout_s: float) -> list[tuple[object, Outcome | Exception]]:
        """Outcomes that are ready (waiting at most `timeout_s` for the first): the worker's
        Outcome, or the exception that ended the task."""
        if not self._running:
            time.sleep(timeout_s)
            return []
        pending = list(self._running)
        first, _ = ray.wait(pending, num_returns=1, timeout=timeout_s, fetch_local=True)
        if not first:
            return []
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=0, fetch_local=True)
        outcomes = []
        for ref in ready:
            tag = self._running.pop(ref)
            self._pinned.pop(ref, None)
            try:
                outcomes.append((tag, ray.get(ref)))
            except Exception as error:  # noqa: BLE001 - a lost worker or task must not end the search
                outcomes.append((tag, error))
        return outcomes

    def cancel_all(self) -> list[object]:
        """Stop every running task (killing its worker and the training tree) and return their
        tags."""
        tags = list(self._running.values())
        for ref in self._running:
            ray.cancel(ref, force=True)
        self._running.clear()
        self._pinned.clear()
        return tags
