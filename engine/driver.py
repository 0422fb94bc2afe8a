"""The search: a population of agents, each working an island, every edit a commit, every commit
an experiment on its own GPU, winners promoted into the shared baseline.

The life of one experiment, as `Search.run` drives it, one step per method of its loop:
1. `_propose`: an agent proposes a change to its island's parent (in a thread, ahead of need, so
   no GPU waits for a proposer; engine/search/proposers.py);
2. `_admit`: the evolution core checks it (editable files only, compiles, changes the code, not a
   duplicate); the recorder commits it on the island's branch and journals it, or the ledger
   records it as `rejected` and the agent is told why;
3. `_start`: the core hands out the next queued experiment for each free GPU of the pool (Ray
   tasks on the cluster, engine/search/ray_pool.py);
4. `_finish`: the ledger (engine/search/ledger.py) appends its result to the results store,
   durably, before anything acts on it;
5. then the core decides (engine/search/evolution.py, population.py): keep, discard, confirm a
   candidate on fresh seeds beside control runs of the baseline made at the same time, promote
   it into the baseline when it beats them beyond the noise, reseed a lagging island; the
   ledger has the recorder write what it decided, and the branches follow. A promoted winner's
   knobs are then tuned (`_tune`, engine/tuning/refiner.py), its trials finished the same way.

`Search.resume` replays the stored results through the same core, then queues again what never
finished (engine/search/replay.py).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path

from engine.experiment.records import Experiment, Job, Outcome
from engine.experiment.task import Task
from engine.protocol import Agent
from engine.rundir.layout import RunDir, RunDirUnwritable
from engine.rundir.recorder import Recorder
from engine.rundir.repo import GitError
from engine.search.evolution import Evolution
from engine.search.ledger import Ledger
from engine.search.limits import Limits, Stop
from engine.search.members import Member
from engine.search.options import SearchOptions
from engine.search.pool import GpuPool
from engine.search.proposers import Proposers
from engine.search.ray_pool import RayPool, RunFunction
from engine.search.replay import resume
from engine.tuning.refiner import Refiner
from engine.views.summary import Summary

log = logging.getLogger("autoresearch")

class Search:
    """One search run. `Search(...)` starts a new one; `Search.resume(...)` reopens a stopped one.
    `pool` makes the GPU pool when the search runs (default: the Ray cluster's), `proposers` the
    agents' callers (default: a thread per island), `clock` tells the time; the search simulator
    (benchmarks/simulate.py) gives its own, on a simulated clock."""

    def __init__(self, task: Task, run_dir: Path, options: SearchOptions, agents: list[Agent],
                 run: RunFunction | None = None, *, pool: Callable[[], GpuPool] | None = None,
                 recorder: type[Recorder] = Recorder, start: str | None = None,
                 proposers: Callable[..., Proposers] = Proposers,
                 clock: Callable[[], float] = time.time) -> None:
        self.task, self.options, self.agents, self._run_function = task, options, agents, run
        self.clock, self._make_proposers = clock, proposers
        self.spec = task.spec if options.memory_limit_gb is None else dataclasses.replace(
            task.spec, memory_limit_gb=options.memory_limit_gb)
        self.run_dir = RunDir(run_dir)
        self.run_dir.create()
        self.run_name = self.run_dir.name
        self.budget_s = options.budget_s or self.spec.time_budget_s
        self.state = Summary(started_at=clock(), holdout_key=self.spec.holdout)
        repo, start = self.run_dir.open_repo(task.path, task.files, start)
        self.recorder = recorder(self.run_dir, repo, self.spec)
        self.core = Evolution(self.spec, Member(start, dict(task.files), []), options,
                              self.run_name, self.recorder.merge, self.recorder.commit)
        self.ledger = Ledger(self.core, self.recorder, self.state, self.run_name, self.budget_s,
                             self._checkpoint)
        self.limits = Limits(options)
        self.refiner = Refiner(self.run_dir, self.spec, options, self.budget_s, run)
        self._make_pool = pool or functools.partial(RayPool, self.spec.gpus_per_experiment)
        self.pool: GpuPool | None = None
        self.ended: str | None = None  # why the search stopped, once it has
        self._draining = False  # a limit was reached: start nothing new
        self._proposers: Proposers | None = None
        if not self.run_dir.holds_run:
            self.recorder.start(task.path, options, start, self.state.started_at, self.budget_s)
            self.recorder.journal(self.core.noise_runs())

    resume = classmethod(resume)  # engine/search/replay.py

    # What a caller (the CLI, the live view, tests) reads of the search.
    population = property(lambda self: self.core.population)
    descriptions = property(lambda self: self.core.descriptions)
    store = property(lambda self: self.recorder.store)  # engine/rundir/store.py
    repo = property(lambda self: self.recorder.repo)  # engine/rundir/repo.py
    problems = property(lambda self: self.recorder.problems)  # what a resume repaired

    # -- the loop ------------------------------------------------------------------------------

    def run(self, on_tick: Callable[[], None] | None = None) -> Summary:
        """Search until a stop condition; Ctrl-C stops cleanly. `on_tick` is called on every turn
        of the loop (the live view redraws from it). Returns the final state. Raises
        RunDirUnwritable, after stopping cleanly, when the run dir can no longer be written."""
        self.pool = self._make_pool()
        self._proposers = self._make_proposers(self.agents, self.options.seed, self.clock)
        self.state.started_at = self.state.ticked_at = self.clock()
        failure: Exception | None = None
        try:
            while not self._finished():
                turn_from, before = time.monotonic(), self._progress()
                slots, threads = self.pool.refresh()
                self._tune(slots, threads)
                free = slots - self.refiner.slots_wanted
                self._propose(free, slots)
                self._admit()
                self._start(free, threads)
                wait_from = time.monotonic()
                outcomes = self.pool.wait(timeout_s=0.05)
                waited_s = time.monotonic() - wait_from
                self._finish(outcomes)
                self.state.tick(slots, self.clock(), time.monotonic() - turn_from - waited_s,
                                self._progress() != before)
                if on_tick:
                    on_tick()
        except KeyboardInterrupt:
            log.warning("interrupted: recording the experiments in flight as interrupted")
        except (OSError, GitError) as error:
            failure = error
            log.error("the run dir cannot be written (%s): stopping", error)
        finally:
            self._stop(writable=failure is None)
        if failure is not None:
            raise RunDirUnwritable.after(failure, self.run_dir) from failure
        return self.state

    def _finished(self) -> bool:
        """Stop starting work at a limit; end once nothing is in flight (at once for some)."""
        stop = self._limit()
        if stop is not None:
            self.ended = self.ended or stop.reason
            if stop.at_once:
                log.info("stopping: %s", stop.reason)
                return True
            self._draining = True
        return self._draining and not self.pool.running and self.refiner.refinement is None

    def _limit(self) -> Stop | None:
        proposing = bool(self.core.queue) or bool(self._proposers and self._proposers.in_flight)
        idle = not proposing and not self.pool.running and self.refiner.refinement is None
        return self.limits.reached(self.core, self.state.spent_usd,
                                   self.clock() - self.state.started_at, proposing,
                                   exhausted=idle and self._proposers.exhausted)

    def nothing_left(self) -> str | None:
        """Why this (resumed) search has nothing left to do under its options, or None."""
        stop = self.limits.reached(self.core, self.state.spent_usd)
        return stop.advice if stop else None

    def _progress(self) -> tuple[int, int, int]:
        return (len(self.core.queue) + self._proposers.in_flight, self.core.submitted,
                self.state.finished)

    # -- 1 and 2: proposals ----------------------------------------------------------------------

    def _propose(self, free: int, slots: int) -> None:
        if not self._draining and self.limits.may_propose(self.state.spent_usd):
            wanted = free - len(self.pool.running) + self.options.proposals_ahead(slots)
            self._proposers.ask(wanted, self.core)

    def _admit(self) -> None:
        for done in self._proposers.finished():
            experiment = self.ledger.admit(done)  # a refusal is recorded there
            if experiment is not None:
                self.recorder.commit(experiment, done.parent.files)
                self.recorder.journal(self.core.enqueue(experiment))

    # -- 3: dispatch ---------------------------------------------------------------------------

    def _start(self, free: int, threads: int) -> None:
        """Start queued experiments on free GPUs, in queue order."""
        while not self._draining and len(self.pool.running) < free and self._limit() is None:
            experiment = self.core.ask(self.pool.can_start)
            if experiment is None:
                break
            experiment.started_at = self.clock()
            self.pool.submit(Job(experiment.files, self.spec, experiment.seed, self.budget_s,
                                 self.options.grace_s, self.core.fingerprint, threads,
                                 self._run_function), experiment, experiment.accelerator)
        self.state.running = self.pool.running

    def _tune(self, slots: int, threads: int) -> None:
        for trial in self.refiner.tend(self.core, slots, threads, self._draining):
            self.ledger.finish_trial(trial)

    # -- 4 and 5: results ----------------------------------------------------------------------

    def _finish(self, outcomes: list[tuple[Experiment, Outcome | Exception | None]]) -> None:
        for experiment, outcome in outcomes:
            self.ledger.finish(experiment, outcome)

    # -- the stop ------------------------------------------------------------------------------

    def _stop(self, writable: bool = True) -> None:
        """Record what was in flight as interrupted (unfinished tuning trials rerun on resume),
        and write everything (what still can be written, when the run dir failed)."""
        late = self._proposers.close()
        trials = self.refiner.stop(self.core)
        in_flight = self.pool.cancel_all()
        self.state.running = []
        if writable:
            self.ledger.interrupted(in_flight, late, trials)
            self.ledger.write_derived(now=True)
        self.recorder.close()

    def _checkpoint(self) -> dict:
        refinement = self.refiner.refinement
        return {"run": self.run_name, "ended": self.ended,
                "tuning": refinement.name if refinement else None,
                **self.core.to_dict(), **self.state.to_dict()}
