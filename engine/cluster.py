"""Connecting to Ray: an existing cluster, or one started on this machine.

Ray is imported inside the functions: the command line imports this module for its exception,
and importing Ray takes about a second.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# Ray kills idle workers beyond a soft limit that defaults to the CPU count; experiments hold a
# GPU and no CPU, so on a node with more GPU slots than CPUs every finished experiment would cost
# a fresh worker process (about a second each, started two at a time). Measured on 64 logical
# GPUs over 2 cores: utilisation 0.66 with the default, 0.86 with this (benchmarks/utilization).
# Clusters started with `ray start` get the same through RAY_num_workers_soft_limit (cluster.yaml).
WORKERS_SOFT_LIMIT = 1024


class ClusterUnavailable(Exception):
    """The Ray cluster asked for cannot be joined from here; the message says why, and what to
    do, in one sentence."""


def start_ray(address: str | None, gpus: int | None, cpus: int | None = None) -> None:
    """Join the cluster at `address`, or start Ray here, declaring `gpus` logical GPUs if given
    (on a machine with none, a search then runs that many experiments at once)."""
    import ray

    if ray.is_initialized():
        return
    if address:
        join_cluster(address)
    else:
        # "local": a new Ray here, even where RAY_ADDRESS or a running cluster would be joined.
        ray.init(address="local", num_gpus=gpus, num_cpus=cpus, logging_level="WARNING",
                 log_to_driver=False,
                 include_dashboard=False,
                 _system_config={"num_workers_soft_limit": WORKERS_SOFT_LIMIT})


def join_cluster(address: str) -> None:
    """Join the running cluster at `address` ("auto": the one started on this machine), or raise
    ClusterUnavailable when there is none, when it refuses this machine's token, or when it runs
    another version of Ray or Python."""
    import ray
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled,
    )
    from ray._private.services import canonicalize_bootstrap_address
    from ray._raylet import GcsClient

    try:
        gcs = canonicalize_bootstrap_address(address)
        # Before `ray.init`, with Ray's private API (the nodes' Ray is pinned by
        # scripts/setup_node.sh): a token that ought to be here and is not, found as `ray.init`
        # finds it (the GCS client aborts the process instead); then the cluster's GCS, once:
        # `ray.init` retries a refused token for about 20 s, printing a warning a second, and
        # waits without end at an address where nothing answers.
        ensure_token_if_auth_enabled(None, create_token_if_missing=False)
        GcsClient(address=gcs)
        ray.init(address=gcs, logging_level="WARNING", log_to_driver=False)
    except Exception as error:
        reason = _why_not(error, address)
        if reason is None:
            raise
        raise ClusterUnavailable(reason) from error


def _why_not(error: Exception, address: str) -> str | None:
    """One sentence for the ways joining a cluster fails that a user can fix; None for others."""
    from ray.exceptions import AuthenticationError, RpcError

    where = "on this machine" if address == "auto" else f"at {address}"
    causes = [error]
    while (cause := causes[-1].__cause__ or causes[-1].__context__) and cause not in causes:
        causes.append(cause)
    for cause in causes:
        if isinstance(cause, AuthenticationError):
            return _token_problem(where)
        if isinstance(cause, RuntimeError) and str(cause).startswith("Version mismatch"):
            return _version_problem(str(cause), where)
    if isinstance(error, ConnectionError) and "Could not find any running Ray" in str(error):
        return ("no Ray cluster is running on this machine (--address auto): start one "
                "(`ray up CONFIG`, or `ray start --head`) or run the command on its head node, "
                "or leave out --address to start Ray here")
    if isinstance(error, RpcError) and "Timed out" in str(error):
        return (f"no Ray cluster answered at {address}: check the address (the head's "
                "`ray start` printed it) and that this machine can reach the head")
    return None


def _token_problem(where: str) -> str:
    """Why the cluster refused this machine, as Ray's token authentication sees it."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() != "token":
        return (f"the Ray cluster {where} asks for a token and this shell sends none: "
                "export RAY_AUTH_MODE=token (the token itself is read from ~/.ray/auth_token, "
                "RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)")
    source = _token_source()
    if source is None:
        return (f"the Ray cluster {where} asks for a token and there is none here: put the "
                "cluster's token in ~/.ray/auth_token (`ray up` copies it to every node) or in "
                "RAY_AUTH_TOKEN")
    return (f"the Ray cluster {where} refused the token in {source}: it is not the cluster's; "
            "use the one `ray up` copied to every node (~/.ray/auth_token)")


def _token_source() -> str | None:
    """Where Ray takes this machine's token from, in Ray's order; None when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return str(path) if path.read_text().strip() else None
    except OSError:
        return None


def _version_problem(message: str, where: str) -> str:
    """Ray's version mismatch (the cluster's versions, then this process's) in one sentence."""
    versions = re.findall(r"Ray: (\S+)\s+Python: (\S+)", message)
    if len(versions) != 2:
        return f"the Ray cluster {where} runs another version of Ray or Python than this machine"
    (ray_there, python_there), (ray_here, python_here) = versions
    return (f"the Ray cluster {where} runs Ray {ray_there} on Python {python_there}, and this "
            f"machine Ray {ray_here} on Python {python_here}: run autoresearch on the head "
            "(`ray exec CONFIG 'autoresearch ...'`), or install the cluster's versions here")
