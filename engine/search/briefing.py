"""What an island's agent is shown: its own attempts (each with what the engine measured of its
training beside its parent's, and its change as a diff), the best kept changes of every island
and the latest promotions. The evolution core (engine/search/evolution.py) keeps the state; this
module turns it into the agents' records (engine/protocol.py). No holdout score is ever here.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import replace

from engine.experiment.records import Experiment, Result, Status
from engine.experiment.spec import Spec
from engine.protocol import Attempt, Measured, ProposalContext
from engine.search.members import Member
from engine.search.population import Population

LEADERBOARD_SHOWN = 8  # kept changes of all islands an agent sees
PROMOTIONS_SHOWN = 5
DIFFS_RESTORED = 8  # of each island's newest attempts, on resume (agents show 5 in full)
RANDOMNESS_ONLY = ("its only effect is on randomness (a seed, a random draw): it can only win "
                   "by luck, and is confirmed on fresh seeds like any change")


def context(spec: Spec, population: Population, island: int, parent: Member,
            descriptions: dict[str, str]) -> ProposalContext:
    """Everything an agent is shown for one proposal on `parent`."""
    baseline = population.baseline
    return ProposalContext(
        island=island, goal=spec.text, files=dict(parent.files), editable=spec.editable_files,
        objective=spec.objective.metric, direction=spec.objective.direction,
        parent_objective=parent.objective if parent.runs else None,
        baseline_objective=baseline.objective if baseline.runs else None,
        history=tuple(population.islands[island].history), protected=spec.protected_files,
        leaderboard=tuple(_attempt_of(member, descriptions)
                          for member in population.best_kept(LEADERBOARD_SHOWN)),
        promotions=tuple(_attempt_of(member, descriptions)
                         for member in population.promotions[-PROMOTIONS_SHOWN:]))


def attempt(spec: Spec, experiment: Experiment, result: Result, parent: Member,
            parent_measured: Measured | None) -> Attempt:
    """A trained (or failed) experiment as its island's agent will see it."""
    return Attempt(
        experiment.description, result.status, result.score,
        parent.objective if parent.runs else None,
        result.message or (RANDOMNESS_ONLY if experiment.seed_only else ""),
        # A parent the population no longer holds, or a replayed result, comes without its
        # files: no diff then (a resume restores the diffs agents are shown, `restore_diffs`),
        # rather than files shown as gone.
        diff=diff(spec, parent.files, experiment.files)
        if parent.files and experiment.files else "",
        exp_id=experiment.exp_id,
        log_tail=result.log_tail if result.status is Status.CRASH else "",
        measured=measured(result), parent_measured=parent_measured)


def refused(experiment: Experiment, parent: Member, message: str) -> Attempt:
    return Attempt(experiment.description, Status.REJECTED, None,
                   parent.objective if parent.runs else None, message, exp_id=experiment.exp_id)


def measured(result: Result) -> Measured | None:
    """What a result's training measured; None when it reported no step (it never trained, or
    failed before its first step)."""
    metrics = result.metrics
    if not metrics.get("steps"):
        return None

    def whole(name: str) -> int | None:
        return None if metrics.get(name) is None else int(metrics[name])

    return Measured(steps=whole("steps"), steps_per_s=metrics.get("steps_per_s"),
                    params=whole("params"), peak_memory_gb=metrics.get("peak_memory_gb"),
                    final_train_loss=metrics.get("final_train_loss"),
                    loss_spikes=whole("loss_spikes"), loss_curve=result.loss_curve)


def diff(spec: Spec, before: dict[str, str], after: dict[str, str]) -> str:
    """The change between two versions of the editable files, as a unified diff."""
    lines = []
    for name in sorted(spec.editable_files):
        old, new = before.get(name, ""), after.get(name, "")
        if old != new:
            lines += difflib.unified_diff(old.splitlines(keepends=True),
                                          new.splitlines(keepends=True), f"a/{name}", f"b/{name}")
    return "".join(lines)


def restore_diffs(spec: Spec, population: Population, changes: dict[str, tuple[str, str]],
                  files_at: Callable[[str], dict[str, str]]) -> None:
    """Give back their diffs to the newest DIFFS_RESTORED attempts of each island, which a
    replay told without files; `changes` maps an experiment to its parent's commit and its own,
    `files_at` reads a commit's files."""
    for island in population.islands:
        history = island.history
        for k in range(max(len(history) - DIFFS_RESTORED, 0), len(history)):
            shown = history[k]
            parent, commit = changes.get(shown.exp_id, ("", ""))
            if not shown.diff and parent and commit:
                history[k] = replace(shown, diff=diff(spec, files_at(parent), files_at(commit)))


def _attempt_of(member: Member, descriptions: dict[str, str]) -> Attempt:
    return Attempt(descriptions.get(member.exp_id, ""), Status.OK, member.objective, None,
                   exp_id=member.exp_id)
