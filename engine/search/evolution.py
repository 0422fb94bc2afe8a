"""The evolution core: the search's state and rules, without the world around it.

It owns the population (engine/search/population.py) and what goes with it: the experiment ids
and seeds, the code already tried (engine/search/seen_code.py), the queue of experiments waiting
for a GPU, the results that wait for the noise to be measured, the confirmations, and the gate
that lets one tuning trial of a refinement be confirmed at a time (engine/search/tuning_gate.py).
Its surface is ask and tell, as in Optuna's `ask`/`tell`:

    admit(island, parent, proposal)   an agent's proposal -> an experiment, or why it is refused
    enqueue(experiment)               queue it (the caller journals what this returns)
    ask(can_start)                    the next experiment for a free GPU
    tell(result)                      a result -> the decisions the branches follow, and the
                                      experiments it queued (to be journaled): confirmation
                                      runs, and winners combined, which it has had committed

No Ray, git, threads or files here (tests/test_evolution.py checks its imports): the driver
(engine/driver.py) runs it against a GPU pool and a recorder (whose `merge` and `commit` it is
given), resume replays the stored results through the same `tell`, and a simulator can run it on
a clock of its own.
"""

from __future__ import annotations

import hashlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine.experiment.checks import Refused, apply_proposal, changes_only_randomness, code_hash
from engine.experiment.records import Experiment, Kind, Result, Status
from engine.experiment.spec import Spec
from engine.protocol import Measured, NothingToPropose, Proposal, ProposalContext
from engine.search import briefing
from engine.search.bandit import Bandit
from engine.search.members import CPU, Decision, Member
from engine.search.options import SearchOptions
from engine.search.population import Population
from engine.search.seen_code import SeenCode
from engine.search.tuning_gate import TuningGate

log = logging.getLogger("autoresearch")

COMBINED = "merge"  # the agent a combination of winners is made by, in its row and journal entry
# Merges a promoted member into the baseline and returns the commit the baseline is now at.
Merge = Callable[[Member, str], str]
# Commits an experiment's files on its parent (whose files are the second argument) and sets the
# experiment's commit.
Commit = Callable[[Experiment, dict[str, str]], None]


@dataclass
class Told:
    """What a result led to: decisions for the branches, experiments newly queued."""

    decisions: list[Decision] = field(default_factory=list)
    queued: list[Experiment] = field(default_factory=list)


class Evolution:
    """The population and everything the search decides with it; see the module docstring."""

    def __init__(self, spec: Spec, start: Member, options: SearchOptions, run_name: str,
                 merge: Merge, commit: Commit) -> None:
        self.spec, self.options, self.run_name = spec, options, run_name
        # Both replaced while a resume replays, to find what was made before the stop.
        self.merge = merge
        self.commit = commit  # commits the code the core makes (winners combined)
        self.population = Population(spec.objective, start, options.agents,
                                     confirm_seeds=options.confirm_seeds, seed=options.seed)
        self.queue: deque[Experiment] = deque()  # journaled, waiting for a GPU
        self.submitted = 0  # experiments handed out (tuning trials included)
        self.told = 0  # results taken, refusals included: each may give an island a new parent
        self.fingerprint: str | None = None  # the data the noise runs were scored against
        self.descriptions: dict[str, str] = {}  # exp id -> description
        # The code of every experiment so far: a repeat is refused, naming the first.
        self.seen_code = SeenCode(code_hash(start.files, spec.editable_files))
        self.noise_outstanding = options.noise_seeds
        # Which strategies and models the agents' calls go to, by what their changes earned.
        self.bandit = Bandit(options.budget_s or spec.time_budget_s)
        self.next_id = 0
        self._deferred: list[tuple[Experiment, Result]] = []  # judged once the noise is known
        self._scores: dict[str, list[tuple[float, str]]] = {}  # commit -> scores, parents let go
        # commit -> what its first scored run measured, shown beside its children's
        self._measured: dict[str, Measured] = {}
        # Tuning: the member being refined, and which of its trials are judged.
        self.tuning_gate = TuningGate(spec.objective, options)
        self.trials_recorded: set[str] = set()  # trials whose results were told

    # -- the start -----------------------------------------------------------------------------

    def noise_runs(self) -> list[Experiment]:
        """Queue the starting code's runs on the noise seeds; returns them (to be journaled)."""
        start, runs = self.population.baseline, self.options.noise_seeds
        return self.enqueue(*(Experiment(
            self._new_id(), Kind.BASELINE, None, start.commit, "", start.files,
            f"baseline (noise run {k + 1} of {runs})", self.options.seed + k, "engine")
            for k in range(runs)))

    # -- proposals -----------------------------------------------------------------------------

    def parent(self, island: int) -> Member:
        return self.population.choose_parent(island)

    def context(self, island: int, parent: Member) -> ProposalContext:
        """Everything an agent is shown for one proposal on `parent` (engine/search/briefing)."""
        return briefing.context(self.spec, self.population, island, parent, self.descriptions)

    def admit(self, island: int, parent: Member, proposal: Proposal | Exception, agent: str,
              strategy: str = "", model: str = "") -> tuple[Experiment, str | None]:
        """An agent's proposal (or the error it raised) as an experiment on `parent`, and why it
        is refused (None: it may run once committed and enqueued). `strategy` and `model` are
        what the agent was asked to work with."""
        exp_id = self._new_id()
        experiment = Experiment(exp_id, Kind.MUTATION, island, "", parent.commit, parent.files,
                                "", self._fresh_seed(exp_id), agent, strategy=strategy,
                                model=getattr(proposal, "model", "") or model)
        if isinstance(proposal, Exception):
            # A failed proposal may have cost something: an LLM agent's error says what
            # (agents.llm.ProposalFailed), and the row keeps it.
            experiment.cost_usd = getattr(proposal, "cost_usd", 0.0)
            experiment.tokens = getattr(proposal, "tokens", 0)
            if isinstance(proposal, NothingToPropose):
                return experiment, f"the agent has nothing new: {proposal}"
            return experiment, f"the agent failed: {proposal}"
        experiment.description = " ".join(proposal.description.split())[:300]
        experiment.cost_usd, experiment.tokens = proposal.cost_usd, proposal.tokens
        try:
            files = apply_proposal(parent.files, proposal, self.spec)
            digest = code_hash(files, self.spec.editable_files)
            if digest in self.seen_code:
                raise Refused(self.seen_code.repeats(digest, parent.commit))
        except Refused as refused:
            return experiment, f"refused: {refused}"
        self.seen_code.remember(digest, exp_id, parent.commit)
        experiment.files, experiment.code = files, digest
        experiment.seed_only = changes_only_randomness(parent.files, files)
        return experiment, None

    def enqueue(self, *experiments: Experiment, first: bool = False) -> list[Experiment]:
        """Queue the experiments, in order, at the back or (`first`) behind the confirmations
        already queued and ahead of everything else. Returns them: the caller journals them
        before the next `ask`, so that from then on a resume runs them."""
        for experiment in experiments:
            self.descriptions[experiment.exp_id] = experiment.description
        if not first:
            self.queue.extend(experiments)
            return list(experiments)
        at = next((k for k, queued in enumerate(self.queue) if not queued.kind.confirmation),
                  len(self.queue))
        for offset, experiment in enumerate(experiments):
            self.queue.insert(at + offset, experiment)
        return list(experiments)

    # -- ask -----------------------------------------------------------------------------------

    def ask(self, can_start: Callable[[str], bool]) -> Experiment | None:
        """The next queued experiment that `can_start` on its GPU model, in queue order (one
        pinned to a model whose GPUs are all busy is passed over), or None."""
        experiment = next((e for e in self.queue if can_start(e.accelerator)), None)
        if experiment is not None:
            self.queue.remove(experiment)
            self.submitted += 1
        return experiment

    # -- tell ----------------------------------------------------------------------------------

    def tell(self, result: Result, experiment: Experiment | None = None) -> Told:
        """Take one durable result (live, or replayed on resume) and decide. `experiment` is the
        queued experiment it came from; without it (a replay) it is rebuilt from the result."""
        experiment = experiment or Experiment.from_journal(result.to_row())
        self.descriptions[result.exp_id] = result.description
        told = Told()
        self.told += 1
        if result.status is Status.REJECTED:
            self._remember_rejected(experiment, result.message)
        elif result.status is not Status.INTERRUPTED:
            self._observe(experiment, result, told)
        return told

    def _observe(self, experiment: Experiment, result: Result, told: Told) -> None:
        score, accelerator = result.score, result.accelerator or CPU
        population = self.population
        if score is not None:
            self._scores.setdefault(experiment.commit, []).append((score, accelerator))
            if (measured := briefing.measured(result)) is not None:
                self._measured.setdefault(experiment.commit, measured)
        if experiment.kind is Kind.BASELINE:
            if score is not None and self.fingerprint is None:
                self.fingerprint = result.data_fingerprint or None
            population.observe_baseline_run(score, accelerator)
            self.noise_outstanding -= 1
            if self.noise_outstanding == 0:
                population.noise_measured()
                log.info("noise: sigma %s over %d seeds", population.sigma,
                         len(population.noise_runs))
                # Best first, so that the most promising candidate is confirmed first.
                waiting = self.spec.objective.ranked(self._deferred, lambda w: w[1].score)
                self._deferred.clear()
                for deferred, deferred_result in waiting:
                    self._judge(deferred, deferred_result, told)
        elif experiment.kind is Kind.CONFIRM:
            self._apply(population.observe_confirmation(experiment.confirms, score, accelerator),
                        told)
        elif experiment.kind is Kind.CONTROL:
            self._apply(population.observe_control(experiment.confirms, score, accelerator), told)
        elif experiment.kind is Kind.TUNE:
            self.trials_recorded.add(result.trial)
            # A trial is judged like a mutation when the tuning gate lets it through.
            if self.tuning_gate.admits(experiment, result, self._parent(experiment)):
                self._judge_best_trial(experiment, result, told)
        elif self.noise_outstanding > 0:
            self._deferred.append((experiment, result))
        else:
            self.tuning_gate.counted()
            self._judge(experiment, result, told)

    def _judge(self, experiment: Experiment, result: Result, told: Told,
               confirm_because: str = "") -> None:
        score = result.score
        parent = self._parent(experiment)
        child = Member(experiment.commit, experiment.files, [score] if score is not None else [],
                       experiment.exp_id,
                       accelerators=[result.accelerator or CPU] if score is not None else [])
        attempt = briefing.attempt(self.spec, experiment, result, parent,
                                   self._measured.get(experiment.parent))
        decisions = self.population.observe_child(experiment.island, parent, child, attempt,
                                                  confirm_because=confirm_because,
                                                  screen=experiment.agent != COMBINED)
        if experiment.kind is Kind.MUTATION and experiment.agent != COMBINED:
            self.bandit.told(experiment.strategy, experiment.model,
                             child.exp_id in self.population.kept, experiment.cost_usd)
        self._apply(decisions, told)

    def _judge_best_trial(self, experiment: Experiment, result: Result, told: Told) -> None:
        self._judge(experiment, result, told,
                    confirm_because="the best of its tuning trials so far")
        if experiment.commit in self.population.confirming:
            self.tuning_gate.confirming(experiment)

    def _apply(self, decisions: list[Decision], told: Told) -> None:
        """Act on the population's decisions: queue confirmations, merge promotions; the moves of
        the islands' branches go back to the caller."""
        released = []  # tuning trials that waited for a confirmation that has now ended
        for decision in decisions:
            member, island = decision.member, decision.island
            if decision.kind == "confirm":
                log.info("confirming %s: %s", member.exp_id, decision.reason)
                told.queued += self._confirmation_runs(
                    member, island, decision.against, decision.accelerator,
                    decision.confirm_seeds, decision.confirm_seeds)
            elif decision.kind == "promote":
                merged = self.merge(member, decision.reason)
                self.population.rebase_baseline(merged)
                self._scores[merged] = list(zip(member.runs, member.accelerators, strict=True))
                if member.commit in self._measured:
                    self._measured.setdefault(merged, self._measured[member.commit])
                self.tuning_gate.promoted(member, island)
                log.info("promoted %s: %s", member.exp_id, decision.reason)
                told.decisions += self.population.migrate()
            elif decision.kind == "combine":
                log.info("combining %s with the baseline: %s", member.exp_id, decision.reason)
                self._combination(member, island, decision, told)
            elif decision.kind == "reject_promotion":
                log.info("not promoted %s: %s", member.exp_id, decision.reason)
            if decision.kind in ("promote", "reject_promotion"):
                released += self.tuning_gate.decided(member.commit)
            told.decisions.append(decision)
        for experiment, result in released:
            self._judge_best_trial(experiment, result, told)

    def _combination(self, member: Member, island: int, decision: Decision,
                     told: Told) -> None:
        """Commit the combination of `member` with the baseline and queue it ahead of the agents'
        proposals, with its confirmation (unless that code ran already). Its parts are winners
        already, or passed a screen: its confirmation starts at once, beside its own run, rather
        than after a screen of it one experiment length later."""
        baseline, files = self.population.baseline, decision.files
        code = code_hash(files, self.spec.editable_files)
        if code in self.seen_code:
            return
        exp_id = self._new_id()
        experiment = Experiment(
            exp_id, Kind.MUTATION, island, "", baseline.commit, files,
            f"combine {member.exp_id} with the baseline ({baseline.exp_id or 'the start'})",
            self._fresh_seed(exp_id), COMBINED, code=code)
        experiment.seed_only = changes_only_randomness(baseline.files, files)
        self.commit(experiment, baseline.files)  # on resume: the id and commit it had
        self.seen_code.remember(code, experiment.exp_id, baseline.commit)
        told.queued += self.enqueue(experiment, first=True)
        self._apply([self.population.confirm_combination(
            island, Member(experiment.commit, files, [], experiment.exp_id),
            decision.accelerator, decision.reason)], told)

    def _confirmation_runs(self, member: Member, island: int, baseline: Member, accelerator: str,
                           runs: int, controls: int) -> list[Experiment]:
        """Queue, ahead of everything else, a candidate's fresh-seed runs and the control runs of
        the baseline, taking turns, so that both see the same conditions (load, drift) and the
        same GPU model."""
        turns = []
        for k in range(max(runs, controls)):
            if k < controls:
                turns.append((Kind.CONTROL, baseline, f"control for {member.exp_id}"))
            if k < runs:
                turns.append((Kind.CONFIRM, member, f"confirm {member.exp_id}"))
        made = []
        for kind, code, description in turns:
            exp_id = self._new_id()
            made.append(Experiment(exp_id, kind, island, code.commit, code.commit, code.files,
                                   description, self._fresh_seed(exp_id), "engine",
                                   confirms=member.commit, accelerator=accelerator))
        return self.enqueue(*made, first=True)

    def _remember_rejected(self, experiment: Experiment, message: str) -> None:
        self.bandit.told(experiment.strategy, experiment.model, False, experiment.cost_usd)
        self.population.islands[experiment.island].history.append(
            briefing.refused(experiment, self._parent(experiment), message))

    # -- tuning --------------------------------------------------------------------------------

    def next_tuning(self) -> tuple[Member, int] | None:
        """The member to refine next, with its island (a fresh winner, or the baseline every
        --tune-every results), taken as the one being tuned from now on; None: nothing to tune."""
        return self.tuning_gate.next(self.population.baseline, self.population.ready)

    @property
    def tuning(self) -> tuple[Member, int] | None:
        """The member being refined and its island (the last one `next_tuning` returned)."""
        return self.tuning_gate.tuning

    def trial(self, files: dict[str, str], description: str) -> Experiment:
        """A trial of the tuning under way, as an experiment on the member it tunes (its commit
        is the member's until the caller commits changed files)."""
        member, island = self.tuning
        experiment = Experiment(self._new_id(), Kind.TUNE, island, member.commit, member.commit,
                                files, description, self.options.seed, "optuna",
                                code=code_hash(files, self.spec.editable_files))
        self.seen_code.remember(experiment.code, experiment.exp_id, member.commit)
        self.descriptions[experiment.exp_id] = description
        self.submitted += 1
        return experiment

    # -- resume --------------------------------------------------------------------------------

    def requeue(self, unfinished: list[Experiment]) -> list[Experiment]:
        """After a replay: queue again what was queued or in flight (in journal order), and the
        confirmation runs the replayed population waits for that the journal does not hold.
        Returns the runs made anew (to be journaled)."""
        self.queue.clear()
        due = {commit: dict(zip((Kind.CONFIRM, Kind.CONTROL), counts, strict=True))
               for commit, counts in self.population.confirming.items()}
        for experiment in unfinished:
            if experiment.kind.confirmation:
                waiting = due.get(experiment.confirms, {})
                if waiting.get(experiment.kind, 0) <= 0:
                    continue  # its candidate was decided without it
                waiting[experiment.kind] -= 1
            self.enqueue(experiment)
        made = []
        for commit, missing in due.items():
            if missing[Kind.CONFIRM] or missing[Kind.CONTROL]:
                member, island, baseline, accelerator = self.population.confirmation(commit)
                made += self._confirmation_runs(member, island, baseline, accelerator,
                                                missing[Kind.CONFIRM], missing[Kind.CONTROL])
        return made

    def restore_diffs(self, changes: dict[str, tuple[str, str]],
                      files_at: Callable[[str], dict[str, str]]) -> None:
        """After a replay, which told the results without files: the newest attempts of each
        island get their diffs back (`changes`: experiment -> its parent's commit, its own)."""
        briefing.restore_diffs(self.spec, self.population, changes, files_at)

    def to_dict(self) -> dict:
        """What a checkpoint keeps of the core (`status` reads it; resume replays the results)."""
        return {"submitted": self.submitted, "next_id": self.next_id,
                "fingerprint": self.fingerprint, "arms": self.bandit.to_dict(),
                **self.population.to_dict()}

    # -- helpers -------------------------------------------------------------------------------

    def _parent(self, experiment: Experiment) -> Member:
        """The member an experiment changed: the population's own when it still holds it (its
        runs and child count are what the rules read), else its commit with the scores it had."""
        held = self.population.member(experiment.island, experiment.parent)
        if held is not None:
            return held
        scores = self._scores.get(experiment.parent, [])
        return Member(experiment.parent, {}, [value for value, _ in scores],
                      accelerators=[accelerator for _, accelerator in scores])

    def _new_id(self) -> str:
        self.next_id += 1
        return f"e{self.next_id:05d}"

    def _fresh_seed(self, exp_id: str) -> int:
        """A seed of its own for each experiment, the same on every resume: a change is never
        scored on the noise runs' seeds, and no two experiments share one."""
        digest = hashlib.sha256(f"{self.options.seed}:{self.run_name}:{exp_id}".encode())
        return int.from_bytes(digest.digest()[:4], "big") % 2**31

