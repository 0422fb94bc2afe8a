"""Connecting to Ray: an existing cluster, or one started on this machine."""

from __future__ import annotations

import ray


def start_ray(address: str | None, gpus: int | None) -> None:
    """Join the cluster at `address`, or start Ray here, declaring `gpus` logical GPUs if given
    (on a machine with none, a search then runs that many experiments at once)."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level="WARNING", log_to_driver=False)
    else:
        ray.init(num_gpus=gpus, logging_level="WARNING", log_to_driver=False,
                 include_dashboard=False)
