"""The search: a population of agents, each working an island, every edit a commit, every commit
an experiment on its own GPU, winners promoted into the shared baseline.

The life of one experiment, as `Search.run` drives it:
1. an agent proposes a change to its island's parent (in a thread, ahead of need, so no GPU
   waits for a proposer);
2. the engine checks it (editable files only, compiles, not a duplicate) and commits it on the
   island's branch, or records it as `rejected` and tells the agent why;
3. it runs as a Ray task holding one GPU (engine/dispatch.py, engine/runner.py);
4. its result is appended to the results store, durably, before anything acts on it;
5. the population decides (engine/population.py): keep, discard, confirm a candidate on fresh
   seeds beside control runs of the baseline made at the same time, promote it into the baseline
   when it beats them beyond the noise, reseed a lagging island; the branches follow.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agents.base import Agent, Attempt, ProposalContext
from engine.branches import Branches
from engine.checks import Refused, apply_proposal, changes_only_randomness, code_hash
from engine.dispatch import Dispatcher, Job, RunFunction
from engine.journal import Journal
from engine.knobs import describe_tuning
from engine.population import CPU, Decision, Member, Population
from engine.repo import GitError, RunRepo
from engine.rundir import (
    NOT_TRAINED,
    RunDirUnwritable,
    read_checkpoint,
    read_run_info,
    result_row,
    write_checkpoint,
    write_run_info,
)
from engine.runner import run_experiment
from engine.store import ResultStore
from engine.task import Task
from engine.trial import TrialOutcome
from engine.tuning import Refinement

log = logging.getLogger("autoresearch")

RANDOMNESS_ONLY = ("its only effect is on randomness (a seed, a random draw): it can only win by "
                   "luck, and is confirmed on fresh seeds like any change")
STANDARD_METRICS = ("params", "peak_memory_gb", "steps", "final_train_loss", "loss_spikes")
AGENT_RETRY_S = (1, 2, 5, 10, 30, 60)  # back-off after consecutive proposer failures
# Files derived from the results are rewritten on a timer, not per result: the rows themselves
# are durable one by one in the store, and these would cost O(run) per experiment.
CHECKPOINT_EVERY_S = 1.0
TSV_EVERY_S = 10.0
LEADERBOARD_SHOWN = 8  # kept changes of all islands an agent sees
PROMOTIONS_SHOWN = 5
TUNING_DONE = "done"  # marks a finished refinement in its folder: no code is tuned twice
TUNING_STOP_S = 15.0  # what a stop waits for the trials in flight to end
PACK_EVERY = 2000  # experiments between two packings of the run's git objects


@dataclass
class SearchOptions:
    """What the user asked of this search (the CLI's flags)."""

    agents: int = 4
    budget_s: float | None = None  # None: the goal file's training time
    grace_s: float | None = None  # None: engine.runner.default_grace_s
    max_experiments: int | None = None
    hours: float | None = None
    target: float | None = None
    seed: int = 0
    noise_seeds: int = 3
    confirm_seeds: int = 3  # fresh-seed runs of a candidate, each beside a control run
    surplus: int = 2  # proposals kept ready beyond the free GPUs
    max_cost: float | None = None  # dollars the agents may spend; then they stop proposing
    memory_limit_gb: float | None = None  # per experiment; None: the goal file's, if any
    tune_trials: int = 12  # Optuna trials per refinement of a winner's knobs; 0: no tuning
    tune_every: int | None = None  # also refine the baseline after this many results
    tune_share: float = 0.25  # of the GPUs, at most, for tuning trials (never all of them)
    # The proposers, recorded so that a resume rebuilds the same ones (agents/__init__.py).
    agent: str = "offline"
    models: tuple[str, ...] = ()
    context_tokens: int | None = None


@dataclass
class Experiment:
    """One commit queued or running on one seed."""

    exp_id: str
    # "baseline" (a noise run of the start), "mutation", "tune", "confirm" (a fresh-seed run of a
    # candidate) or "control" (a run of the baseline beside a candidate's confirmation)
    kind: str
    island: int | None
    commit: str
    parent: str  # the parent's commit ("" for the starting code's noise runs)
    files: dict[str, str]
    description: str
    seed: int
    agent: str
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    seed_only: bool = False  # its only effect is on randomness (engine/checks.py)
    cost_usd: float = 0.0
    tokens: int = 0
    code: str = ""  # the hash of its editable files (mutations): duplicates stay refused
    confirms: str = ""  # confirm and control runs: the commit of the candidate they serve
    accelerator: str = ""  # confirm and control runs: the GPU model they must run on

    def journal_entry(self) -> dict:
        """What the journal keeps of it: everything but the files, which its commit holds."""
        return {name: value for name, value in asdict(self).items()
                if name not in ("files", "started_at")}


@dataclass
class SearchState:
    """A snapshot for the live view and `status`."""

    started_at: float
    slots: int = 0
    finished: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    by_kind: dict[str, int] = field(default_factory=dict)  # experiments that trained, by kind
    busy_s: float = 0.0  # GPU-seconds spent in experiments
    capacity_s: float = 0.0  # GPU-seconds the cluster offered
    driver_s: float = 0.0  # the driver's own work, waits excluded
    spent_usd: float = 0.0  # what the agents' proposals cost
    finished_before: int = 0  # experiments finished before this process resumed the run
    running: list[Experiment] = field(default_factory=list)

    @property
    def utilisation(self) -> float:
        return self.busy_s / self.capacity_s if self.capacity_s else 0.0

    @property
    def confirmation_share(self) -> float:
        """The share of trained experiments that were confirmation or control runs."""
        spent = self.by_kind.get("confirm", 0) + self.by_kind.get("control", 0)
        return spent / self.finished if self.finished else 0.0


class Search:
    """One search run: owns the population, the store, the journal and the run's git repository.

    `Search(...)` starts a new run; `Search.resume(...)` reopens a stopped one."""

    def __init__(self, task: Task, run_dir: Path, options: SearchOptions,
                 agents: list[Agent], run: RunFunction = run_experiment) -> None:
        self._open(task, run_dir, options, agents, run)
        self.repo, start = RunRepo.create(
            self.run_dir / "repo.git", task.files, f"start: {task.path.name}",
            history_from=task.path)
        self.branches = Branches(self.repo, self.run_name, self.spec.objective.metric)
        self._begin_population(start)
        self.branches.start(options.agents, start)
        self._write_run_info(start)
        for k in range(options.noise_seeds):
            self._enqueue(Experiment(
                self._new_id(), "baseline", None, start, "", task.files,
                f"baseline (noise run {k + 1} of {options.noise_seeds})", options.seed + k,
                "engine"))

    @classmethod
    def resume(cls, task: Task, run_dir: Path, options: SearchOptions, agents: list[Agent],
               run: RunFunction = run_experiment, *, write: bool = True) -> Search:
        """Reopen the stopped search in `run_dir`: replay its results, in the order they arrived,
        into a fresh population (the same rules give the same islands, heads, baseline and
        noise), move the branches and add the notes the results call for, and queue again every
        journaled experiment that has no result. With `write=False` nothing is changed on disk:
        `problems` then lists what a resume would have to repair (`status --verify`)."""
        search = cls.__new__(cls)
        search._open(task, run_dir, options, agents, run)
        search.repo = RunRepo(search.run_dir / "repo.git")
        search.branches = Branches(search.repo, search.run_name, search.spec.objective.metric)
        info = read_run_info(search.run_dir)
        search._begin_population(info["start_commit"])
        search._replay(write)
        return search

    def _open(self, task: Task, run_dir: Path, options: SearchOptions, agents: list[Agent],
              run: RunFunction) -> None:
        self.task, self.options = task, options
        self.spec = task.spec if options.memory_limit_gb is None else dataclasses.replace(
            task.spec, memory_limit_gb=options.memory_limit_gb)
        self.run_dir = Path(run_dir)
        self.run_name = self.run_dir.name
        self.budget_s = options.budget_s or self.spec.time_budget_s
        self.agents = agents
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = ResultStore(self.run_dir / "results", self._metric_columns())
        self.journal = Journal(self.run_dir)
        self.state = SearchState(started_at=time.time())
        self.dispatcher: Dispatcher | None = None  # made when the search runs: it needs Ray
        self._run_function = run
        self.problems: list[str] = []  # inconsistencies found (and repaired) on resume
        self.ended: str | None = None  # why the search stopped, once it has
        self._queue: deque[Experiment] = deque()  # committed and journaled, waiting for a GPU
        self._proposing: dict[int, Future] = {}  # island -> its agent's call in flight
        self._agent_failures: dict[int, int] = {}
        self._agent_resume_at: dict[int, float] = {}
        self._deferred: list[tuple[Experiment, dict]] = []  # judged once the noise is known
        self._refinement: Refinement | None = None  # the knob tuning running now, if any
        self._tuning: tuple[Member, int] | None = None  # the member it tunes, and its island
        self._tune_wanted: tuple[Member, int] | None = None  # the next member to tune
        self._trials_recorded: set[str] = set()  # Tune trial ids with a row
        self._best_trial: dict[str, float] = {}  # tuned commit -> best trial score so far
        # One trial of a tuning is confirmed at a time (6 runs each): a better one that comes
        # meanwhile waits, and is judged once that confirmation has ended.
        self._trial_confirming: dict[str, str] = {}  # trial commit -> the commit it tunes
        self._trial_waiting: dict[str, tuple[Experiment, dict]] = {}  # tuned commit -> trial
        self._since_tuning = 0  # results since the last refinement started (--tune-every)
        self._baseline_island = 0  # the island the baseline came from
        self._noise_outstanding = options.noise_seeds
        self._scores: dict[str, list[float]] = {}  # commit -> its scores, for parents let go
        self._submitted = 0
        self._draining = False  # a limit was reached: start nothing new
        self._replaying = False  # results come from the store, not from Ray (resume)
        self._writing = True  # replaying may repair the branches (False: only verify)
        self._checkpointed_at = self._exported_at = 0.0
        self._next_id = 0
        self._fingerprint: str | None = None
        self._rng = random.Random(options.seed)
        self.descriptions: dict[str, str] = {}  # exp id -> description, for the live view
        self._pool = ThreadPoolExecutor(max_workers=max(options.agents, 1),
                                        thread_name_prefix="agent")
        self._packing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="git-pack")

    def _begin_population(self, start: str) -> None:
        self.population = Population(
            self.spec.objective, Member(start, dict(self.task.files), []), self.options.agents,
            confirm_seeds=self.options.confirm_seeds, seed=self.options.seed)
        self._seen_code = {code_hash(self.task.files, self.spec.editable_files)}

    # -- the loop ------------------------------------------------------------------------------

    def run(self, on_tick: Callable[[], None] | None = None) -> SearchState:
        """Search until a stop condition; Ctrl-C stops cleanly. `on_tick` is called on every turn
        of the loop (the live view redraws from it). Returns the final state. Raises
        RunDirUnwritable, after stopping cleanly, when the run dir can no longer be written."""
        self.dispatcher = Dispatcher(self.spec.gpus_per_experiment, self._run_function)
        self.state.started_at = time.time()
        last_tick = time.monotonic()
        failure: Exception | None = None
        try:
            while not self._finished():
                busy_from, before = time.monotonic(), self._progress()
                slots, threads = self.dispatcher.refresh()
                self.state.slots = slots
                self._tend_tuning(slots, threads)
                free = slots - (self._refinement.slots_wanted if self._refinement else 0)
                self._ask_agents(free)
                self._take_proposals()
                self._submit(free, threads)
                driver_s = time.monotonic() - busy_from
                outcomes = self.dispatcher.wait(timeout_s=0.05)
                busy_from = time.monotonic()
                for experiment, outcome in outcomes:
                    self._handle(experiment, outcome)
                now = time.monotonic()
                self.state.capacity_s += slots * (now - last_tick)
                last_tick = now
                if self._progress() != before:  # turns that only polled are not driver work
                    self.state.driver_s += driver_s + now - busy_from
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
            raise RunDirUnwritable(
                f"the run dir {self.run_dir} cannot be written ({failure}); the search stopped "
                f"and what was already written is intact: make room, then `autoresearch resume "
                f"{self.run_dir}`") from failure
        return self.state

    def nothing_left(self) -> str | None:
        """Why this (resumed) search has nothing left to do under its options, or None."""
        options = self.options
        if self._out_of_experiments():
            return (f"it has run {self._submitted} experiments (--max-experiments "
                    f"{options.max_experiments}); pass a larger --max-experiments to go on")
        if self._out_of_money():
            return (f"its agents have spent ${self.state.spent_usd:.2f} (--max-cost "
                    f"{options.max_cost}); pass a larger --max-cost to go on")
        if self._target_reached():
            return f"it reached --target {options.target}; pass another --target to go on"
        if self._noise_outstanding <= 0 and not self.population.ready:
            return "its starting code has no score on any noise seed"
        return None

    def _out_of_experiments(self) -> bool:
        limit = self.options.max_experiments
        return limit is not None and self._submitted >= limit

    def _target_reached(self) -> bool:
        """Whether the baseline, the best confirmed code, is at --target: one lucky run of an
        island's head does not end a search."""
        target, baseline = self.options.target, self.population.baseline
        return target is not None and bool(baseline.runs) and not (
            self.spec.objective.is_better(target, baseline.objective))

    def _out_of_time(self) -> bool:
        hours = self.options.hours
        return hours is not None and time.time() - self.state.started_at > hours * 3600

    def _out_of_money(self) -> bool:
        limit = self.options.max_cost
        return limit is not None and self.state.spent_usd >= limit

    def _progress(self) -> tuple[int, int, int]:
        return len(self._queue) + len(self._proposing), self._submitted, self.state.finished

    def _finished(self) -> bool:
        """Stop submitting at a limit; end once nothing is in flight (or at once for --target)."""
        options = self.options
        if self._noise_outstanding == 0 and not self.population.ready:
            log.error("the starting code has no score on any noise seed; see results.tsv")
            self.ended = "the starting code has no score"
            return True
        if self._target_reached():
            log.info("target %s reached", options.target)
            self.ended = f"target {options.target} reached"
            return True
        if self._out_of_time():
            self._end(f"--hours {options.hours} elapsed")
        if self._out_of_experiments():
            self._end(f"--max-experiments {options.max_experiments} ran")
        if self._out_of_money() and not self._queue and not self._proposing:
            self._end(f"--max-cost {options.max_cost} spent")
        return self._draining and not self.dispatcher.running and self._refinement is None

    def _end(self, reason: str) -> None:
        """Nothing new starts; what runs may finish."""
        self._draining = True
        self.ended = self.ended or reason

    # -- proposals -----------------------------------------------------------------------------

    def _ask_agents(self, slots: int) -> None:
        """Keep one proposal in flight per island while fewer are ready than free GPUs + surplus."""
        if self._draining or self._out_of_money():
            return
        wanted = slots - len(self.dispatcher.running) + self.options.surplus
        now = time.time()
        for island in self._rng.sample(range(self.options.agents), self.options.agents):
            if len(self._queue) + len(self._proposing) >= wanted:
                return
            if island in self._proposing or now < self._agent_resume_at.get(island, 0):
                continue
            parent = self.population.choose_parent(island)
            context = self._context(island, parent)
            future = self._pool.submit(self.agents[island].propose, context)
            future.parent = parent  # type: ignore[attr-defined]
            self._proposing[island] = future

    def _context(self, island: int, parent: Member) -> ProposalContext:
        population = self.population
        baseline = population.baseline
        return ProposalContext(
            island=island, goal=self.spec.text, files=dict(parent.files),
            editable=self.spec.editable_files, objective=self.spec.objective.metric,
            direction=self.spec.objective.direction,
            parent_objective=parent.objective if parent.runs else None,
            baseline_objective=baseline.objective if baseline.runs else None,
            history=tuple(population.islands[island].history),
            protected=self.spec.protected_files,
            leaderboard=tuple(self._leaderboard()),
            promotions=tuple(self._attempt_of(member)
                             for member in population.promotions[-PROMOTIONS_SHOWN:]))

    def _leaderboard(self) -> list[Attempt]:
        """The best kept changes of every island, best first."""
        members = {m.commit: m for island in self.population.islands
                   for m in (island.head, *island.archive) if m.runs and m.exp_id}
        ranked = sorted(members.values(), key=lambda m: m.objective,
                        reverse=self.spec.objective.direction == "maximize")
        return [self._attempt_of(m) for m in ranked[:LEADERBOARD_SHOWN]]

    def _attempt_of(self, member: Member) -> Attempt:
        return Attempt(self.descriptions.get(member.exp_id, ""), "ok", member.objective, None,
                       exp_id=member.exp_id)

    def _take_proposals(self) -> None:
        """Check and commit every finished proposal; refused ones are recorded and fed back."""
        for island, future in list(self._proposing.items()):
            if not future.done():
                continue
            del self._proposing[island]
            parent: Member = future.parent  # type: ignore[attr-defined]
            agent = self.agents[island]
            exp_id = self._new_id()
            experiment = Experiment(exp_id, "mutation", island, "", parent.commit, parent.files,
                                    "", self._fresh_seed(exp_id), agent.name)
            try:
                proposal = future.result()
            except Exception as error:  # noqa: BLE001 - an agent's failure never ends the search
                failures = self._agent_failures.get(island, 0)
                self._agent_failures[island] = failures + 1
                pause = AGENT_RETRY_S[min(failures, len(AGENT_RETRY_S) - 1)]
                self._agent_resume_at[island] = time.time() + pause
                self._record_rejected(experiment, f"the agent failed: {error}")
                continue
            self._agent_failures[island] = 0
            experiment.description = " ".join(proposal.description.split())[:300]
            experiment.cost_usd, experiment.tokens = proposal.cost_usd, proposal.tokens
            self.state.spent_usd += proposal.cost_usd
            try:
                files = apply_proposal(parent.files, proposal, self.spec)
                digest = code_hash(files, self.spec.editable_files)
                if digest in self._seen_code:
                    raise Refused("it repeats the code of an earlier experiment")
            except Refused as refused:
                self._record_rejected(experiment, f"refused: {refused}")
                continue
            self._seen_code.add(digest)
            changes = {name: files[name] for name in proposal.files if name in files}
            experiment.files, experiment.code = files, digest
            experiment.seed_only = changes_only_randomness(parent.files, files)
            experiment.commit = self.repo.commit(
                parent.commit, changes,
                f"{experiment.exp_id}: {experiment.description or '(no description)'}")
            self._enqueue(experiment)

    def _enqueue(self, *experiments: Experiment, first: bool = False) -> None:
        """Journal the experiments (durably: from now on a resume runs them), then queue them, in
        order, at the back of the queue or (`first`) behind the confirmations already queued and
        ahead of everything else."""
        for experiment in experiments:
            self.journal.append(experiment.journal_entry())
            self.descriptions[experiment.exp_id] = experiment.description
        if not first:
            self._queue.extend(experiments)
            return
        at = next((k for k, queued in enumerate(self._queue)
                   if queued.kind not in ("confirm", "control")), len(self._queue))
        for offset, experiment in enumerate(experiments):
            self._queue.insert(at + offset, experiment)

    # -- dispatch ------------------------------------------------------------------------------

    def _submit(self, slots: int, threads: int) -> None:
        """Start queued experiments on free GPUs, in queue order, passing over one pinned to a
        GPU model whose nodes are all busy."""
        while (self._queue and len(self.dispatcher.running) < slots and not self._draining
               and not self._out_of_experiments() and not self._out_of_time()):
            experiment = next((e for e in self._queue
                               if self.dispatcher.can_start(e.accelerator)), None)
            if experiment is None:
                break
            self._queue.remove(experiment)
            experiment.started_at = time.time()
            self.dispatcher.submit(Job(
                experiment.files, self.spec, experiment.seed, self.budget_s,
                self.options.grace_s, self._fingerprint, threads), experiment,
                experiment.accelerator)
            self._submitted += 1
        self.state.running = self.dispatcher.running

    # -- tuning --------------------------------------------------------------------------------

    def _tend_tuning(self, slots: int, threads: int) -> None:
        """Record the trials that ended; start tuning a winner when one waits and none runs."""
        refinement = self._refinement
        if refinement is not None:
            done = refinement.done  # read first: every trial that ended before is drained next
            for trial in refinement.finished_trials():
                self._record_trial(trial)
            if done:
                if not self._draining:
                    (refinement.path / TUNING_DONE).touch()
                self._refinement = None
            elif self._draining:
                refinement.stop(timeout_s=0)  # trials in flight run again after a resume
            return
        every = self.options.tune_every
        if (every and self._tune_wanted is None and self._since_tuning >= every
                and self.options.tune_trials and self.population.ready):
            self._tune_wanted = (self.population.baseline, self._baseline_island)
        if self._tune_wanted is not None and not self._draining:
            self._tuning, self._tune_wanted = self._tune_wanted, None
            self._since_tuning = 0
            self._refinement = self._start_refinement(*self._tuning, slots, threads)

    def _start_refinement(self, member: Member, island: int, slots: int,
                          threads: int) -> Refinement | None:
        name = f"tune-{member.exp_id or 'start'}"
        concurrency = min(max(int(slots * self.options.tune_share), 1), slots - 1)
        if concurrency < 1 or (self.run_dir / "tune" / name / TUNING_DONE).exists():
            return None  # one GPU is the agents'; and no code is tuned twice
        try:
            refinement = Refinement(
                name, member.files, self.spec, self.run_dir, trials=self.options.tune_trials,
                concurrency=concurrency, seed=self.options.seed, budget_s=self.budget_s,
                grace_s=self.options.grace_s, expected_fingerprint=self._fingerprint,
                threads=threads, gpus_per_trial=self.spec.gpus_per_experiment,
                run=self._run_function, recorded=self._trials_recorded)
        except ValueError as error:  # no knobs, or an annotation it cannot read
            log.warning("not tuning %s: %s", member.exp_id or "the starting code", error)
            return None
        log.info("tuning %s: %d trials, %d at once, knobs %s", member.exp_id, refinement.trials,
                 concurrency, ", ".join(refinement.start_values))
        return refinement.start()

    def _record_trial(self, trial: TrialOutcome) -> None:
        """A trial is an experiment like any other: a commit, a row, a note, a judgement."""
        member, island = self._tuning
        changes = {name: text for name, text in trial.files.items()
                   if member.files.get(name) != text}
        description = describe_tuning(self._refinement.start_values, trial.values)
        experiment = Experiment(self._new_id(), "tune", island, member.commit, member.commit,
                                trial.files, description, self.options.seed, "optuna",
                                code=code_hash(trial.files, self.spec.editable_files))
        if changes:
            experiment.commit = self.repo.commit(member.commit, changes,
                                                 f"{experiment.exp_id}: {description}")
        self._seen_code.add(experiment.code)
        self.descriptions[experiment.exp_id] = description
        self._submitted += 1
        self._handle(experiment, trial.outcome, trial=trial.trial_id,
                     knobs=json.dumps(trial.values))

    # -- results -------------------------------------------------------------------------------

    def _handle(self, experiment: Experiment, outcome: dict | Exception, **columns) -> None:
        """Record the result durably, then let the population decide, then move the branches."""
        row = {**self._row(experiment, outcome), **columns}
        self.store.append(row)
        self._count(row)
        self.branches.note(row)
        self._observe(experiment, row)
        if len(self.store) % PACK_EVERY == 0:
            self._packing.submit(self.repo.pack)  # seconds of git work, off the loop
        self._write_derived()

    def _observe(self, experiment: Experiment, row: dict) -> None:
        """Give one durable result to the population (live, or replayed on resume)."""
        objective = row["objective"] if row["status"] == "ok" else None
        accelerator = row.get("accelerator") or CPU
        if objective is not None:
            self._scores.setdefault(experiment.commit, []).append((objective, accelerator))
        if experiment.kind == "baseline":
            if objective is not None and self._fingerprint is None:
                self._fingerprint = row["data_fingerprint"] or None
            self.population.observe_baseline_run(objective, accelerator)
            self._noise_outstanding -= 1
            if self._noise_outstanding == 0:
                self.population.noise_measured()
                log.info("noise: sigma %s over %d seeds", self.population.sigma,
                         len(self.population.noise_runs))
                # Best first, so that the most promising candidate is confirmed first.
                self._deferred.sort(key=self._promise)
                for waiting, waiting_row in self._deferred:
                    self._judge(waiting, waiting_row)
                self._deferred.clear()
        elif experiment.kind == "confirm":
            self._apply(self.population.observe_confirmation(
                experiment.confirms, objective, accelerator))
        elif experiment.kind == "control":
            self._apply(self.population.observe_control(
                experiment.confirms, objective, accelerator))
        elif experiment.kind == "tune":
            self._trials_recorded.add(row["trial"])
            self._judge_trial(experiment, row)
        elif self._noise_outstanding > 0:
            self._deferred.append((experiment, row))
        else:
            self._since_tuning += 1
            self._judge(experiment, row)

    def _promise(self, waiting: tuple[Experiment, dict]) -> float:
        """Sorts results best first, those without a score last."""
        row = waiting[1]
        if row["status"] != "ok" or row["objective"] is None:
            return math.inf
        return row["objective"] if self.spec.objective.direction == "minimize" else (
            -row["objective"])

    def _judge(self, experiment: Experiment, row: dict, confirm_because: str = "") -> None:
        objective = row["objective"] if row["status"] == "ok" else None
        parent = self._parent(experiment)
        child = Member(experiment.commit, experiment.files,
                       [objective] if objective is not None else [], experiment.exp_id,
                       accelerators=[row.get("accelerator") or CPU] if objective is not None
                       else [])
        message = row["message"] or (RANDOMNESS_ONLY if experiment.seed_only else "")
        attempt = Attempt(experiment.description, row["status"], objective,
                          parent.objective if parent.runs else None, message,
                          diff=_diff(parent.files, experiment.files), exp_id=experiment.exp_id,
                          log_tail=row.get("log_tail") or "" if row["status"] == "crash" else "")
        self._apply(self.population.observe_child(
            experiment.island, parent, child, attempt, confirm_because=confirm_because))

    def _judge_trial(self, experiment: Experiment, row: dict) -> None:
        """A tuning trial is judged like a mutation only when it beats its member and every
        earlier trial of the same tuning, and no other trial of that tuning is being confirmed
        (it waits for that confirmation to end)."""
        objective = row["objective"] if row["status"] == "ok" else None
        if objective is None or experiment.commit == experiment.parent:
            return
        parent = self._parent(experiment)
        best = self._best_trial.get(experiment.parent, parent.objective if parent.runs else None)
        if best is not None and not self.spec.objective.is_better(objective, best):
            return
        self._best_trial[experiment.parent] = objective
        if experiment.parent in self._trial_confirming.values():
            self._trial_waiting[experiment.parent] = (experiment, row)
        else:
            self._judge_best_trial(experiment, row)

    def _judge_best_trial(self, experiment: Experiment, row: dict) -> None:
        self._judge(experiment, row, confirm_because="the best of its tuning trials so far")
        if experiment.commit in self.population.confirming:
            self._trial_confirming[experiment.commit] = experiment.parent

    def _parent(self, experiment: Experiment) -> Member:
        """The member an experiment changed: the population's own when it still holds it (its
        runs and child count are what the rules read), else its commit with the scores it had."""
        held = self.population.member(experiment.island, experiment.parent)
        if held is not None:
            return held
        scores = self._scores.get(experiment.parent, [])
        return Member(experiment.parent, {}, [value for value, _ in scores],
                      accelerators=[accelerator for _, accelerator in scores])

    def _apply(self, decisions: list[Decision]) -> None:
        """Make the branches and the queue follow the population's decisions. While replaying,
        the branches are reconciled once at the end and confirmations come from the journal."""
        released = []  # tuning trials that waited for a confirmation that has now ended
        for decision in decisions:
            member, island = decision.member, decision.island
            if decision.kind in ("advance", "reseed") and not self._replaying:
                self.branches.move_island(island, member.commit)
            elif decision.kind == "confirm" and not self._replaying:
                log.info("confirming %s: %s", member.exp_id, decision.reason)
                self._enqueue_confirmation(member, island, decision.against,
                                           decision.accelerator, decision.confirm_seeds,
                                           decision.confirm_seeds)
            elif decision.kind == "promote":
                merged = self._replayed_promotion(member) if self._replaying else None
                merged = merged or self.branches.promote(member, decision.reason)
                self.population.rebase_baseline(merged)
                self._scores[merged] = list(zip(member.runs, member.accelerators, strict=True))
                self._baseline_island = island
                if self.options.tune_trials:
                    self._tune_wanted = (member, island)
                log.info("promoted %s: %s", member.exp_id, decision.reason)
            elif decision.kind == "reject_promotion":
                log.info("not promoted %s: %s", member.exp_id, decision.reason)
            if decision.kind in ("promote", "reject_promotion") and (
                    member.commit in self._trial_confirming):
                tuned = self._trial_confirming.pop(member.commit)
                released += [self._trial_waiting.pop(tuned)] if tuned in self._trial_waiting else []
        for experiment, row in released:
            self._judge_best_trial(experiment, row)

    def _replayed_promotion(self, member: Member) -> str | None:
        """The promotion's merge commit if it was made before the stop; None: make it now (on
        `verify`, where nothing may be written, note it and go on from the winner itself)."""
        made = self.branches.promotion_made(member)
        if made is None and not self._writing:
            self.problems.append(f"the promotion of {member.exp_id} is not on the baseline branch")
            return member.commit
        return made

    def _enqueue_confirmation(self, member: Member, island: int, baseline: Member,
                              accelerator: str, runs: int, controls: int) -> None:
        """Queue, ahead of everything else, a candidate's fresh-seed runs and the control runs of
        the baseline, taking turns, so that both see the same conditions (load, drift) and the
        same GPU model."""
        turns = []
        for k in range(max(runs, controls)):
            if k < controls:
                turns.append(("control", baseline, f"control for {member.exp_id}"))
            if k < runs:
                turns.append(("confirm", member, f"confirm {member.exp_id}"))
        made = []
        for kind, code, description in turns:
            exp_id = self._new_id()
            made.append(Experiment(exp_id, kind, island, code.commit, code.commit, code.files,
                                   description, self._fresh_seed(exp_id), "engine",
                                   confirms=member.commit, accelerator=accelerator))
        self._enqueue(*made, first=True)

    def _record_rejected(self, experiment: Experiment, message: str) -> None:
        row = self._row(experiment, None, status="rejected", message=message)
        self.store.append(row)
        self._count(row)
        self._remember_rejected(experiment, message)

    def _remember_rejected(self, experiment: Experiment, message: str) -> None:
        parent = self._parent(experiment)
        self.population.islands[experiment.island].history.append(Attempt(
            experiment.description, "rejected", None,
            parent.objective if parent.runs else None, message, exp_id=experiment.exp_id))

    def _row(self, experiment: Experiment, outcome: dict | Exception | None, *,
             status: str | None = None, message: str = "") -> dict:
        return result_row(experiment, outcome, run=self.run_name, budget_s=self.budget_s,
                          metric_columns=self._metric_columns(), status=status, message=message)

    def _count(self, row: dict) -> None:
        state = self.state
        state.by_status[row["status"]] = state.by_status.get(row["status"], 0) + 1
        if row["status"] not in NOT_TRAINED:
            state.finished += 1
            state.by_kind[row["kind"]] = state.by_kind.get(row["kind"], 0) + 1
            if row.get("started_at") and row.get("finished_at"):
                state.busy_s += row["finished_at"] - row["started_at"]

    # -- resume --------------------------------------------------------------------------------

    def _replay(self, write: bool) -> None:
        """Rebuild the population from the rows and the journal (see `resume`)."""
        entries = {entry["exp_id"]: entry for entry in self.journal.entries()}
        rows = self.store.rows()
        self._replaying, self._writing = True, write
        completed: set[str] = set()
        for row in rows:
            experiment = _experiment_from(entries.get(row["exp_id"], {}), row)
            self._count(row)
            self.state.spent_usd += row["cost_usd"] or 0.0
            self.descriptions[row["exp_id"]] = row["description"]
            if row["status"] == "rejected":
                self._remember_rejected(experiment, row["message"])
            elif row["status"] != "interrupted":
                if row["exp_id"] in completed:
                    self.problems.append(f"{row['exp_id']} has two results")
                completed.add(row["exp_id"])
                self._observe(experiment, row)
        self._replaying = False
        ids = [int(exp_id[1:]) for exp_id in [*entries, *(row["exp_id"] for row in rows)]]
        self._next_id = max(ids, default=0)
        self._submitted = self.state.finished_before = len(completed)
        self._seen_code |= {entry["code"] for entry in entries.values() if entry.get("code")}
        checkpoint = read_checkpoint(self.run_dir)
        self.state.capacity_s = checkpoint.get("gpu", {}).get("capacity_s", self.state.busy_s)
        self._restore_files()
        self._requeue([entry for exp_id, entry in entries.items() if exp_id not in completed])
        self.problems += self.branches.reconcile(self.population, rows, write=write)

    def _restore_files(self) -> None:
        """Replayed members carry no code; give it back to the ones a decision may still use."""
        for member in self.population.reachable():
            if not member.files:
                member.files = self.repo.files_at(member.commit)

    def _requeue(self, unfinished: list[dict]) -> None:
        """Queue again what was queued or in flight, and any confirmation runs the replayed
        population waits for that the journal does not hold."""
        due = {commit: dict(zip(("confirm", "control"), counts, strict=True))
               for commit, counts in self.population.confirming.items()}
        for entry in unfinished:
            if entry["kind"] in ("confirm", "control"):
                waiting = due.get(entry.get("confirms", ""), {})
                if waiting.get(entry["kind"], 0) <= 0:
                    continue  # its candidate was decided without it
                waiting[entry["kind"]] -= 1
            experiment = _experiment_from(entry, entry)
            experiment.files = self.repo.files_at(experiment.commit)
            self.descriptions[experiment.exp_id] = experiment.description
            self._queue.append(experiment)
        for commit, missing in due.items():
            if missing["confirm"] or missing["control"]:
                member, island, baseline, accelerator = self.population.confirmation(commit)
                self._enqueue_confirmation(member, island, baseline, accelerator,
                                           missing["confirm"], missing["control"])
        if self._queue:
            log.info("resume: %d experiments queued again", len(self._queue))

    # -- the run dir ---------------------------------------------------------------------------

    def _stop(self, writable: bool = True) -> None:
        """Record what was in flight as interrupted, and write everything (what still can be
        written, when the run dir failed)."""
        for future in self._proposing.values():
            future.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._packing.shutdown(wait=True)
        if self._refinement is not None:
            self._refinement.stop(timeout_s=TUNING_STOP_S)  # unfinished trials rerun on resume
        in_flight = self.dispatcher.cancel_all() if self.dispatcher else []
        self.state.running = []
        self.journal.close()
        if not writable:
            return
        for experiment in in_flight:
            self.store.append(self._row(experiment, None, status="interrupted",
                                        message="the search stopped while it ran"))
        if self._refinement is not None:
            for trial in self._refinement.finished_trials():
                self._record_trial(trial)
        self._write_derived(now=True)

    def _write_derived(self, now: bool = False) -> None:
        clock = time.monotonic()
        if now or clock - self._checkpointed_at >= CHECKPOINT_EVERY_S:
            self._checkpoint()
            self._checkpointed_at = clock
        if now or clock - self._exported_at >= TSV_EVERY_S:
            self._export_tsv()
            self._exported_at = clock

    def _export_tsv(self) -> None:
        self.store.export_tsv(self.run_dir / "results.tsv", self.spec.objective.metric,
                              self.population.kept)

    def _checkpoint(self) -> None:
        """The population's state and the driver's counters, for `status` (resume replays the
        results instead: they are durable one by one, this file only every second)."""
        write_checkpoint(self.run_dir, {
            "run": self.run_name, "submitted": self._submitted, "next_id": self._next_id,
            "fingerprint": self._fingerprint, "ended": self.ended,
            "tuning": self._refinement.name if self._refinement else None,
            "spent_usd": self.state.spent_usd,
            "gpu": {"slots": self.state.slots, "busy_s": self.state.busy_s,
                    "capacity_s": self.state.capacity_s},
            **self.population.to_dict(),
        })

    def _write_run_info(self, start: str) -> None:
        write_run_info(self.run_dir, {
            "run": self.run_name, "task": str(self.task.path.resolve()), "start_commit": start,
            "created": self.state.started_at, "options": asdict(self.options),
            "budget_s": self.budget_s, "objective": asdict(self.spec.objective),
            "not_enforced": list(self.spec.not_enforced),
        })

    def _metric_columns(self) -> list[str]:
        names = [self.spec.objective.metric, *self.spec.metrics, *STANDARD_METRICS]
        return list(dict.fromkeys(names))

    def _new_id(self) -> str:
        self._next_id += 1
        return f"e{self._next_id:05d}"

    def _fresh_seed(self, exp_id: str) -> int:
        """A seed of its own for each experiment, the same on every resume: a change is never
        scored on the noise runs' seeds, and no two experiments share one."""
        digest = hashlib.sha256(f"{self.options.seed}:{self.run_name}:{exp_id}".encode())
        return int.from_bytes(digest.digest()[:4], "big") % 2**31


def _experiment_from(entry: dict, row: dict) -> Experiment:
    """An experiment as the journal (or, for a refused proposal, its row) recorded it; its files
    are filled in only where needed."""
    return Experiment(
        row["exp_id"], row["kind"], row["island"], row["commit"], row["parent"], {},
        row["description"], row["seed"], row["agent"], queued_at=row["queued_at"],
        seed_only=entry.get("seed_only", False), cost_usd=row["cost_usd"] or 0.0,
        tokens=row["tokens"] or 0, code=entry.get("code", ""), confirms=row.get("confirms", ""),
        accelerator=entry.get("accelerator", ""))


def _diff(before: dict[str, str], after: dict[str, str]) -> str:
    """The change between two versions of the files, as a unified diff."""
    lines = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name, ""), after.get(name, "")
        if old != new:
            lines += difflib.unified_diff(old.splitlines(keepends=True),
                                          new.splitlines(keepends=True), f"a/{name}", f"b/{name}")
    return "".join(lines)
