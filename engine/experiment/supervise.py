"""Run one command as a supervised process tree: a deadline, limits on its memory, its process
count and its output, and nothing left behind.

Runs as a process of its own (see `main` for the arguments), so that it can make itself the child
subreaper: every process the command starts, even one that double-forks into a new session, stays
its descendant and is killed when the command ends, its deadline passes or it breaks a limit.
Orphans that end are reaped at once, so a tree that starts and drops processes holds no pids as
zombies. The report (a JSON object) is written only once the whole tree is dead, so a candidate
can never write it.

Exit status: 0 when it ran the command and wrote the report; anything else is a failure of the
supervisor itself.
"""

import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
POLL_SECONDS = 0.1
# Measuring the tree reads /proc for every process of the machine; it runs every poll where that
# is cheap, and no more often than keeps its cost under this share of one core where it is not.
MEASURE_CPU_SHARE = 0.1


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}, {value}) failed")


def _die_with_supervisor() -> None:
    """In the command's process, before it starts: a supervisor killed from outside (the
    candidate runs as the same user and can kill it) takes the command down with it."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _sum(processes: list[psutil.Process], size: Callable[[psutil.Process], int]) -> int:
    total = 0
    for process in processes:
        try:
            total += size(process)
        except psutil.Error:  # it ended between the listing and the reading
            pass
    return total


def _proportional_size(process: psutil.Process) -> int:
    try:
        return process.memory_full_info().pss
    except psutil.AccessDenied:
        return process.memory_info().rss


def _measure(me: psutil.Process, memory_limit_bytes: int) -> tuple[int, int]:
    """How many processes the tree holds, and how much memory: the sum of their resident sizes,
    or, once that sum passes the limit, of their proportional sizes (a page shared by k processes
    counts 1/k in each, so forked workers sharing their parent's pages are not counted k times),
    which is exact but slower to read."""
    processes = me.children(recursive=True)
    memory = _sum(processes, lambda process: process.memory_info().rss)
    if memory_limit_bytes and memory > memory_limit_bytes:
        memory = _sum(processes, _proportional_size)
    return len(processes), memory


def _reap(leader: int) -> tuple[int, int] | None:
    """Reap every child that has ended (as subreaper, the tree's orphans are children too); the
    exit code and peak resident size of `leader` if it was among them."""
    ended = None
    while True:
        try:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return ended
        if pid == 0:
            return ended
        if pid == leader:
            ended = (os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)


def _kill_tree(me: psutil.Process, leader: int) -> int:
    """SIGKILL every descendant until none is left; return how many were killed."""
    _reap(leader)
    killed = {process.pid for process in me.children(recursive=True)}
    try:
        os.killpg(leader, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for _ in range(1000):  # a fork bomb grows between listings; each round shrinks it
        descendants = me.children(recursive=True)
        if not descendants:
            break
        for process in descendants:
            try:
                process.kill()
                killed.add(process.pid)
            except psutil.Error:
                pass
        _reap(leader)
        time.sleep(0.01)
    _reap(leader)
    return len(killed)


def supervise(command: list[str], *, deadline_s: float, memory_limit_gb: float,
              max_processes: int, max_log_bytes: int, log_path: str) -> dict:
    """Run `command` with its output in `log_path`; kill its whole tree at the deadline, over the
    memory limit (GB, 0 for none), over `max_processes` at once or over `max_log_bytes` of
    output (0 for none), and once the command itself has ended."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    me = psutil.Process()
    started = time.monotonic()
    # Kept open: the output's size is read from this file, whatever the candidate puts at its path.
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_die_with_supervisor,
        )
        outcome, exit_code, peak_memory = _watch(
            me, child.pid, log.fileno(), deadline_s=deadline_s,
            memory_limit=int(memory_limit_gb * 2**30), max_processes=max_processes,
            max_log_bytes=max_log_bytes)
    wall_s = time.monotonic() - started
    killed = _kill_tree(me, child.pid)
    left_behind = killed - (1 if exit_code is None else 0)
    return {
        "outcome": outcome,
        "exit_code": exit_code,
        "wall_s": wall_s,
        "peak_rss_gb": peak_memory / 2**30,
        "left_behind": max(left_behind, 0),
    }


def _watch(me: psutil.Process, leader: int, log: int, *, deadline_s: float, memory_limit: int,
           max_processes: int, max_log_bytes: int) -> tuple[str, int | None, int]:
    """Wait until the leader ends or the tree must be killed; return the outcome, the leader's
    exit code (None while it runs) and the tree's peak memory in bytes."""
    parent = os.getppid()
    started = time.monotonic()
    peak_memory, next_measure = 0, 0.0
    while True:
        ended = _reap(leader)
        if ended is not None:
            return "exited", ended[0], max(peak_memory, ended[1])
        elapsed = time.monotonic() - started
        if elapsed > deadline_s:
            return "timeout", None, peak_memory
        if os.getppid() != parent:  # the runner died (a cancelled Ray task): stop everything
            return "orphaned", None, peak_memory
        if max_log_bytes and os.fstat(log).st_size > max_log_bytes:
            return "log", None, peak_memory
        if elapsed >= next_measure:
            processes, memory = _measure(me, memory_limit)
            cost = time.monotonic() - started - elapsed
            next_measure = elapsed + max(POLL_SECONDS, cost / MEASURE_CPU_SHARE)
            peak_memory = max(peak_memory, memory)
            if processes > max_processes:
                return "processes", None, peak_memory
            if memory_limit and memory > memory_limit:
                return "memory", None, peak_memory
        time.sleep(POLL_SECONDS)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", required=True, help="where the JSON report goes")
    parser.add_argument("--log", required=True, help="where the command's output goes")
    parser.add_argument("--deadline", type=float, required=True, help="seconds")
    parser.add_argument("--memory-gb", type=float, default=0.0, help="0: no limit")
    parser.add_argument("--max-processes", type=int, default=1024)
    parser.add_argument("--max-log-bytes", type=int, default=0, help="0: no limit")
    parser.add_argument("command", nargs="+", help="after --")
    args = parser.parse_args(argv)
    report = supervise(args.command, deadline_s=args.deadline, memory_limit_gb=args.memory_gb,
                       max_processes=args.max_processes, max_log_bytes=args.max_log_bytes,
                       log_path=args.log)
    # The tree is dead: nobody else can touch the report now. Replace whatever sits there.
    if os.path.lexists(args.report):
        os.unlink(args.report)
    with open(args.report, "x") as out:
        json.dump(report, out)


if __name__ == "__main__":
    main(sys.argv[1:])
