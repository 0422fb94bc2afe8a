"""train.py's progress file: read while it trains, and summed up once it has ended.

The file (docs/writing-a-task.md) holds one JSON object a line: a training step,
`{"step": 12, "loss": 2.31, "time": 1712345678.9}`, from the kit's `report`, and from the kit's
hand-over `{"peak_cuda_memory_gb": 1.2}` and `{"export_s": 0.8}`. The candidate writes it, so it
is read with care: a regular file only, at most READ_LIMIT_BYTES, lines that do not parse skipped.

What the engine measures from it, for every experiment:

    steps             the steps reported
    steps_per_s       steps a second from the first report to the last, by train.py's clock (so
                      the start-up and the hand-over do not count)
    final_train_loss  the mean loss of the last SMOOTHING steps
    loss_spikes       steps whose loss exceeds SPIKE_RATIO times the median of the SMOOTHING
                      steps before them
    loss curve        the loss at CURVE_POINTS steps evenly spaced from the first to the last,
                      each the mean of the SMOOTHING steps up to it (the last is final_train_loss)
"""

from __future__ import annotations

import json
import os
import stat
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

READ_LIMIT_BYTES = 64 * 2**20  # of a file the candidate wrote, read by the runner
SMOOTHING = 10
SPIKE_RATIO = 1.5
CURVE_POINTS = 6  # enough to tell a slow start from an early plateau, few enough for a prompt


@dataclass(frozen=True)
class Progress:
    """One training step as train.py reported it (prepare.report), while it trains."""

    step: int
    loss: float  # the training loss of that step
    elapsed_s: float  # seconds since train.py reported its first step, by train.py's clock


ProgressCallback = Callable[[Progress], None]


class ProgressReader:
    """Hands each step train.py appends to its progress file to a callback, as it appears."""

    def __init__(self, path: Path, callback: ProgressCallback) -> None:
        self.path, self.callback = path, callback
        self.offset = 0  # bytes already read: only whole lines are consumed
        self.first_time: float | None = None

    def __call__(self) -> None:
        progress = open_regular(self.path)
        if progress is None:
            return
        with progress:
            progress.seek(self.offset)
            chunk = progress.read(READ_LIMIT_BYTES)
        whole = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(whole)
        for record in _records(whole.decode(errors="replace")):
            if (reported := _step_of(record)) is None:
                continue
            step, loss, at = reported
            if self.first_time is None:
                self.first_time = at
            self.callback(Progress(step, loss, at - self.first_time))


@dataclass
class ProgressFile:
    """What train.py's progress file held once it ended."""

    steps: list[int] = field(default_factory=list)  # each reported step, in order
    losses: list[float] = field(default_factory=list)  # its training loss
    times: list[float] = field(default_factory=list)  # its wall-clock time (time.time())
    peak_cuda_gb: float | None = None  # the kit's hand-over, on a GPU
    export_s: float | None = None  # how long the kit's hand-over took

    @classmethod
    def read(cls, path: Path) -> ProgressFile:
        found = cls()
        progress = open_regular(path)
        if progress is None:
            return found
        with progress:
            text = progress.read(READ_LIMIT_BYTES).decode(errors="replace")
        for record in _records(text):
            if (reported := _step_of(record)) is not None:
                step, loss, at = reported
                found.steps.append(step)
                found.losses.append(loss)
                found.times.append(at)
            if _is_number(record.get("peak_cuda_memory_gb")):
                found.peak_cuda_gb = float(record["peak_cuda_memory_gb"])
            if _is_number(record.get("export_s")):
                found.export_s = float(record["export_s"])
        return found

    @property
    def first_step_at(self) -> float | None:
        """The wall-clock time of the first reported step."""
        return self.times[0] if self.times else None

    def measures(self) -> dict[str, float]:
        """Steps, throughput, final training loss and loss spikes (see the module docstring)."""
        losses = self.losses
        if not losses:
            return {"steps": 0.0}
        spikes = sum(1 for i in range(SMOOTHING, len(losses))
                     if losses[i] > SPIKE_RATIO * statistics.median(losses[i - SMOOTHING : i]))
        measured = {"steps": float(len(losses)), "final_train_loss": self._smoothed(len(losses)),
                    "loss_spikes": float(spikes)}
        span = self.times[-1] - self.times[0]
        if span > 0:
            measured["steps_per_s"] = (len(losses) - 1) / span
        return measured

    def loss_curve(self) -> list[tuple[int, float]]:
        """The training loss at up to CURVE_POINTS reported steps evenly spaced from the first to
        the last, as (step, loss), each loss the mean of the SMOOTHING steps up to it."""
        last = len(self.losses) - 1
        if last < 0:
            return []
        at = sorted({round(k * last / (CURVE_POINTS - 1)) for k in range(CURVE_POINTS)})
        return [(self.steps[i], self._smoothed(i + 1)) for i in at]

    def _smoothed(self, end: int) -> float:
        """The mean loss of the SMOOTHING steps before position `end`."""
        return statistics.fmean(self.losses[max(end - SMOOTHING, 0) : end])


def open_regular(path: Path) -> BinaryIO | None:
    """`path` open for reading if it is a regular file and not a link; None otherwise. Opened
    without blocking, so that a pipe the candidate swaps in at any moment cannot hang the runner."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        return None
    return os.fdopen(descriptor, "rb")


def _records(text: str) -> list[dict]:
    """The JSON objects of the file's lines, skipping whatever does not parse as one."""
    found = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            found.append(record)
    return found


def _step_of(record: dict) -> tuple[int, float, float] | None:
    """(step, loss, time) of a record that reports a training step; None for any other."""
    if not all(_is_number(record.get(key)) for key in ("step", "loss", "time")):
        return None
    return int(record["step"]), float(record["loss"]), float(record["time"])


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
