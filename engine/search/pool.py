"""Where experiments run: the GPU pool the driver fills.

`GpuPool` is all the driver knows of it. Two implementations: `RayPool` (engine/search/ray_pool.py,
every experiment a Ray task holding a GPU of the cluster) and `InProcessPool` below (a fixed
number of slots served by threads of this process), which runs the real driver loop without Ray
in tests and under a simulator.
"""

from __future__ import annotations

import concurrent.futures
import time
from typing import Protocol

from engine.experiment.records import Job, Outcome
from engine.search.ray_pool import run_job


class GpuPool(Protocol):
    def refresh(self) -> tuple[int, int]:
        """How many experiments the pool holds at once now, and the CPU threads each may use."""
        ...

    def can_start(self, accelerator: str) -> bool:
        """Whether a job pinned to GPU model `accelerator` ("" for none) would start now."""
        ...

    def submit(self, job: Job, tag: object, accelerator: str = "") -> None:
        """Start `job`; `tag` comes back with its outcome."""
        ...

    @property
    def running(self) -> list[object]:
        """The tags of the jobs running now."""
        ...

    def wait(self, timeout_s: float) -> list[tuple[object, Outcome | Exception]]:
        """The outcomes ready now, waiting at most `timeout_s` for the first."""
        ...

    def cancel_all(self) -> list[object]:
        """Stop every running job; returns their tags."""
        ...


class InProcessPool:
    """`slots` GPUs of one model, each job in a thread of this process (run_job, as a Ray worker
    would). A job's outcome carries the pool's `accelerator` and node name."""

    def __init__(self, slots: int, accelerator: str = "cpu", threads: int = 1) -> None:
        self.slots, self.accelerator, self.threads = slots, accelerator, threads
        self._executor = concurrent.futures.ThreadPoolExecutor(slots, "in-process-gpu")
        self._running: dict[concurrent.futures.Future, object] = {}

    def refresh(self) -> tuple[int, int]:
        return self.slots, self.threads

    def can_start(self, accelerator: str) -> bool:
        return True

    def submit(self, job: Job, tag: object, accelerator: str = "") -> None:
        if len(self._running) >= self.slots:
            raise RuntimeError(f"all {self.slots} slots of the in-process pool are busy")
        self._running[self._executor.submit(self._run, job)] = tag

    def _run(self, job: Job) -> Outcome:
        outcome = run_job(job)
        outcome.node, outcome.accelerator = "in-process", self.accelerator
        return outcome

    @property
    def running(self) -> list[object]:
        return list(self._running.values())

    def wait(self, timeout_s: float) -> list[tuple[object, Outcome | Exception]]:
        if not self._running:
            time.sleep(timeout_s)
            return []
        done, _ = concurrent.futures.wait(self._running, timeout=timeout_s,
                                          return_when=concurrent.futures.FIRST_COMPLETED)
        outcomes = []
        for future in done:
            tag = self._running.pop(future)
            error = future.exception()
            outcomes.append((tag, error if error is not None else future.result()))
        return outcomes

    def cancel_all(self) -> list[object]:
        """Forget the running jobs (a thread cannot be killed: it ends on its own)."""
        tags = list(self._running.values())
        for future in self._running:
            future.cancel()
        self._running.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
        return tags
