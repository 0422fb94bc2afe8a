"""Resume: the stored results told again, in the order they arrived, to a fresh evolution core.

The same rules give the same islands, heads, baseline and noise. While it replays, a promotion
finds the merge commit made before the stop (or makes it, if the stop came first); the branches
and notes are reconciled once at the end; every journaled experiment without a result is queued
again, with any confirmation run the replayed population still waits for. `status --verify`
runs the same replay over a DryRecorder, which writes nothing and lists what it would repair.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from engine.experiment.records import Experiment, Status
from engine.experiment.task import Task
from engine.rundir.layout import RunDir
from engine.rundir.recorder import DryRecorder, Recorder
from engine.search.evolution import COMBINED

log = logging.getLogger("autoresearch")


def resume(search_class, task: Task, run_dir: Path, options, agents, run=None, *,
           write: bool = True, **kwargs):
    """The stopped search in `run_dir` reopened as a `search_class` (engine/driver.py's Search);
    with `write=False` nothing is changed on disk and `problems` lists what a resume would
    repair."""
    folder = RunDir(run_dir)
    info = folder.read_info()
    search = search_class(task, run_dir, options, agents, run, start=info["start_commit"],
                          recorder=Recorder if write else DryRecorder, **kwargs)
    core, recorder, state = search.core, search.recorder, search.state
    entries = {entry["exp_id"]: entry for entry in folder.journal().entries()}
    results = recorder.store.results()
    # The code of every proposal first, as the live core had it when it made each. A
    # combination of winners is made again when the replay meets it, and takes the id and commit
    # it was journaled under (its confirmation runs name that commit).
    combinations = {}
    for exp_id, entry in entries.items():
        if entry.get("agent") == COMBINED:
            combinations[entry["parent"], entry.get("code")] = entry
        elif entry.get("code"):
            core.seen_code.remember(entry["code"], exp_id, entry["parent"])
    core.merge = recorder.replayed_merge
    core.commit = functools.partial(_replayed_commit, combinations, recorder)
    core.population.files_at = recorder.repo.files_at
    completed: set[str] = set()
    for result in results:
        state.add(result)
        state.spent_usd += result.cost_usd
        if result.status.trained:
            if result.exp_id in completed:
                recorder.problems.append(f"{result.exp_id} has two results")
            completed.add(result.exp_id)
        if result.status is not Status.INTERRUPTED:
            core.tell(result, _experiment_of(entries.get(result.exp_id, {}), result.to_row()))
    core.merge, core.commit = recorder.merge, recorder.commit
    core.population.files_at = None
    ids = [int(exp_id[1:]) for exp_id in [*entries, *(result.exp_id for result in results)]]
    core.next_id = max(ids, default=0)
    core.submitted = state.finished_before = len(completed)
    state.capacity_s = folder.read_checkpoint().get("gpu", {}).get("capacity_s", state.busy_s)
    repo = recorder.repo
    for member in core.population.reachable():  # replayed members carry no code
        if not member.files:
            member.files = repo.files_at(member.commit)
    core.restore_diffs({result.exp_id: (result.parent, result.commit) for result in results
                        if result.commit}, repo.files_at)
    unfinished = []
    for exp_id, entry in entries.items():
        if exp_id not in completed:
            experiment = _experiment_of(entry, entry)
            experiment.files = repo.files_at(experiment.commit)
            unfinished.append(experiment)
    recorder.journal(core.requeue(unfinished))
    if core.queue:
        log.info("resume: %d experiments queued again", len(core.queue))
    recorder.reconcile(core.population, results)
    return search


def _replayed_commit(combinations: dict[tuple[str, str], dict], recorder: Recorder,
                     experiment: Experiment, parent_files: dict[str, str]) -> None:
    """A combination met again while a resume replays: the id and commit it had, or committed
    now when the stop came before it was journaled."""
    entry = combinations.get((experiment.parent, experiment.code))
    if entry is None:
        recorder.commit_missing(experiment, parent_files)
    else:
        experiment.exp_id, experiment.commit = entry["exp_id"], entry["commit"]


def _experiment_of(entry: dict, row: dict) -> Experiment:
    """An experiment as the journal recorded it, with what its row says where the journal has
    nothing (a refused proposal is never journaled)."""
    journaled = {name: entry[name] for name in ("seed_only", "code", "accelerator")
                 if name in entry}
    return Experiment.from_journal({**row, **journaled})
