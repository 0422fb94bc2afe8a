"""The results store of one search run: every experiment's row, append-only, in Parquet.

The folder (a run's `results/`) reads as one table without this project, through
`pyarrow.dataset.dataset("results")`, DuckDB's `read_parquet('results/*.parquet')` or pandas'
`read_parquet("results")`: every part file has one schema, the fixed columns of ROW_FIELDS and then
a nullable float64 column per metric the store was opened with. A run dir written before a
nullable column was added gets it, null in its old rows, when a store opens it.

Each `append` writes its row as a new part file, `part-<first>-<last>.parquet` (the zero-padded
sequence numbers of the rows it holds), under a temporary name that readers skip (a leading dot, a
`.tmp` suffix), fsyncs it, renames it into place and fsyncs the folder: a crash at any moment
leaves the whole row on disk or none of it. Every COMPACT_EVERY single-row parts are merged into
one part over their range, written the same way, before they are deleted; a crash in between
leaves rows twice, so opening deletes any part whose range lies inside a bigger part's. Opening
also removes stray temporary files.

In memory the store keeps only what a long run needs at every result: the rows not merged yet, and
of the merged ones the few columns of results.tsv, as Arrow (about 200 bytes a row, where a row as
Python objects with its log tail takes several KB). `rows()` reads the folder. One process (the
driver) writes a store; a reader that lists the folder during a compaction can see rows twice or
miss a file, and should read again.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from engine.experiment.records import Result, Status

_S, _F, _T = pa.string(), pa.float64(), pa.timestamp("ms", tz="UTC")
# Nullable: absent from some rows, or from the parts of a run older than the column.
_NULLABLE = ("island", "objective", "started_at", "finished_at", "loss_curve", "strategy",
             "model")
ROW_FIELDS: tuple[pa.Field, ...] = tuple(
    pa.field(name, kind, nullable=name in _NULLABLE) for name, kind in [
        ("exp_id", _S), ("run", _S), ("kind", _S), ("island", pa.int32()), ("agent", _S),
        ("commit", _S), ("parent", _S),
        ("confirms", _S),  # a confirmation or control run: the commit of the candidate it serves
        ("description", _S), ("status", _S), ("objective", _F),
        ("seed", pa.int64()), ("budget_s", _F), ("queued_at", _T), ("started_at", _T),
        ("finished_at", _T), ("train_wall_s", _F), ("eval_wall_s", _F), ("node", _S),
        ("gpu", _S), ("accelerator", _S),  # the GPU model Ray reports for the node; cpu: none
        ("cost_usd", _F), ("tokens", pa.int64()), ("message", _S), ("log_tail", _S),
        ("left_behind", pa.int32()), ("data_fingerprint", _S),
        ("trial", _S), ("knobs", _S),  # a tuning trial: Tune's id, its knob values as JSON
        ("loss_curve", _S),  # [[step, training loss], ...] as JSON (engine/experiment/progress.py)
        ("strategy", _S), ("model", _S),  # an agent's change: its strategy, the model that wrote it
    ]
)
TIMESTAMPS = ("queued_at", "started_at", "finished_at")
LOG_TAIL_CHARS = 4000
COMPACT_EVERY = 256
_PART = re.compile(r"part-(\d+)-(\d+)\.parquet")
READ_ATTEMPTS = 5
_TSV_COLUMNS = ("exp_id", "commit", "status", "objective", "description", "peak_memory_gb")


class ResultStore:
    """The rows of one search run, kept in `folder` as Parquet parts and in memory."""

    def __init__(self, folder: Path, metric_names: Sequence[str]) -> None:
        """Open (or create) the store in `folder` (the run dir's `results/` folder), with one
        column per name in `metric_names`. Reads existing rows; raises ValueError if the folder
        holds rows with other columns or has rows missing."""
        self.schema = pa.schema([*ROW_FIELDS, *(pa.field(n, pa.float64()) for n in metric_names)])
        if len(set(self.schema.names)) != len(self.schema):
            raise ValueError(f"metric names repeat or clash with a fixed column: {metric_names}")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for stray in self.folder.glob(".part-*.tmp"):
            stray.unlink()
        self._count = 0
        self._loose: list[tuple[Path, pa.Table]] = []  # single-row parts not merged yet
        self._merged_tsv: list[pa.Table] = []  # the TSV_COLUMNS of the merged parts' rows
        for first, last, path in self._surviving_parts():
            self._add_new_columns(path)
            if first == last:
                self._loose.append((path, self._read_part(path)))
            else:  # of a merged part, only what results.tsv needs: log tails stay on disk
                self._merged_tsv.append(self._read_part(path, self._tsv_columns))
            self._count = last + 1

    def append(self, result: Result) -> None:
        """Write one result durably (see append_row); metrics without a column are left out."""
        self.append_row({name: value for name, value in result.to_row().items()
                         if name in self.schema.names})

    def append_row(self, row: dict) -> None:
        """Write one row durably (the data is on disk, fsynced, before this returns).

        Timestamps arrive as float seconds since the epoch (or None); missing keys become null
        (or "" / 0 for non-nullable strings/numbers); unknown keys raise ValueError. log_tail is
        capped at LOG_TAIL_CHARS characters (keeping the end)."""
        unknown = sorted(set(row) - set(self.schema.names))
        if unknown:
            raise ValueError(f"unknown result columns: {', '.join(unknown)}")
        table = pa.Table.from_pylist([self._arrow_row(row)], schema=self.schema)
        self._loose.append((self._write_part(self._count, table), table))
        self._count += 1
        if len(self._loose) >= COMPACT_EVERY:
            self._compact()

    def results(self) -> list[Result]:
        """Every result so far, in append order, read from the folder."""
        return [Result.from_row(row) for row in self.rows()]

    def rows(self) -> list[dict]:
        """Every row so far, in append order, as plain dicts (timestamps as float epoch seconds),
        read from the folder."""
        return [row for _, _, path in self._surviving_parts()
                for row in _to_rows(self._read_part(path))]

    def __len__(self) -> int:
        return self._count

    def export_tsv(self, path: Path, objective: str, kept: set[str]) -> None:
        """Write results.tsv in the original autoresearch's format, replacing `path` atomically:
        the short commit, the objective (0 when none), peak_memory_gb, keep (exp_id in `kept`),
        crash (crash or timeout) or discard, and the description. Rejected, interrupted or stopped
        (a tuning trial cut early) rows, which never trained to the end, are left out."""
        lines = [f"commit\t{objective}\tmemory_gb\tstatus\tdescription"]
        tables = [*self._merged_tsv, *(table.select(self._tsv_columns) for _, table in self._loose)]
        if not tables:
            tables = [self.schema.empty_table().select(self._tsv_columns)]
        columns = pa.concat_tables(tables).to_pydict()
        memories = columns.get("peak_memory_gb") or [None] * len(columns["exp_id"])
        for exp_id, commit, status, value, description, memory in zip(
                columns["exp_id"], columns["commit"], columns["status"], columns["objective"],
                columns["description"], memories, strict=True):
            if not Status(status).in_tsv:
                continue
            status = ("keep" if exp_id in kept
                      else "crash" if status in (Status.CRASH, Status.TIMEOUT) else "discard")
            description = re.sub(r"[\t\r\n]", " ", description)
            lines.append(f"{commit[:7]}\t{value or 0.0:.6f}\t{memory or 0.0:.1f}\t{status}"
                         f"\t{description}")
        text = "\n".join(lines) + "\n"
        _replace(Path(path), lambda file: file.write(text.encode("utf-8")))

    def _arrow_row(self, row: dict) -> dict:
        """`row` as the columns take it: defaults filled in, times in ms, the log tail capped."""
        values = {}
        for field in self.schema:
            value = row.get(field.name)
            if value is None and not field.nullable:
                value = "" if pa.types.is_string(field.type) else 0
            elif value is not None and field.name in TIMESTAMPS:
                value = round(value * 1000)
            values[field.name] = value
        values["log_tail"] = values["log_tail"][-LOG_TAIL_CHARS:]
        return values

    def _compact(self) -> None:
        """Merge the single-row parts into one part covering their range, then delete them."""
        first = self._count - len(self._loose)
        merged = pa.concat_tables([table for _, table in self._loose]).combine_chunks()
        self._write_part(first, merged)
        for path, _ in self._loose:
            path.unlink()
        _fsync_folder(self.folder)
        self._merged_tsv.append(merged.select(self._tsv_columns))
        self._loose = []

    @property
    def _tsv_columns(self) -> list[str]:
        return [name for name in _TSV_COLUMNS if name in self.schema.names]

    def _add_new_columns(self, path: Path) -> None:
        """Rewrite a part written before some of this store's columns existed (by an earlier
        version of autoresearch) with those columns null, so that the folder keeps one schema.
        A part with a column this store lacks, or of another type, is left for _read_part to
        refuse."""
        schema = pq.read_schema(path)
        added = [field for field in self.schema if field.name not in schema.names]
        if not added or not all(field.nullable for field in added) or not all(
                field.name in self.schema.names and self.schema.field(field.name).type == field.type
                for field in schema):
            return
        table = pq.read_table(path)
        upgraded = pa.Table.from_arrays(
            [table[field.name] if field.name in schema.names
             else pa.chunked_array([pa.nulls(table.num_rows, field.type)], field.type)
             for field in self.schema], schema=self.schema)
        _replace(path, lambda file: pq.write_table(upgraded, file))

    def _read_part(self, path: Path, columns: list[str] | None = None) -> pa.Table:
        """The part at `path` (only `columns` of it, when given); ValueError when its columns
        are not this store's."""
        schema = pq.read_schema(path)
        if not schema.equals(self.schema):
            raise ValueError(f"{path} has other columns than this store: {schema.names}")
        return pq.read_table(path, columns=columns)

    def _write_part(self, first: int, table: pa.Table) -> Path:
        """Write `table`, rows `first` on, as the part file named for their range."""
        path = self.folder / f"part-{first:08d}-{first + table.num_rows - 1:08d}.parquet"
        _replace(path, lambda file: pq.write_table(table, file))
        return path

    def _surviving_parts(self) -> list[tuple[int, int, Path]]:
        """(first, last, path) of each part file in sequence order, once the parts that a merged
        part covers (left by a compaction that was cut short) are deleted."""
        found = sorted((int(match[1]), int(match[2]), path) for path in self.folder.iterdir()
                       if (match := _PART.fullmatch(path.name)))
        parts = [(first, last, path) for first, last, path in found
                 if not any(a <= first and last <= b and b - a > last - first
                            for a, b, _ in found)]
        for _, _, path in set(found) - set(parts):
            path.unlink()
        _fsync_folder(self.folder)
        expected = 0  # a gap would lose rows, and later make an append clash with a part
        for first, last, path in parts:
            if first != expected:
                raise ValueError(f"damaged results store: {path} should start at row {expected}")
            expected = last + 1
        return parts


def read_rows(folder: Path) -> list[dict]:
    """Every experiment's row of a results folder, once each, in the order they were appended;
    an experiment interrupted and run again after a resume has its last row. This is for readers
    other than the driver (status, report, a running search's onlookers): the driver may merge
    parts while they read, so a part that vanished between listing and reading makes it read
    again, and a row seen in two parts is kept once."""
    for _ in range(READ_ATTEMPTS - 1):
        try:
            return _read_once(folder)
        except (OSError, pa.ArrowInvalid):
            continue  # a part was merged away while this read: list the folder again
    return _read_once(folder)


def _read_once(folder: Path) -> list[dict]:
    # The part names carry the rows' sequence numbers, so sorted names are append order.
    parts = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not parts:
        return []
    rows: dict[str, dict] = {}
    for row in ds.dataset([str(p) for p in parts], format="parquet").to_table().to_pylist():
        for name in TIMESTAMPS:
            row[name] = row[name].timestamp() if row[name] is not None else None
        rows.pop(row["exp_id"], None)
        rows[row["exp_id"]] = row
    return list(rows.values())


def _to_rows(table: pa.Table) -> list[dict]:
    """The table's rows as plain dicts, the timestamps as float seconds since the epoch."""
    for name in TIMESTAMPS:
        milliseconds = table[name].cast(pa.int64()).cast(pa.float64())
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pc.divide(milliseconds, 1000.0))
    return table.to_pylist()


def _replace(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write `path` whole or not at all: to a temporary name, fsynced, then renamed over it."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the renames and deletions in `folder` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
