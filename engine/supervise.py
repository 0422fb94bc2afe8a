"""Run one command as a supervised process tree: a deadline, a memory cap, nothing left behind.

Runs as a process of its own (`python supervise.py REPORT DEADLINE MEMORY_GB LOG -- CMD...`), so
that it can make itself the child subreaper: every process the command starts, even one that
double-forks into a new session, stays its descendant and is killed when the command ends or its
deadline passes. The report (a JSON object) is written only once the whole tree is dead, so a
candidate can never write it.

Exit status: 0 when it ran the command and wrote the report; anything else is a failure of the
supervisor itself.
"""

import ctypes
import json
import os
import signal
import subprocess
import sys
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36
POLL_SECONDS = 0.1
MEMORY_SAMPLE_SECONDS = 0.5


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _tree_rss_bytes(me: psutil.Process) -> int:
    total = 0
    for process in me.children(recursive=True):
        try:
            total += process.memory_info().rss
        except psutil.Error:  # it ended between the listing and the reading
            pass
    return total


def _kill_tree(me: psutil.Process, leader: int) -> int:
    """SIGKILL every descendant until none is left; return how many were killed."""
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
        _reap()
        time.sleep(0.01)
    _reap()
    return len(killed)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def supervise(command: list[str], deadline_s: float, memory_limit_gb: float, log_path: str) -> dict:
    """Run `command`, kill its whole tree at the deadline or over the memory limit."""
    _become_subreaper()
    me = psutil.Process()
    parent = os.getppid()
    started = time.monotonic()
    with open(log_path, "ab") as log:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    exit_code, outcome, peak_rss, next_sample = None, "exited", 0, 0.0
    while exit_code is None:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            exit_code = os.waitstatus_to_exitcode(status)
            peak_rss = max(peak_rss, usage.ru_maxrss * 1024)
            break
        elapsed = time.monotonic() - started
        if elapsed > deadline_s:
            outcome = "timeout"
            break
        if os.getppid() != parent:  # the runner died (a cancelled Ray task): stop everything
            outcome = "orphaned"
            break
        if elapsed >= next_sample:
            peak_rss = max(peak_rss, _tree_rss_bytes(me))
            next_sample = elapsed + MEMORY_SAMPLE_SECONDS
            if memory_limit_gb > 0 and peak_rss > memory_limit_gb * 2**30:
                outcome = "memory"
                break
        time.sleep(POLL_SECONDS)
    wall_s = time.monotonic() - started
    killed = _kill_tree(me, child.pid)
    left_behind = killed - (1 if exit_code is None else 0)
    return {
        "outcome": outcome,
        "exit_code": exit_code,
        "wall_s": wall_s,
        "peak_rss_gb": peak_rss / 2**30,
        "left_behind": max(left_behind, 0),
    }


def main(argv: list[str]) -> None:
    report_path, deadline, memory, log_path, separator, *command = argv
    if separator != "--" or not command:
        sys.exit(__doc__)
    report = supervise(command, float(deadline), float(memory), log_path)
    # The tree is dead: nobody else can touch the report now. Replace whatever sits there.
    if os.path.lexists(report_path):
        os.unlink(report_path)
    with open(report_path, "x") as out:
        json.dump(report, out)


if __name__ == "__main__":
    main(sys.argv[1:])
