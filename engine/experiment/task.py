"""A task folder: its goal file, its fixed harness and its editable code.

`load_task` reads one into memory (the files an experiment carries to a worker, and the parsed
spec); `init_task` starts a new one from the bundled template.
"""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.experiment.spec import GOAL_FILE, HARNESS_FILE, Spec, load_spec

# What an experiment carries: source and small text files. Outputs such as checkpoints stay.
CARRIED_SUFFIXES = {".py", ".md", ".txt", ".json", ".toml", ".yaml", ".yml", ".cfg"}
MAX_TASK_BYTES = 8 * 2**20
TEMPLATE_FILES = (GOAL_FILE, HARNESS_FILE, "train.py")


class TaskError(ValueError):
    """A task folder the engine cannot use; the message is one sentence."""


@dataclass(frozen=True)
class Task:
    """A task folder read into memory."""

    path: Path
    spec: Spec
    files: dict[str, str]  # relative path -> contents, everything an experiment needs


def load_task(path: Path | str) -> Task:
    """Read a task folder: its parsed goal file and the files its experiments carry."""
    folder = Path(path)
    if not folder.is_dir():
        raise TaskError(f"{folder} is not a folder")
    spec = load_spec(folder)
    files: dict[str, str] = {}
    total = 0
    for file in sorted(folder.rglob("*")):
        relative = file.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in relative.parts):
            continue
        if not file.is_file() or file.suffix not in CARRIED_SUFFIXES:
            continue
        total += file.stat().st_size
        if total > MAX_TASK_BYTES:
            raise TaskError(f"{folder} holds more than {MAX_TASK_BYTES // 2**20} MiB of source; "
                            "keep data and outputs out of the task folder")
        try:
            files[relative.as_posix()] = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise TaskError(f"{relative} is not UTF-8 text") from error
    for required in (HARNESS_FILE, *spec.editable_files):
        if required not in files:
            raise TaskError(f"{folder} has no {required}, which the goal file needs")
    return Task(folder, spec, files)


def init_task(path: Path | str) -> Path:
    """Copy the bundled template into a new (or empty) folder and return it."""
    folder = Path(path)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise TaskError(f"{folder} already exists and is not an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    template = template_path()
    for name in TEMPLATE_FILES:
        shutil.copyfile(template / name, folder / name)
    return folder


def template_path() -> Path:
    """The bundled task's folder on disk (a data-only package, found wherever it was installed)."""
    spec = importlib.util.find_spec("train_template")
    for location in spec.submodule_search_locations if spec else ():
        if Path(location, GOAL_FILE).is_file():
            return Path(location)
    raise TaskError("the bundled task template is missing from this installation")
