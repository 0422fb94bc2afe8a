"""What the driver writes, in one place: the journal, the result rows, the commits, the notes, the
branches and the derived files (checkpoint, results.tsv). `Recorder` writes them; `DryRecorder`
is the same surface writing nothing, for `status --verify`'s replay."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from engine.experiment.records import Experiment, Result, metric_columns
from engine.experiment.spec import Spec
from engine.rundir.branches import Branches
from engine.rundir.layout import RunDir
from engine.rundir.repo import RunRepo
from engine.search.members import Member
from engine.search.options import SearchOptions
from engine.search.population import Population

log = logging.getLogger("autoresearch")

# Files derived from the results are rewritten on a timer, not per result: the rows themselves
# are durable one by one in the store, and these would cost O(run) per experiment.
CHECKPOINT_EVERY_S = 1.0
TSV_EVERY_S = 10.0
PACK_EVERY = 2000  # experiments between two packings of the run's git objects


class Recorder:
    def __init__(self, run_dir: RunDir, repo: RunRepo, spec: Spec) -> None:
        self.run_dir, self.repo, self.spec = run_dir, repo, spec
        self.metric = spec.objective.metric
        self.store = run_dir.store(metric_columns(spec))
        self.branches = Branches(repo, run_dir.name, self.metric)
        self.problems: list[str] = []  # what a resume found inconsistent (and repaired)
        self._journal = run_dir.journal()
        # Notes and packing are git work nothing in the loop waits for: one thread does them in
        # order, off the loop. A note is derived from its row, so one a crash cut off is added
        # back by the next resume's reconciliation.
        self._git_work = ThreadPoolExecutor(max_workers=1, thread_name_prefix="git-notes")
        self._git_queued: list[Future] = []
        self._checkpointed_at = self._exported_at = 0.0

    def journal(self, experiments: list[Experiment]) -> None:
        """Durably: from now on a resume runs them."""
        for experiment in experiments:
            self._journal.append(experiment.journal_entry())

    def commit(self, experiment: Experiment, parent_files: dict[str, str]) -> None:
        """Commit the experiment's files on its parent; sets its commit."""
        changes = {name: text for name, text in experiment.files.items()
                   if parent_files.get(name) != text}
        experiment.commit = self.repo.commit(
            experiment.parent, changes,
            f"{experiment.exp_id}: {experiment.description or '(no description)'}")

    def record(self, result: Result) -> None:
        """The result, durably; its note on its commit follows in the background. Raises the
        GitError of a note or packing that failed since the last call."""
        self.store.append(result)
        if result.status.trained:
            self._in_background(self.branches.note, result)
        if len(self.store) % PACK_EVERY == 0:
            self._in_background(self.repo.pack)  # seconds of git work

    def _in_background(self, work: Callable, *args) -> None:
        for done in [future for future in self._git_queued if future.done()]:
            self._git_queued.remove(done)
            done.result()  # a failure stops the search like a failed commit
        self._git_queued.append(self._git_work.submit(work, *args))

    def move_island(self, island: int, commit: str) -> None:
        self.branches.move_island(island, commit)

    def merge(self, member: Member, reason: str) -> str:
        return self.branches.promote(member, reason)

    def replayed_merge(self, member: Member, reason: str) -> str:
        """A promotion met again while a resume replays: its merge commit if it was made before
        the stop, else made now."""
        return self.branches.promotion_made(member) or self._merge_missing(member, reason)

    def _merge_missing(self, member: Member, reason: str) -> str:
        return self.merge(member, reason)

    def commit_missing(self, experiment: Experiment, parent_files: dict[str, str]) -> None:
        """Code the search made (winners combined) that a resume meets again, but which the stop
        cut off before it was journaled."""
        self.commit(experiment, parent_files)

    def reconcile(self, population: Population, results: list[Result]) -> None:
        """After a replay: move the branches and add the notes the results call for."""
        self.problems += self.branches.reconcile(population, results, write=True)

    def start(self, task_path: Path, options: SearchOptions, commit: str, created: float,
              budget_s: float) -> None:
        """A new run: every branch at the starting code, and run.json (what a resume needs)."""
        self.branches.start(options.agents, commit)
        self.run_dir.write_info({
            "run": self.run_dir.name, "task": str(task_path.resolve()), "start_commit": commit,
            "created": created, "options": asdict(options), "budget_s": budget_s,
            "objective": asdict(self.spec.objective),
            "not_enforced": list(self.spec.not_enforced)})

    def write_derived(self, checkpoint: Callable[[], dict], kept: Callable[[], set[str]],
                      now: bool = False) -> None:
        """The checkpoint (every second) and results.tsv (every ten), or both `now`."""
        clock = time.monotonic()
        if now or clock - self._checkpointed_at >= CHECKPOINT_EVERY_S:
            self.run_dir.write_checkpoint(checkpoint())
            self._checkpointed_at = clock
        if now or clock - self._exported_at >= TSV_EVERY_S:
            self.store.export_tsv(self.run_dir.tsv_path, self.metric, kept())
            self._exported_at = clock

    def close(self) -> None:
        self._git_work.shutdown(wait=True)
        for future in self._git_queued:
            if future.exception() is not None:  # the next resume adds the missing notes
                log.warning("a note could not be written: %s", future.exception())
        self._journal.close()


class DryRecorder(Recorder):
    """Replays and checks, writes nothing: what it would repair goes to `problems`."""

    def journal(self, experiments: list[Experiment]) -> None:
        return

    def _merge_missing(self, member: Member, reason: str) -> str:
        self.problems.append(f"the promotion of {member.exp_id} is not on the baseline branch")
        return member.commit

    def commit_missing(self, experiment: Experiment, parent_files: dict[str, str]) -> None:
        self.problems.append(f"the combination {experiment.description!r} is not in the journal")

    def reconcile(self, population: Population, results: list[Result]) -> None:
        self.problems += self.branches.reconcile(population, results, write=False)
