"""The run dir: everything one search writes, self-contained, so that status, resume, report and
reproduce need nothing else.

    RUN_DIR/run.json          the run: name, task folder, options, objective (written at start)
    RUN_DIR/population.json   the population checkpoint, replaced atomically every second
    RUN_DIR/journal.jsonl     every experiment queued, durably, before it runs (engine/journal.py)
    RUN_DIR/repo.git/         the run's git repository (engine/repo.py): every experiment a commit
    RUN_DIR/results/          one row per experiment, Parquet (engine/store.py)
    RUN_DIR/results.tsv       the same in the original autoresearch's columns
    RUN_DIR/driver.log        what the driver decided and why

This module knows the shapes of those files; the driver decides what goes in them.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

RUN_INFO = "run.json"
CHECKPOINT = "population.json"
# Rows that never trained to the end: a refused proposal, and one the search stopped while it ran.
NOT_TRAINED = ("rejected", "interrupted")


class RunDirUnwritable(RuntimeError):
    """The run dir cannot be written (disk full, read-only, gone); the message says what to do."""


def write_run_info(run_dir: Path, info: dict) -> None:
    write_atomically(Path(run_dir) / RUN_INFO, json.dumps(info, indent=1))


def read_run_info(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / RUN_INFO).read_text())


def write_checkpoint(run_dir: Path, state: dict) -> None:
    write_atomically(Path(run_dir) / CHECKPOINT, json.dumps(state, indent=1))


def read_checkpoint(run_dir: Path) -> dict:
    """The last checkpoint, or {} before the first."""
    path = Path(run_dir) / CHECKPOINT
    return json.loads(path.read_text()) if path.is_file() else {}


def result_row(experiment, outcome: dict | Exception | None, *, run: str, budget_s: float,
               metric_columns: list[str], status: str | None = None, message: str = "") -> dict:
    """One results row (engine/store.py's columns) from a queued experiment and what its worker
    returned: the worker's dict, the exception that ended its task, or None (never ran)."""
    row = {
        "exp_id": experiment.exp_id, "run": run, "kind": experiment.kind,
        "island": experiment.island, "agent": experiment.agent, "commit": experiment.commit,
        "parent": experiment.parent, "confirms": experiment.confirms,
        "description": experiment.description, "seed": experiment.seed, "budget_s": budget_s,
        "queued_at": experiment.queued_at, "cost_usd": experiment.cost_usd,
        "tokens": experiment.tokens, "status": status, "message": message, "objective": None,
    }
    if isinstance(outcome, Exception):
        row.update(status="crash", message=f"the worker failed: {outcome}"[:2000],
                   started_at=experiment.started_at, finished_at=time.time())
    elif isinstance(outcome, dict):
        result = outcome["result"]
        row.update(
            status=result["status"], objective=result["objective"], message=result["message"],
            log_tail=result["log_tail"], train_wall_s=result["train_wall_s"],
            eval_wall_s=result["eval_wall_s"], left_behind=result["left_behind"],
            data_fingerprint=result["data_fingerprint"], started_at=outcome["started_at"],
            finished_at=outcome["finished_at"], node=outcome["node"], gpu=outcome["gpu"],
            accelerator=outcome["accelerator"],
        )
        row.update({name: value for name, value in result["metrics"].items()
                    if name in metric_columns})
    return row


def result_note(row: dict, metric: str) -> str:
    """The git note that gives an experiment's commit its result, once known."""
    value = row["objective"]
    score = f"{metric} {value:.6f}" if value is not None else "no score"
    return f"{row['exp_id']}: {row['status']}, {score}" + (
        f" ({row['message']})" if row["message"] else "")


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text`: a reader, or a crash, sees the old file or the new one."""
    staging = path.with_name(path.name + ".tmp")
    with open(staging, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(staging, path)
