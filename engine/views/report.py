"""Reading a run dir back: the leaderboard printed at the end of a search, and `autoresearch
report`: progress.png and one self-contained report.html.

Reads only the run dir's files (run.json, population.json, the Parquet results, the run's git
repository), as any outside tool could, so it works while a search runs and after.
"""

from __future__ import annotations

import base64
import io
import time
from html import escape
from pathlib import Path

from engine.experiment.spec import GOAL_FILE
from engine.views.plots import draw_progress, draw_usage, progress, usage
from engine.views.rundata import RunData, promotion_tree
from engine.views.status import format_metric, format_status, summarise

TOP = 10
REPORT_TOP = 25
PROGRESS_PNG = "progress.png"
REPORT_HTML = "report.html"
# Nothing may load from anywhere: the images are inline, and there is no script at all.
POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 80em; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ddd; margin-top: 2em; }
img { max-width: 100%; }
table { border-collapse: collapse; } td, th { padding: .2em .7em; text-align: left; }
tr:nth-child(even) { background: #f6f6f6; } td.number { text-align: right; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 13px; }
.add { color: #116329; background: #dafbe1; } .del { color: #82071e; background: #ffebe9; }
.hunk { color: #6639ba; } .file { font-weight: bold; }
.promoted { font-weight: bold; } .muted { color: #777; }
ul.tree, ul.tree ul { list-style: none; padding-left: 1.4em; border-left: 1px dotted #bbb; }
"""


def leaderboard(run: RunData, top: int = TOP) -> str:
    """The best scored experiments of a run with the goal file's tracked metrics, and the gain
    over the starting code."""
    rows, metric, direction = run.rows, run.metric, run.direction
    scored = [r for r in rows if r["status"] == "ok" and r["objective"] is not None]
    if not scored:
        return "No experiment has a score yet."
    baseline = [r["objective"] for r in scored if r["kind"] == "baseline"]
    ranked = ranked_mutations(rows, direction)
    promoted = set(run.promoted)
    widths = {name: max(len(name), 10) for name in run.tracked}
    lines = [f"Leaderboard ({metric}, {'lower' if direction == 'minimize' else 'higher'} is "
             f"better; {len(rows)} experiments; one run each, * promoted)",
             f"{'rank':>4}  {'exp':8} {'island':>6}  {'strategy':10}  {metric:>10}  "
             + "".join(f"{name:>{width}}  " for name, width in widths.items()) + "description"]
    for rank, row in enumerate(ranked[:top], start=1):
        name = row["exp_id"] + ("*" if row["exp_id"] in promoted else "")
        strategy = row.get("strategy") or "-"
        lines.append(f"{rank:>4}  {name:8} {row['island']:>6}  {strategy:10}  "
                     f"{row['objective']:>10.6f}  "
                     + "".join(f"{format_metric(row.get(tracked)):>{width}}  "
                               for tracked, width in widths.items())
                     + row["description"])
    if baseline:
        start = sum(baseline) / len(baseline)
        lines.append(f"starting code: {start:.6f} (mean of {len(baseline)} seeds)")
        confirmed = run.population.get("baseline", {})
        if promoted and confirmed.get("runs"):
            # A single run chosen as the best of many flatters itself: the baseline's score is
            # the mean of runs made after it was chosen (its confirmation and control runs).
            runs = confirmed["runs"]
            lines.append(f"baseline: {sum(runs) / len(runs):.6f} ({confirmed['exp_id']}, mean "
                         f"of {len(runs)} runs made after it was chosen)")
    return "\n".join(lines)


def ranked_mutations(rows: list[dict], direction: str) -> list[dict]:
    """The scored changes (not the starting code's runs), best first."""
    scored = [r for r in rows if r["status"] == "ok" and r["objective"] is not None
              and r["kind"] == "mutation"]
    return sorted(scored, key=lambda r: r["objective"], reverse=direction == "maximize")


def write_report(run: RunData, by: str = "number") -> tuple[Path, Path]:
    """Write progress.png and report.html into the run dir; returns their paths. `by` places the
    experiments on the plot by "number" or by "time"."""
    picture = run.path / PROGRESS_PNG
    draw_progress(progress(run, by), picture)
    usage_png = io.BytesIO()
    draw_usage(usage(run), usage_png)
    page = run.path / REPORT_HTML
    page.write_text(report_html(run, picture.read_bytes(), usage_png.getvalue()),
                    encoding="utf-8")
    return picture, page


def report_html(run: RunData, progress_png: bytes, usage_png: bytes) -> str:
    """The whole report as one HTML page that needs nothing else: no server, no network."""
    title = f"autoresearch · {run.info['run']}"
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p>Task <code>{escape(run.info['task'])}</code>, started {_when(run.info['created'])}; "
        f"this report was written {_when(time.time())}. "
        f"{escape(run.info['objective']['text'])}</p>",
        f"<pre>{escape(format_status(summarise(run)))}</pre>",
        "<h2>Progress</h2>", _image(progress_png, "every experiment, the running best and the "
                                                 "kept changes"),
        "<h2>Leaderboard</h2>", _leaderboard_table(run),
        "<h2>Lineage of the promotions</h2>",
        f'<ul class="tree">{_tree_item(promotion_tree(run), run.metric)}</ul>',
        "<h2>Winners</h2>", _winners(run),
        "<h2>Cost and GPU utilisation</h2>", _image(usage_png, "cost and GPU utilisation over "
                                                             "time"),
        f"<h2>Goal file</h2><pre>{escape(_goal_file(run))}</pre>",
        "</body></html>", ""])


def _leaderboard_table(run: RunData) -> str:
    ranked = ranked_mutations(run.rows, run.direction)
    if not ranked:
        return "<p>No change has a score yet.</p>"
    kept, promoted = run.kept, set(run.promoted)
    lines = ['<table id="leaderboard">',
             f"<tr><th>rank</th><th>experiment</th><th>island</th><th>strategy</th>"
             f"<th>{escape(run.metric)}</th>"
             + "".join(f"<th>{escape(name)}</th>" for name in run.tracked)
             + "<th></th><th>description</th></tr>"]
    for rank, row in enumerate(ranked[:REPORT_TOP], start=1):
        mark = ("promoted" if row["exp_id"] in promoted
                else "kept" if row["exp_id"] in kept else "")
        lines.append(
            f'<tr class="{mark}"><td class="number">{rank}</td><td>{row["exp_id"]}</td>'
            f'<td class="number">{row["island"]}</td>'
            f'<td>{escape(row.get("strategy") or "-")}</td>'
            f'<td class="number">{row["objective"]:.6f}</td>'
            + "".join(f'<td class="number">{format_metric(row.get(name))}</td>'
                      for name in run.tracked)
            + f"<td>{mark}</td>"
            f"<td>{escape(row['description'])}</td></tr>")
    lines.append("</table>")
    if run.start_objective is not None:
        lines.append(f"<p>The starting code: {run.start_objective:.6f} (mean of its noise "
                     "runs).</p>")
    return "\n".join(lines)


def _tree_item(node: dict, metric: str) -> str:
    name = node["exp_id"] or "start"
    score = "" if node["objective"] is None else f" {metric} {node['objective']:.6f}"
    badge = (f' <span class="promoted">promotion {node["promotion"]}</span>'
             if node["promotion"] else "")
    children = "".join(_tree_item(child, metric) for child in node["children"])
    return (f"<li><b>{name}</b>{score}{badge} <span class=\"muted\">"
            f"{escape(node['description'])}</span>"
            + (f"<ul>{children}</ul>" if children else "") + "</li>")


def _winners(run: RunData) -> str:
    if not run.promoted:
        return "<p>Nothing has been promoted into the baseline yet.</p>"
    parts = []
    for number, member in enumerate(run.population["promotions"], start=1):
        row = run.by_id.get(member["exp_id"])
        if row is None:  # promoted after these rows were read: shown next time
            continue
        runs, parent = member["runs"], run.lineage(row["exp_id"])[-2]
        parent_name = parent["exp_id"] or "the starting code"
        parts.append(
            f'<h3 id="{row["exp_id"]}">Promotion {number}: {row["exp_id"]}, '
            f"{escape(row['description'])}</h3>"
            f"<p>{run.metric} {sum(runs) / len(runs):.6f}"
            + "".join(f", {escape(name)} {format_metric(value)}"
                      for name, value in run.tracked_means(member).items())
            + f" (mean of {len(runs)} run{'s' * (len(runs) != 1)}), island {row['island']}, commit "
            f"<code>{row['commit'][:12]}</code>; its change against its parent, {parent_name} "
            f"(<code>{row['parent'][:12]}</code>):</p>"
            f'<pre class="diff">{_diff_html(run.change(row["exp_id"]))}</pre>')
    return "\n".join(parts)


def _diff_html(diff: str) -> str:
    """A unified diff, escaped, each line marked for the style sheet's colours."""
    lines, header = [], False
    for line in diff.splitlines():
        # A file's header runs from `diff --git` to its first hunk; inside a hunk, a line such
        # as "--- x" is a removed line, not a header.
        header = line.startswith("diff --git") or (header and not line.startswith("@@"))
        kind = ("file" if header else "hunk" if line.startswith("@@")
                else {"+": "add", "-": "del"}.get(line[:1], ""))
        lines.append(f'<span class="{kind}">{escape(line)}</span>' if kind else escape(line))
    return "\n".join(lines)


def _goal_file(run: RunData) -> str:
    """The goal file the search started from (the first commit of the run's repository)."""
    if run.start_commit is None:
        return "(no experiment has started yet)"
    return run.repo.files_at(run.start_commit).get(GOAL_FILE, f"(the task has no {GOAL_FILE})")


def _image(png: bytes, alt: str) -> str:
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))
