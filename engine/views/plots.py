"""The pictures of a run: the progress plot (every experiment a dot, kept ones marked, the running
best as a step line, each kept change labelled, one colour per island, the holdout score of each
promotion) and cost and GPU utilisation over time.

What is drawn is decided by `progress` and `usage`, which return plain data; `draw_progress` and
`draw_usage` only draw that data (matplotlib's Agg renderer, no display, no pyplot state), so a
test checks a plot's elements from the data that draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from matplotlib.figure import Figure

from engine.views.rundata import RunData, trained
from engine.views.status import last_result_at, max_at_once

ISLAND_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
                  "#17becf")
BASELINE_COLOUR = "#555555"  # the starting code's noise runs, which belong to no island
FAILED_COLOUR = "#d62728"
BEST_COLOUR = "#222222"
HOLDOUT_COLOUR = "#bc3c8c"
LABEL_CHARS = 45
USAGE_BINS = 60


@dataclass
class Dot:
    """One scored experiment on the progress plot."""

    exp_id: str
    x: float
    y: float
    island: int | None
    kind: str  # baseline, mutation or confirm
    kept: bool
    promoted: bool


@dataclass
class Progress:
    """Everything the progress plot shows."""

    metric: str
    direction: str
    x_label: str
    dots: list[Dot] = field(default_factory=list)
    failed: list[tuple[float, str, str]] = field(default_factory=list)  # (x, exp_id, status)
    best: list[tuple[float, float]] = field(default_factory=list)  # the step line's corners
    labels: list[tuple[float, float, str]] = field(default_factory=list)  # (x, y, change)
    # The holdout score of the starting code and of each promotion, where the harness reports
    # one: beside the running best, it shows whether selection fitted the validation data.
    holdout: list[tuple[float, float]] = field(default_factory=list)
    y_limits: tuple[float, float] | None = None  # dots outside are drawn on the edge

    @property
    def kept(self) -> list[Dot]:
        return [dot for dot in self.dots if dot.kept]

    @property
    def islands(self) -> list[int]:
        return sorted({dot.island for dot in self.dots if dot.island is not None})


@dataclass
class Usage:
    """GPU utilisation and cost over the run's time, in bins."""

    unit: str  # seconds, minutes or hours
    times: list[float]  # each bin's end, in `unit` since the run started
    utilisation: list[float]  # share of the `at_once` GPUs busy during each bin
    cost_usd: list[float]  # cost so far at each bin's end
    at_once: int


def colour(island: int | None) -> str:
    """The colour of an island (grey for the starting code's noise runs)."""
    return BASELINE_COLOUR if island is None else ISLAND_COLOURS[island % len(ISLAND_COLOURS)]


def progress(run: RunData, by: str = "number") -> Progress:
    """The progress plot's data, with experiments placed by `by`: "number" (the order their
    results arrived) or "time" (when each finished). Refused proposals and interrupted runs
    never trained, and are not on it."""
    rows = trained(run.rows)
    if by == "time":
        unit, seconds = _unit(last_result_at(run) - run.info["created"])
        xs = [((r["finished_at"] or r["queued_at"]) - run.info["created"]) / seconds
              for r in rows]
        x_label = f"{unit} since the search started"
    else:
        xs, x_label = list(range(1, len(rows) + 1)), "experiment"
    data = Progress(run.metric, run.direction, x_label)
    kept, promoted = run.kept, set(run.promoted)
    for x, row in sorted(zip(xs, rows, strict=True), key=lambda pair: pair[0]):
        if row["status"] != "ok" or row["objective"] is None:
            data.failed.append((x, row["exp_id"], row["status"]))
            continue
        is_kept = row["kind"] == "mutation" and row["exp_id"] in kept
        dot = Dot(row["exp_id"], x, row["objective"], row["island"], row["kind"], is_kept,
                  row["exp_id"] in promoted)
        data.dots.append(dot)
        if is_kept:
            data.labels.append((x, dot.y, _short(row["description"])))
        # The running best follows what the search builds on: the starting code and kept changes.
        if (is_kept or dot.kind == "baseline") and (
                not data.best or run.is_better(dot.y, data.best[-1][1])):
            data.best.append((x, dot.y))
        if dot.promoted or (dot.kind == "baseline" and not data.holdout):
            holdout = run.holdout_of({row["commit"]})
            if holdout is not None:
                data.holdout.append((x, holdout))
    if data.best and data.dots:
        data.best.append((max(dot.x for dot in data.dots), data.best[-1][1]))
    data.y_limits = _y_limits(data)
    return data


def usage(run: RunData, bins: int = USAGE_BINS) -> Usage:
    """GPU utilisation (busy GPU-seconds over `max_at_once` GPUs, per bin; see
    engine.views.status.max_at_once) and cost so far (proposals count when they were made)."""
    start = run.info["created"]
    elapsed = last_result_at(run) - start
    at_once = max_at_once(run.rows)
    unit, seconds = _unit(elapsed)
    data = Usage(unit, [], [], [], at_once)
    if elapsed <= 0:
        return data
    width = elapsed / bins
    spans = [(r["started_at"], r["finished_at"]) for r in run.rows
             if r["started_at"] is not None and r["finished_at"] is not None]
    for k in range(bins):
        low, high = start + k * width, start + (k + 1) * width
        busy = sum(max(0.0, min(high, end) - max(low, begin)) for begin, end in spans)
        data.times.append((high - start) / seconds)
        data.utilisation.append(busy / (width * at_once) if at_once else 0.0)
        data.cost_usd.append(sum(r["cost_usd"] for r in run.rows if r["queued_at"] <= high))
    return data


def draw_progress(data: Progress, path: Path | BinaryIO) -> None:
    """Draw the progress plot as a PNG at `path` (a file name or a binary file)."""
    figure = Figure(figsize=(14, 7), dpi=100)
    axes = figure.add_subplot()
    low, high = data.y_limits or (0.0, 1.0)
    for island in [None, *data.islands]:
        mine = [dot for dot in data.dots if dot.island == island]
        # The starting code's runs are what every change is measured against: marked as kept.
        marked = [dot for dot in mine if dot.kept or dot.kind == "baseline"]
        discarded = [dot for dot in mine if dot not in marked]
        inside = [dot for dot in discarded if low <= dot.y <= high]
        axes.scatter([d.x for d in inside], [d.y for d in inside], s=14, color=colour(island),
                     alpha=0.4, linewidths=0, zorder=2)
        # Far outside the plot's range: on its edge, as a triangle pointing the way it went.
        above = [dot for dot in discarded if dot.y > high]
        below = [dot for dot in discarded if dot.y < low]
        for off, edge, marker in ((above, high, "^"), (below, low, "v")):
            axes.scatter([d.x for d in off], [edge] * len(off), s=22, marker=marker,
                         color=colour(island), alpha=0.4, linewidths=0, zorder=2, clip_on=False)
        axes.scatter([d.x for d in marked], [d.y for d in marked], s=60, color=colour(island),
                     edgecolors="black", linewidths=0.8, zorder=4,
                     label="starting code" if island is None else f"island {island}")
    promoted = [dot for dot in data.dots if dot.promoted]
    axes.scatter([d.x for d in promoted], [d.y for d in promoted], s=320, marker="*",
                 facecolors="none", edgecolors=BEST_COLOUR, linewidths=1.2, zorder=5,
                 label="promoted into the baseline")
    if data.best:
        axes.step([x for x, _ in data.best], [y for _, y in data.best], where="post",
                  color=BEST_COLOUR, linewidth=1.8, zorder=3, label="running best")
    if data.holdout:
        axes.plot([x for x, _ in data.holdout], [y for _, y in data.holdout], "D--",
                  color=HOLDOUT_COLOUR, markersize=6, linewidth=1.2, zorder=3,
                  label="holdout score of the starting code and each promotion (never selected on)")
    for x, y, text in data.labels:
        axes.annotate(text, (x, y), xytext=(6, 6), textcoords="offset points", fontsize=8,
                      rotation=25, rotation_mode="anchor", color="#333333", zorder=6)
    if data.failed:
        worst = high if data.direction == "minimize" else low
        axes.scatter([x for x, _, _ in data.failed], [worst] * len(data.failed), marker="x",
                     s=30, color=FAILED_COLOUR, zorder=4, clip_on=False,
                     label="crash, timeout or invalid")
    axes.set_ylim(low, high)
    better = "lower" if data.direction == "minimize" else "higher"
    axes.set(xlabel=data.x_label, ylabel=f"{data.metric} ({better} is better)",
             title=f"autoresearch: {len(data.dots) + len(data.failed)} experiments, "
                   f"{len(data.kept)} kept improvements")
    axes.grid(alpha=0.25)
    axes.legend(loc="best", fontsize=9)
    # "tight" grows the picture to hold labels of late changes that run past the axes.
    figure.savefig(path, bbox_inches="tight")


def draw_usage(data: Usage, path: Path | BinaryIO) -> None:
    """Draw GPU utilisation and cost over time as a PNG at `path` (a file name or a binary
    file)."""
    figure = Figure(figsize=(9, 4.5), dpi=100)
    busy, cost = figure.subplots(2, 1, sharex=True)
    busy.step(data.times, [100 * u for u in data.utilisation], where="pre", color="#1f77b4")
    busy.set(ylabel="GPU utilisation (%)", ylim=(0, 105),
             title=f"GPU utilisation (of {data.at_once} at once) and cost")
    cost.plot(data.times, data.cost_usd, color="#2ca02c")
    cost.set(xlabel=f"{data.unit} since the search started", ylabel="cost so far (USD)")
    cost.set_ylim(bottom=0)
    for axes in (busy, cost):
        axes.grid(alpha=0.25)
    figure.tight_layout()
    figure.savefig(path)


def _y_limits(data: Progress) -> tuple[float, float] | None:
    """A range that shows the starting code, every kept change, the running best and the holdout
    scores; far worse experiments would squash it, and go on its edge instead. Failures sit on
    the worse edge."""
    shown = [dot.y for dot in data.dots if dot.kept or dot.kind == "baseline"]
    shown += [y for _, y in data.best] or [dot.y for dot in data.dots]
    shown += [y for _, y in data.holdout]
    if not shown:
        return None
    low, high = min(shown), max(shown)
    worse = [dot.y for dot in data.dots] + [y for _, y in data.holdout]
    # Room above the starting code for the discarded changes that were not much worse.
    span = high - low or abs(high) * 0.05 or 1.0
    if data.direction == "minimize":
        high = min(max(worse), high + span)
    else:
        low = max(min(worse), low - span)
    pad = (high - low or span) * 0.08
    return low - pad, high + pad


def _unit(seconds: float) -> tuple[str, float]:
    if seconds < 120:
        return "seconds", 1.0
    if seconds < 2 * 3600:
        return "minutes", 60.0
    return "hours", 3600.0


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"
