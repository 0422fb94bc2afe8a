"""Reopening a stopped run dir: its task, rebuilt from the run's own git, and its options.

The run dir is self-contained: `resume` and `status --verify` need neither the task folder nor
the user's checkout, only run.json, the journal, the results and the run's repository.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from engine.experiment.spec import GOAL_FILE, GoalFileError, task_spec
from engine.experiment.task import Task
from engine.rundir.layout import RunDir
from engine.rundir.repo import GitError
from engine.search.options import SearchOptions


class BrokenRunDir(ValueError):
    """A folder that holds no resumable run; the message is one sentence."""


def stopped_run(run_dir: Path | str) -> tuple[Task, dict]:
    """The task the run started from (its goal file and files at the run's first commit) and
    run.json. Raises BrokenRunDir, naming what is missing or damaged."""
    folder = RunDir(run_dir)
    if not folder.holds_run:
        raise BrokenRunDir(f"{folder} holds no run to resume (no {RunDir.INFO})")
    try:
        info = folder.read_info()
        start = info["start_commit"]
    except (json.JSONDecodeError, KeyError) as error:
        raise BrokenRunDir(f"{folder.info_path} is damaged or from an older version "
                           f"({type(error).__name__}: {error}); it cannot be resumed") from error
    try:
        files = folder.repo().files_at(start)
    except GitError as error:
        raise BrokenRunDir(f"the run's git repository in {folder} is damaged or missing: "
                           f"{error}") from error
    try:
        spec = task_spec(files)
    except (KeyError, GoalFileError) as error:
        raise BrokenRunDir(f"the run's first commit has no usable {GOAL_FILE}: {error}") from error
    return Task(Path(info["task"]), spec, files), info


def resumed_options(info: dict, **overrides) -> SearchOptions:
    """The run's own options, with the given ones (those not None) in their place."""
    known = {field.name for field in dataclasses.fields(SearchOptions)}
    options = SearchOptions(**{k: v for k, v in info["options"].items() if k in known})
    changes = {name: value for name, value in overrides.items() if value is not None}
    return dataclasses.replace(options, **changes)
