"""The task doctor, `autoresearch check TASK`: what the engine will enforce of a task, and whether
its harness keeps the contract.

It reads the goal file against the harness's METRICS (a goal or harness the engine refuses never
gets this far: that refusal is the one problem), lists what will be enforced and what will not,
trains the starting train.py for a few seconds, scores it, and compares the harness's JSON line
with what the goal file asks. Every problem is one sentence naming the file and the key or line.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.experiment.records import STANDARD_METRICS, ExperimentResult, Status
from engine.experiment.runner import (
    EVAL_TIMEOUT_S,
    default_grace_s,
    run_experiment,
    slot_threads,
    thread_env,
)
from engine.experiment.spec import GOAL_FILE, HARNESS_FILE, Spec
from engine.experiment.task import Task

# A run that uses more of its grace than this leaves too little for a slower machine or a
# larger model's export (a GRU's export took 2.5 s longer than the bundled GPT's).
GRACE_SHARE_WARNED = 0.75


@dataclass
class Examination:
    """What `check` found: lines to print, and the problems among them."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def enforced(spec: Spec) -> list[str]:
    """What the engine will enforce of the goal file, and what it keeps as text only."""
    lines = [f"objective: {spec.objective.direction} `{spec.objective.metric}`",
             f"training time: {spec.time_budget_s:g} s per experiment",
             "hardware: " + (f"{spec.gpus_per_experiment} GPU per experiment"
                             if spec.gpus_per_experiment else "CPU slots")]
    if spec.param_limit is not None:
        lines.append(f"model size: fewer than {spec.param_limit:,} parameters (the harness's "
                     "`params`)")
    if spec.memory_limit_gb is not None:
        lines.append(f"memory: at most {spec.memory_limit_gb:g} GB per experiment")
    always = [metric for metric in STANDARD_METRICS if metric not in spec.metrics]
    lines.append("tracked metrics: " + (", ".join(f"`{m}`" for m in spec.metrics) or "none")
                 + f" (and always {', '.join(always)})")
    lines.append(f"holdout: `{spec.holdout}`, recorded and shown, never selected on or shown to "
                 "agents" if spec.holdout else f"holdout: none (a harness may report "
                 f"`holdout_{spec.objective.metric}`, see docs/writing-a-task.md)")
    if spec.declared_metrics is None:
        lines.append(f"{HARNESS_FILE} declares no METRICS: phrases were read as the bundled "
                     "harness's keys")
    else:
        lines.append(f"{HARNESS_FILE} declares: " + ", ".join(spec.declared_metrics))
    lines += [f"not enforced (kept for the agents): {line}" for line in spec.not_enforced]
    return lines


def examine(task: Task, budget_s: float, grace_s: float | None = None) -> Examination:
    """Describe the task, train its starting code for `budget_s` and check what the harness
    printed against the goal file."""
    spec = task.spec
    found = Examination(lines=enforced(spec))
    if spec.declared_metrics is None:
        found.problems.append(f"{HARNESS_FILE} declares no METRICS: add a dict of its result "
                              "keys to the phrases a goal file may use for them")
    grace = default_grace_s(budget_s) if grace_s is None else grace_s
    result = run_experiment(task.files, spec, seed=0, budget_s=budget_s, grace_s=grace,
                            env=thread_env(slot_threads(spec.gpus_per_experiment)))
    found.lines.append(f"a {budget_s:g} s run of train.py: {result.status}"
                       + (f" ({result.message})" if result.message else ""))
    if result.status is not Status.OK:
        found.problems.append(f"the starting train.py does not score: {result.message}")
    if result.status is not Status.CRASH or result.startup_s is not None:
        found.lines += _timings(result, grace, found.problems)  # (a crash at start has none)
    if result.status in (Status.OK, Status.INVALID) and result.eval_wall_s:
        _compare_line(result, spec, found.problems)
    return found


def _timings(result: ExperimentResult, grace: float, problems: list[str]) -> list[str]:
    """The start-up, export and scoring times, against the grace and the scoring limit."""
    past_budget = max(result.train_wall_s - result.budget_s, 0.0)
    parts = [f"start-up {result.startup_s:.1f} s" if result.startup_s is not None
             else "start-up unknown (train.py reported no step)",
             f"export {result.export_s:.1f} s" if result.export_s is not None
             else "export unknown (the harness does not report it)"]
    lines = [f"train.py ran {past_budget:.1f} s past its budget ({', '.join(parts)}) of "
             f"{grace:g} s of grace"]
    if result.eval_wall_s:  # the harness scored the model
        lines.append(f"scoring took {result.eval_wall_s:.1f} s of {EVAL_TIMEOUT_S:g} s allowed")
    if past_budget > GRACE_SHARE_WARNED * grace:
        problems.append(f"train.py used {past_budget:.1f} s of its {grace:g} s grace for "
                        "start-up, data and the hand-over; give more with --grace")
    if result.eval_wall_s > GRACE_SHARE_WARNED * EVAL_TIMEOUT_S:
        problems.append(f"{HARNESS_FILE} took {result.eval_wall_s:.0f} s to score a model, more "
                        f"than {GRACE_SHARE_WARNED:.0%} of the {EVAL_TIMEOUT_S:g} s it is allowed")
    return lines


def _compare_line(result: ExperimentResult, spec: Spec, problems: list[str]) -> None:
    """The harness's line against the goal file and the harness's own declaration."""
    reported = set(result.metrics)
    for metric in spec.metrics:
        if metric not in reported:
            problems.append(f"{GOAL_FILE} tracks `{metric}`, but {HARNESS_FILE}'s result has "
                            "no such key")
    for key in spec.declared_metrics or ():
        if key not in reported:
            problems.append(f"{HARNESS_FILE} declares `{key}` in METRICS, but its result has "
                            "no such key")
    if not result.data_fingerprint:
        problems.append(f"{HARNESS_FILE}'s result has no `data_fingerprint`: a change of the "
                        "data between experiments would go unnoticed")
