"""Re-running a recorded experiment: `autoresearch reproduce`.

The experiment's commit gives its files (the run's git repository), its goal file gives the spec,
and its row gives the seed and the training budget; the runner trains it again here, with no Ray
and with the CPU threads a search slot of this machine gets, and the new score is compared with
the recorded one against the noise the search measured.
"""

from __future__ import annotations

from collections.abc import Callable

from engine.experiment.records import ExperimentResult
from engine.experiment.runner import run_experiment, slot_threads, thread_env
from engine.experiment.spec import task_spec
from engine.views.rundata import RunData

Z = 2.0  # a reproduction matches when it is within Z noise sigmas of the recorded score


def reproduce(run: RunData, exp_id: str,
              runner: Callable[..., ExperimentResult] = run_experiment) -> dict:
    """Train `exp_id` again from its commit, with its seed and budget (`runner` has
    engine.experiment.runner.run_experiment's signature), and compare. Raises NoSuchChange for
    an unknown id or a refused proposal (nothing to train)."""
    row = run.committed(exp_id)
    files = run.repo.files_at(row["commit"])
    spec = task_spec(files)
    # A reproduction against other data would compare different things: the recorded
    # fingerprint makes such a run invalid instead.
    result = runner(files, spec, row["seed"], row["budget_s"],
                    grace_s=run.info["options"].get("grace_s"),
                    expected_fingerprint=row["data_fingerprint"] or None,
                    env=thread_env(slot_threads(spec.gpus_per_experiment)))
    recorded = row["objective"] if row["status"] == "ok" else None
    reproduced = result.objective if result.status == "ok" else None
    matches, verdict = judge(row["status"], recorded, result.status, reproduced, run.sigma)
    return {
        "exp_id": exp_id, "commit": row["commit"], "seed": row["seed"],
        "budget_s": row["budget_s"], "metric": run.metric,
        "recorded": {"status": row["status"], "objective": row["objective"]},
        "reproduced": {"status": result.status, "objective": result.objective,
                       "message": result.message},
        "difference": (reproduced - recorded
                       if recorded is not None and reproduced is not None else None),
        "sigma": run.sigma, "matches": matches, "verdict": verdict,
    }


def judge(recorded_status: str, recorded: float | None, reproduced_status: str,
          reproduced: float | None, sigma: float | None) -> tuple[bool | None, str]:
    """Whether a reproduction matches its record: the same status and, for scored runs, a score
    within Z sigma of the recorded one. None when there is no noise estimate to judge by."""
    if recorded_status != reproduced_status:
        return False, (f"does not match: recorded {recorded_status}, reproduced "
                       f"{reproduced_status}")
    if recorded is None or reproduced is None:
        return True, f"matches: {recorded_status} both times"
    difference = abs(reproduced - recorded)
    if sigma is None:
        return None, ("cannot judge: the run has no noise estimate (the starting code was not "
                      "scored on two seeds)")
    if difference <= Z * sigma:
        return True, f"matches within the noise (|difference| <= {Z:g}σ = {Z * sigma:.6f})"
    return False, (f"does not match: |difference| {difference:.6f} > {Z:g}σ = "
                   f"{Z * sigma:.6f}")


def format_reproduction(outcome: dict) -> str:
    """The lines `autoresearch reproduce` prints."""
    metric, sigma = outcome["metric"], outcome["sigma"]

    def score(side: dict) -> str:
        value = "-" if side["objective"] is None else f"{side['objective']:.6f}"
        return f"{metric} {value} ({side['status']})"

    difference = outcome["difference"]
    lines = [f"recorded:   {score(outcome['recorded'])}",
             f"reproduced: {score(outcome['reproduced'])}"]
    if outcome["reproduced"]["message"]:
        lines.append(f"message:    {outcome['reproduced']['message']}")
    lines.append("difference: " + ("-" if difference is None else f"{difference:+.6f}")
                 + " (noise σ " + ("unknown" if sigma is None else f"{sigma:.6f}") + ")")
    lines.append(f"verdict:    {outcome['verdict']}")
    return "\n".join(lines)
