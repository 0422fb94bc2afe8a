"""Where a search stands, from its run dir alone: `autoresearch status`.

Best so far (its score and the goal file's tracked metrics) and its lineage, each island's head,
experiments by status, keep rate, experiments per hour, GPU utilisation and cost, as one plain
dict (`--json` prints it) and as text.
"""

from __future__ import annotations

import statistics
import time

from engine.experiment.records import Result
from engine.views.rundata import RunData, strategies, trained
from engine.views.summary import Summary


def summarise(run: RunData) -> dict:
    """Everything `status` shows, as plain data (JSON-ready)."""
    rows = run.rows
    finished = trained(rows)
    counted = Summary.of([Result.from_row(row) for row in rows], run.info["created"])
    kept = run.kept
    end = last_result_at(run)
    elapsed = max(end - run.info["created"], 0.0)
    busy, at_once = counted.busy_s, max_at_once(rows)
    # The driver's own accounting (GPU-seconds in experiments over GPU-seconds the cluster
    # offered) where the checkpoint has it; else an estimate from the rows alone.
    gpu = run.population.get("gpu", {})
    if gpu.get("capacity_s"):
        gpu_utilisation = gpu["busy_s"] / gpu["capacity_s"]
    else:
        gpu_utilisation = busy / (at_once * elapsed) if at_once and elapsed else None
    best = _best_member(run)
    best_row = run.by_id.get(best["exp_id"], {}) if best else {}
    return {
        "run": run.info["run"], "metric": run.metric, "direction": run.direction,
        "holdout": run.holdout,
        "created": run.info["created"], "last_result_at": end if rows else None,
        "elapsed_s": elapsed,
        "best": None if best is None else {
            "exp_id": best["exp_id"], "objective": _mean(best["runs"]), "runs": len(best["runs"]),
            "description": best_row.get("description") or "the starting code",
            "metrics": run.tracked_means(best)},
        "lineage": run.lineage(best["exp_id"]) if best else [],
        "baseline": _member(run.population.get("baseline")),
        "noise_sigma": run.sigma,
        "promotions": run.promoted,
        "islands": [{"index": k, "head": island["head"]["exp_id"],
                     "objective": _mean(island["head"]["runs"]), "stale": island["stale"]}
                    for k, island in enumerate(run.population.get("islands", []))],
        "by_status": dict(sorted(counted.by_status.items())),
        "experiments": counted.finished,
        "kept": len(kept),
        "keep_rate": counted.keep_rate(len(kept)),
        # GPU time spent making sure: a candidate's fresh-seed runs and the baseline's controls
        "confirmation_share": counted.confirmation_share if finished else None,
        "experiments_per_hour": len(finished) / elapsed * 3600 if elapsed else None,
        "gpu_busy_s": busy,
        "at_once": at_once,
        "slots": gpu.get("slots"),
        "gpu_utilisation": gpu_utilisation,
        "cost_usd": counted.spent_usd,
        "strategies": strategies(run),
    }


def last_result_at(run: RunData) -> float:
    """When the latest result arrived (the run's start before any): the end of the time a
    finished search ran, and close to now for one that runs."""
    times = [r["finished_at"] or r["queued_at"] for r in run.rows]
    return max([run.info["created"], *(t for t in times if t)])


def max_at_once(rows: list[dict]) -> int:
    """The most experiments that ran at the same moment.

    The run dir does not record how many GPU slots the cluster offered (it may change as nodes
    come and go), so GPU utilisation is busy GPU-seconds over (this number x elapsed time): the
    share of the parallelism the search showed that it kept busy."""
    events = sorted(event for r in rows if r["started_at"] is not None
                    and r["finished_at"] is not None
                    for event in ((r["started_at"], 1), (r["finished_at"], -1)))
    # An end sorts before a start at the same instant: back-to-back runs do not overlap.
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def format_status(summary: dict, now: float | None = None) -> str:
    """The summary as the lines `autoresearch status` prints."""
    now = time.time() if now is None else now
    metric, best, last = summary["metric"], summary["best"], summary["last_result_at"]
    better = "lower" if summary["direction"] == "minimize" else "higher"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(summary["created"]))
    lines = [f"run {summary['run']} · {metric}, {better} is better · started {started}, "
             + (f"latest result {_clock(now - last)} ago" if last else "no result yet")]
    if best is None:
        lines.append("best: no experiment has a score yet")
    else:
        runs = f", mean of {best['runs']} runs" if best["runs"] > 1 else ""
        tracked = dict(best["metrics"])
        holdout = (f" · holdout {_number(tracked.pop(summary['holdout']))}"
                   if summary["holdout"] else "")
        lines.append(f"best: {metric} {best['objective']:.6f}{holdout}{runs} "
                     f"({_name(best['exp_id'])}: {best['description']})")
        if tracked:
            lines.append("  tracked: " + " · ".join(f"{name} {format_metric(value)}"
                                                    for name, value in tracked.items()))
        # Validation and holdout side by side: where they part ways, selection has fitted the
        # validation data.
        lines.append("lineage:" + (f" {metric}, holdout" if summary["holdout"] else ""))
        lines += [f"  {_name(step['exp_id']):7} {_number(step['objective']):>10}  "
                  + (f"{_number(step['holdout']):>10}  " if summary["holdout"] else "")
                  + step["description"] for step in summary["lineage"]]
    baseline, sigma = summary["baseline"], summary["noise_sigma"]
    if baseline:
        lines.append(f"baseline: {_name(baseline['exp_id'])} {_number(baseline['objective'])} · "
                     + (f"noise σ {sigma:.6f}" if sigma is not None else "noise not measured yet")
                     + f" · {len(summary['promotions'])} promotions")
    for island in summary["islands"]:
        stale = island["stale"]
        lines.append(f"island {island['index']}: head {_name(island['head'])} "
                     f"{_number(island['objective'])} ({stale} result{'s' * (stale != 1)} "
                     "since it last moved)")
    counts = ", ".join(f"{status} {n}" for status, n in summary["by_status"].items())
    lines.append(f"experiments: {summary['experiments']} trained in "
                 f"{_clock(summary['elapsed_s'])} ({counts or 'none yet'})")
    per_hour = summary["experiments_per_hour"]
    lines.append(" · ".join([
        f"keep rate {_percent(summary['keep_rate'])} ({summary['kept']} kept)",
        f"confirmations {_percent(summary['confirmation_share'])} of experiments",
        f"{'-' if per_hour is None else f'{per_hour:,.1f}'} experiments/h",
        f"GPU utilisation {_percent(summary['gpu_utilisation'])} "
        + (f"(of {summary['slots']} slots)" if summary["slots"]
           else f"(of {summary['at_once']} at once)"),
        f"cost ${summary['cost_usd']:.2f}"]))
    if summary["strategies"]:
        lines.append("strategies (kept changes per GPU-hour of their runs, per dollar of their "
                     "calls):")
        lines += [f"  {arm['strategy']:10} {arm['model']:24} {arm['proposals']:>4} proposals, "
                  f"{arm['kept']:>3} kept, {arm['promoted']:>2} promoted · "
                  f"{_rate(arm['kept_per_gpu_hour'])}/GPU-h · {_rate(arm['kept_per_usd'])}/$"
                  for arm in summary["strategies"]]
    return "\n".join(lines)


def format_metric(value: float | None) -> str:
    """A tracked metric as a person reads it: whole numbers and large values (tokens per second)
    without decimals, others to four."""
    if value is None:
        return "-"
    if abs(value) >= 1000 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.4f}"


def _best_member(run: RunData) -> dict | None:
    """The best scored of the baseline and the island heads (as the population picks it)."""
    population = run.population
    members = [population.get("baseline"), *(i["head"] for i in population.get("islands", []))]
    scored = [m for m in members if m and m["runs"]]
    pick = min if run.direction == "minimize" else max
    return pick(scored, key=lambda m: _mean(m["runs"])) if scored else None


def _member(member: dict | None) -> dict:
    if not member:
        return {}
    return {"exp_id": member["exp_id"], "objective": _mean(member["runs"])}


def _mean(runs: list[float]) -> float | None:
    return statistics.fmean(runs) if runs else None


def _name(exp_id: str) -> str:
    return exp_id or "start"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
