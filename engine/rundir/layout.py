"""The run dir: everything one search writes, self-contained, so that status, resume, report and
reproduce need nothing else. `RunDir` is the one place that knows its paths and how each file is
written:

    RUN_DIR/run.json          the run: name, task folder, options, objective (written at start)
    RUN_DIR/population.json   the population checkpoint, replaced atomically every second
    RUN_DIR/journal.jsonl     every experiment queued, durably, before it runs (journal.py)
    RUN_DIR/repo.git/         the run's git repository (repo.py): every experiment a commit
    RUN_DIR/results/          one row per experiment, Parquet (store.py)
    RUN_DIR/results.tsv       the same in the original autoresearch's columns
    RUN_DIR/driver.log        what the driver decided and why
    RUN_DIR/tune/NAME/        one knob tuning: Ray Tune's state, the Optuna study, its trials
    RUN_DIR/report.html       `autoresearch report`, with progress.png
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
from collections.abc import Sequence
from pathlib import Path

from engine.rundir.journal import Journal
from engine.rundir.repo import RunRepo
from engine.rundir.store import ResultStore, read_rows


class RunDirUnwritable(RuntimeError):
    """The run dir cannot be written (disk full, read-only, gone); the message says what to do."""

    @classmethod
    def after(cls, failure: Exception, run_dir: object) -> RunDirUnwritable:
        """The error a search raises once it stopped on `failure` to write `run_dir`."""
        return cls(f"the run dir {run_dir} cannot be written ({failure}); the search stopped "
                   f"and what was already written is intact: make room, then `autoresearch "
                   f"resume {run_dir}`")


class RunDir:
    """The paths of one run dir, and the only writer of its files."""

    INFO = "run.json"
    CHECKPOINT = "population.json"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.name = self.path.name
        self.info_path = self.path / self.INFO
        self.checkpoint_path = self.path / self.CHECKPOINT
        self.journal_path = self.path / "journal.jsonl"
        self.repo_path = self.path / "repo.git"
        self.results_path = self.path / "results"
        self.tsv_path = self.path / "results.tsv"
        self.log_path = self.path / "driver.log"
        self.tune_path = self.path / "tune"
        self.report_path = self.path / "report.html"
        self.progress_path = self.path / "progress.png"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def holds_run(self) -> bool:
        return self.info_path.is_file()

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def write_info(self, info: dict) -> None:
        write_atomically(self.info_path, json.dumps(info, indent=1))

    def read_info(self) -> dict:
        return json.loads(self.info_path.read_text())

    def write_checkpoint(self, state: dict) -> None:
        write_atomically(self.checkpoint_path, json.dumps(state, indent=1))

    def read_checkpoint(self) -> dict:
        """The last checkpoint, or {} before the first."""
        path = self.checkpoint_path
        return json.loads(path.read_text()) if path.is_file() else {}

    def journal(self) -> Journal:
        return Journal(self.journal_path)

    def store(self, metric_columns: Sequence[str]) -> ResultStore:
        return ResultStore(self.results_path, metric_columns)

    def read_rows(self) -> list[dict]:
        """The results as a reader other than the driver sees them (see store.read_rows)."""
        return read_rows(self.results_path)

    def open_repo(self, task_path: Path, files: dict[str, str],
                  start: str | None) -> tuple[RunRepo, str]:
        """The run's repository and its starting commit: made from the task's files (and the
        history of the task's own repository) for a new run, `start` None."""
        if start is not None:
            return self.repo(), start
        return RunRepo.create(self.repo_path, files, f"start: {task_path.name}",
                              history_from=task_path)

    def repo(self) -> RunRepo:
        return RunRepo(self.repo_path)

    def log_to(self, console: bool, verbose: bool = False) -> None:
        """Send the driver's log to driver.log (and the console): capped, since a search of many
        nights must not fill the disk with its own log. The libraries' own records (litellm's
        few lines per call, httpx's, Ray's) go there too only when `verbose`."""
        handlers: list[logging.Handler] = [logging.handlers.RotatingFileHandler(
            self.log_path, maxBytes=20 * 2**20, backupCount=2)]
        if console:
            handlers.append(logging.StreamHandler())
        if not verbose:
            for handler in handlers:
                handler.addFilter(_own_records)
        logging.basicConfig(level=logging.INFO, handlers=handlers,
                            format="%(asctime)s %(levelname)s %(message)s")

    def tuning(self, name: str) -> Path:
        """The folder of the knob tuning `name`."""
        return (self.tune_path / name).resolve()


OWN_LOGGERS = ("autoresearch", "engine", "agents")  # the loggers of this project's code


def _own_records(record: logging.LogRecord) -> bool:
    return record.name.split(".")[0] in OWN_LOGGERS


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text`: a reader, or a crash, sees the old file or the new one."""
    staging = path.with_name(path.name + ".tmp")
    with open(staging, "w") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(staging, path)
