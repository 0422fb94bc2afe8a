"""The search: a population of agents, each working an island, every edit a commit, every commit
an experiment on its own GPU, winners promoted into the shared baseline.

The life of one experiment, as `Search.run` drives it:
1. an agent proposes a change to its island's parent (in a thread, ahead of need, so no GPU
   waits for a proposer);
2. the engine checks it (editable files only, compiles, not a duplicate) and commits it on the
   island's branch, or records it as `rejected` and tells the agent why;
3. it runs as a Ray task holding one GPU (engine/dispatch.py, engine/runner.py);
4. its result is appended to the results store, durably, before anything acts on it;
5. the population decides (engine/population.py): keep, discard, confirm on fresh seeds,
   promote into the baseline, reseed a lagging island; the branches follow.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agents.base import Agent, Attempt, ProposalContext
from engine.checks import Refused, apply_proposal, changes_only_a_seed, code_hash
from engine.dispatch import Dispatcher, Job, RunFunction
from engine.population import Decision, Member, Population
from engine.repo import RunRepo, branch_name
from engine.rundir import result_note, result_row, write_checkpoint, write_run_info
from engine.runner import run_experiment
from engine.store import ResultStore
from engine.task import Task

log = logging.getLogger("autoresearch")

STANDARD_METRICS = ("params", "peak_memory_gb", "steps", "final_train_loss", "loss_spikes")
AGENT_RETRY_S = (1, 2, 5, 10, 30, 60)  # back-off after consecutive proposer failures
# Files derived from the results are rewritten on a timer, not per result: the rows themselves
# are durable one by one in the store, and these would cost O(run) per experiment.
CHECKPOINT_EVERY_S = 1.0
TSV_EVERY_S = 10.0


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
    confirm_seeds: int = 2
    surplus: int = 2  # proposals kept ready beyond the free GPUs


@dataclass
class Experiment:
    """One commit queued or running on one seed."""

    exp_id: str
    kind: str  # "baseline" (a noise run of the start), "mutation" or "confirm"
    island: int | None
    commit: str
    parent: Member | None
    files: dict[str, str]
    description: str
    seed: int
    agent: str
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    seed_only: bool = False
    cost_usd: float = 0.0
    tokens: int = 0


@dataclass
class SearchState:
    """A snapshot for the live view and `status`."""

    started_at: float
    slots: int = 0
    finished: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    busy_s: float = 0.0  # GPU-seconds spent in experiments
    capacity_s: float = 0.0  # GPU-seconds the cluster offered
    driver_s: float = 0.0  # the driver's own work, waits excluded
    running: list[Experiment] = field(default_factory=list)

    @property
    def utilisation(self) -> float:
        return self.busy_s / self.capacity_s if self.capacity_s else 0.0


class Search:
    """One search run: owns the population, the store and the run's git repository."""

    def __init__(self, task: Task, run_dir: Path, options: SearchOptions,
                 agents: list[Agent], run: RunFunction = run_experiment) -> None:
        self.task, self.spec, self.options = task, task.spec, options
        self.run_dir = Path(run_dir)
        self.run_name = self.run_dir.name
        self.budget_s = options.budget_s or self.spec.time_budget_s
        self.agents = agents
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.repo, start_commit = RunRepo.create(
            self.run_dir / "repo.git", task.files, f"start: {task.path.name}",
            history_from=task.path)
        self.store = ResultStore(self.run_dir / "results", self._metric_columns())
        self.population = Population(
            self.spec.objective, Member(start_commit, dict(task.files), []), options.agents,
            confirm_seeds=options.confirm_seeds, seed=options.seed)
        for branch in [None, *range(options.agents)]:
            self.repo.set_branch(branch_name(self.run_name, branch), start_commit)
        self.dispatcher = Dispatcher(self.spec.gpus_per_experiment, run)
        self.state = SearchState(started_at=time.time())
        self._queue: deque[Experiment] = deque()  # committed, waiting for a GPU
        self._proposing: dict[int, Future] = {}  # island -> its agent's call in flight
        self._agent_failures: dict[int, int] = {}
        self._agent_resume_at: dict[int, float] = {}
        self._seen_code = {code_hash(task.files, self.spec.editable_files)}
        self._deferred: list[tuple[Experiment, dict]] = []  # judged once the noise is known
        self._noise_outstanding = options.noise_seeds
        self._submitted = 0
        self._draining = False  # a limit was reached: start nothing new
        self._checkpointed_at = self._exported_at = 0.0
        self._next_id = 0
        self._fingerprint: str | None = None
        self._rng = random.Random(options.seed)
        self.descriptions: dict[str, str] = {}  # exp id -> description, for the live view
        self._pool = ThreadPoolExecutor(max_workers=max(options.agents, 1),
                                        thread_name_prefix="agent")
        self._write_run_info()

    # -- the loop ------------------------------------------------------------------------------

    def run(self, on_tick: Callable[[], None] | None = None) -> SearchState:
        """Search until a stop condition; Ctrl-C stops cleanly. `on_tick` is called on every turn
        of the loop (the live view redraws from it). Returns the final state."""
        start = self.population.baseline
        for k in range(self.options.noise_seeds):
            self._queue.append(Experiment(
                self._new_id(), "baseline", None, start.commit, None, start.files,
                f"baseline (noise run {k + 1} of {self.options.noise_seeds})",
                self.options.seed + k, "engine"))
        last_tick = time.monotonic()
        try:
            while not self._finished():
                busy_from, before = time.monotonic(), self._progress()
                slots, threads = self.dispatcher.refresh()
                self.state.slots = slots
                self._ask_agents(slots)
                self._take_proposals()
                self._submit(slots, threads)
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
        finally:
            self._stop()
        return self.state

    def _out_of_experiments(self) -> bool:
        limit = self.options.max_experiments
        return limit is not None and self._submitted >= limit

    def _progress(self) -> tuple[int, int, int]:
        return len(self._queue) + len(self._proposing), self._submitted, self.state.finished

    def _finished(self) -> bool:
        """Stop submitting at a limit; end once nothing is in flight (or at once for --target)."""
        options, now = self.options, time.time()
        if self._noise_outstanding == 0 and not self.population.ready:
            log.error("the starting code has no score on any noise seed; see results.tsv")
            return True
        if options.target is not None and self.population.ready and not (
                self.spec.objective.is_better(options.target, self.population.best().objective)):
            log.info("target %s reached", options.target)
            return True
        out_of_time = options.hours is not None and (
            now - self.state.started_at > options.hours * 3600)
        if out_of_time or self._out_of_experiments():
            self._draining = True  # nothing new starts; what runs may finish
        return self._draining and not self.dispatcher.running

    # -- proposals -----------------------------------------------------------------------------

    def _ask_agents(self, slots: int) -> None:
        """Keep one proposal in flight per island while fewer are ready than free GPUs + surplus."""
        if self._draining:
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
        baseline = self.population.baseline
        return ProposalContext(
            island=island, goal=self.spec.text, files=dict(parent.files),
            editable=self.spec.editable_files, objective=self.spec.objective.metric,
            direction=self.spec.objective.direction,
            parent_objective=parent.objective if parent.runs else None,
            baseline_objective=baseline.objective if baseline.runs else None,
            history=tuple(self.population.islands[island].history))

    def _take_proposals(self) -> None:
        """Check and commit every finished proposal; refused ones are recorded and fed back."""
        for island, future in list(self._proposing.items()):
            if not future.done():
                continue
            del self._proposing[island]
            parent: Member = future.parent  # type: ignore[attr-defined]
            agent = self.agents[island]
            experiment = Experiment(self._new_id(), "mutation", island, "", parent, parent.files,
                                    "", self.options.seed, agent.name)
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
            try:
                files = apply_proposal(parent.files, proposal, self.spec)
                digest = code_hash(files, self.spec.editable_files)
                if digest in self._seen_code:
                    raise Refused("it repeats the code of an earlier experiment")
            except Refused as refused:
                self._record_rejected(experiment, f"refused: {refused}")
                continue
            self._seen_code.add(digest)
            self.descriptions[experiment.exp_id] = experiment.description
            changes = {name: files[name] for name in proposal.files if name in files}
            experiment.files = files
            experiment.seed_only = changes_only_a_seed(parent.files, files)
            experiment.commit = self.repo.commit(
                parent.commit, changes,
                f"{experiment.exp_id}: {experiment.description or '(no description)'}")
            self._queue.append(experiment)

    # -- dispatch ------------------------------------------------------------------------------

    def _submit(self, slots: int, threads: int) -> None:
        while (self._queue and len(self.dispatcher.running) < slots and not self._draining
               and not self._out_of_experiments()):
            experiment = self._queue.popleft()
            experiment.started_at = time.time()
            self.dispatcher.submit(Job(
                experiment.files, self.spec, experiment.seed, self.budget_s,
                self.options.grace_s, self._fingerprint, threads), experiment)
            self._submitted += 1
        self.state.running = self.dispatcher.running

    # -- results -------------------------------------------------------------------------------

    def _handle(self, experiment: Experiment, outcome: dict | Exception) -> None:
        """Record the result durably, then let the population decide, then move the branches."""
        row = self._row(experiment, outcome)
        self.store.append(row)
        self._count(row)
        if experiment.commit:
            self.repo.add_note(experiment.commit, result_note(row, self.spec.objective.metric))
        objective = row["objective"] if row["status"] == "ok" else None
        if experiment.kind == "baseline":
            if objective is not None and self._fingerprint is None:
                self._fingerprint = row["data_fingerprint"] or None
            self.population.observe_baseline_run(objective)
            self._noise_outstanding -= 1
            if self._noise_outstanding == 0:
                log.info("noise: sigma %s over %d seeds", self.population.sigma,
                         len(self.population.noise_runs))
                for waiting, waiting_row in self._deferred:
                    self._judge(waiting, waiting_row)
                self._deferred.clear()
        elif experiment.kind == "confirm":
            self._apply(self.population.observe_confirmation(experiment.commit, objective))
        elif self._noise_outstanding > 0:
            self._deferred.append((experiment, row))
        else:
            self._judge(experiment, row)
        self._write_derived()

    def _judge(self, experiment: Experiment, row: dict) -> None:
        objective = row["objective"] if row["status"] == "ok" else None
        child = Member(experiment.commit, experiment.files,
                       [objective] if objective is not None else [], experiment.exp_id)
        attempt = Attempt(experiment.description, row["status"], objective,
                          experiment.parent.objective if experiment.parent.runs else None,
                          row["message"])
        self._apply(self.population.observe_child(
            experiment.island, experiment.parent, child, attempt, seed_only=experiment.seed_only))

    def _apply(self, decisions: list[Decision]) -> None:
        """Make the branches and the queue follow the population's decisions."""
        for decision in decisions:
            member, island = decision.member, decision.island
            if decision.kind in ("advance", "reseed"):
                self.repo.set_branch(branch_name(self.run_name, island), member.commit)
            elif decision.kind == "confirm":
                log.info("confirming %s on %d fresh seeds: %s", member.exp_id,
                         decision.confirm_seeds, decision.reason)
                for _ in range(decision.confirm_seeds):
                    self._queue.appendleft(Experiment(
                        self._new_id(), "confirm", island, member.commit, None, member.files,
                        f"confirm {member.exp_id}", self._rng.randrange(10**6, 10**9), "engine"))
            elif decision.kind == "promote":
                baseline = branch_name(self.run_name, None)
                merged = self.repo.merge_commit(
                    member.commit, [self.repo.branch(baseline), member.commit],
                    f"promote {member.exp_id}: {self.spec.objective.metric} "
                    f"{member.objective:.6f} ({decision.reason})")
                self.repo.set_branch(baseline, merged)
                self.population.rebase_baseline(merged)
                log.info("promoted %s: %s", member.exp_id, decision.reason)
            elif decision.kind == "reject_promotion":
                log.info("not promoted %s: %s", member.exp_id, decision.reason)

    def _record_rejected(self, experiment: Experiment, message: str) -> None:
        row = self._row(experiment, None, status="rejected", message=message)
        self.store.append(row)
        self._count(row)
        parent = experiment.parent
        self.population.islands[experiment.island].history.append(Attempt(
            experiment.description, "rejected", None,
            parent.objective if parent and parent.runs else None, message))

    def _row(self, experiment: Experiment, outcome: dict | Exception | None, *,
             status: str | None = None, message: str = "") -> dict:
        return result_row(experiment, outcome, run=self.run_name, budget_s=self.budget_s,
                          metric_columns=self._metric_columns(), status=status, message=message)

    def _count(self, row: dict) -> None:
        state = self.state
        state.by_status[row["status"]] = state.by_status.get(row["status"], 0) + 1
        if row["status"] != "rejected":
            state.finished += 1
            if row.get("started_at") and row.get("finished_at"):
                state.busy_s += row["finished_at"] - row["started_at"]

    # -- the run dir ---------------------------------------------------------------------------

    def _stop(self) -> None:
        """Record what was in flight as interrupted, and write everything."""
        for experiment in self.dispatcher.cancel_all():
            self.store.append(self._row(experiment, None, status="interrupted",
                                        message="the search stopped while it ran"))
        for future in self._proposing.values():
            future.cancel()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.state.running = []
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
        """The population's state and the driver's counters (for `status` and `resume`)."""
        write_checkpoint(self.run_dir, {
            "run": self.run_name, "submitted": self._submitted, "next_id": self._next_id,
            "fingerprint": self._fingerprint, "seen_code": sorted(self._seen_code),
            "gpu": {"slots": self.state.slots, "busy_s": self.state.busy_s,
                    "capacity_s": self.state.capacity_s},
            **self.population.to_dict(),
        })

    def _write_run_info(self) -> None:
        write_run_info(self.run_dir, {
            "run": self.run_name, "task": str(self.task.path.resolve()),
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

