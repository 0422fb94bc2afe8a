"""Reading a run dir back: the leaderboard printed at the end of a search.

Reads only the run dir's files (the Parquet results and run.json), as any outside tool could.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds

TOP = 10


def leaderboard(run_dir: Path, top: int = TOP) -> str:
    """The best scored experiments of a run, and the gain over the starting code."""
    info = json.loads((Path(run_dir) / "run.json").read_text())
    metric, direction = info["objective"]["metric"], info["objective"]["direction"]
    rows = ds.dataset(Path(run_dir) / "results", format="parquet").to_table().to_pylist()
    scored = [r for r in rows if r["status"] == "ok" and r["objective"] is not None]
    if not scored:
        return "No experiment has a score yet."
    baseline = [r["objective"] for r in scored if r["kind"] == "baseline"]
    ranked = sorted((r for r in scored if r["kind"] == "mutation"), key=lambda r: r["objective"],
                    reverse=direction == "maximize")
    lines = [f"Leaderboard ({metric}, {'lower' if direction == 'minimize' else 'higher'} is "
             f"better; {len(rows)} experiments)",
             f"{'rank':>4}  {'exp':7} {'island':>6}  {metric:>10}  description"]
    for rank, row in enumerate(ranked[:top], start=1):
        lines.append(f"{rank:>4}  {row['exp_id']:7} {row['island']:>6}  "
                     f"{row['objective']:>10.6f}  {row['description']}")
    if baseline:
        start = sum(baseline) / len(baseline)
        lines.append(f"starting code: {start:.6f} (mean of {len(baseline)} seeds)")
        if ranked:
            gain = start - ranked[0]["objective"]
            if direction == "maximize":
                gain = -gain
            lines.append(f"best gain over the starting code: {gain:+.6f}")
    return "\n".join(lines)
