"""The journal of a run: every experiment the driver committed itself to run, in order.

An experiment is journaled (appended and fsynced) the moment it is queued, before any GPU sees
it; its result arrives later in the results store. After a stop of any kind, the experiments in
the journal with no completed row are exactly the ones that were queued or in flight: `resume`
queues them again, and no experiment with a result ever runs twice.

    RUN_DIR/journal.jsonl   one JSON object per queued experiment (records.Experiment, without
                            its files: they are in the run's git at its commit)
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class Journal:
    """Append-only, one line per entry (an experiment; a tuning's trial in its ledger,
    engine/tuning/tune_run.py); a line cut short by a crash is ignored on reading."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file = None

    def append(self, entry: dict) -> None:
        """Write one entry durably (on disk, fsynced, before this returns)."""
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        self._file.write(json.dumps(entry) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def entries(self) -> list[dict]:
        """Every complete entry, in the order they were written."""
        if not self.path.exists():
            return []
        entries = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the last line of a driver killed mid-write
        return entries

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
