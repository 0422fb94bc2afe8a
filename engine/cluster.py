"""Connecting to Ray: an existing cluster, or one started on this machine."""

from __future__ import annotations

import ray

# Ray kills idle workers beyond a soft limit that defaults to the CPU count; experiments hold a
# GPU and no CPU, so on a node with more GPU slots than CPUs every finished experiment would cost
# a fresh worker process (about a second each, started two at a time). Measured on 64 logical
# GPUs over 2 cores: utilisation 0.66 with the default, 0.86 with this (benchmarks/utilization).
# Clusters started with `ray start` get the same through RAY_num_workers_soft_limit (cluster.yaml).
WORKERS_SOFT_LIMIT = 1024


def start_ray(address: str | None, gpus: int | None, cpus: int | None = None) -> None:
    """Join the cluster at `address`, or start Ray here, declaring `gpus` logical GPUs if given
    (on a machine with none, a search then runs that many experiments at once)."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    else:
        # "local": a new Ray here, even where RAY_ADDRESS or a running cluster would be joined.
        ray.init(address="local", num_gpus=gpus, num_cpus=cpus, logging_level="WARNING",
                 log_to_driver=False,
                 include_dashboard=False,
                 _system_config={"num_workers_soft_limit": WORKERS_SOFT_LIMIT})
