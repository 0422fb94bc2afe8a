"""The results store: one run's rows, appended durably as Parquet that any reader can open."""

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from engine.rundir.store import COMPACT_EVERY, ROW_FIELDS, ResultStore

METRICS = ["val_bpb", "peak_memory_gb"]


def row(n: int, **fields) -> dict:
    """A finished experiment's row; `fields` override or add columns."""
    return {
        "exp_id": f"e{n}", "run": "run-1", "kind": "candidate", "island": n % 2,
        "agent": "agent-0", "commit": f"{n:07x}" + "f" * 33, "parent": "base",
        "description": f"change {n}", "status": "ok", "objective": 3.0 + n / 8, "seed": n,
        "budget_s": 300.0, "queued_at": 1_700_000_000.125 + n, "started_at": 1_700_000_001.5 + n,
        "finished_at": None, "val_bpb": 3.0 + n / 8, "peak_memory_gb": 1.25, **fields,
    }


def part_files(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_rows_read_back_the_same_and_in_order_after_reopening(tmp_path):
    store = ResultStore(tmp_path, METRICS)
    for n in range(3):
        store.append_row(row(n, island=None if n == 2 else n))
    reopened = ResultStore(tmp_path, METRICS)
    assert len(reopened) == 3
    assert reopened.rows() == store.rows()
    assert [r["exp_id"] for r in reopened.rows()] == ["e0", "e1", "e2"]
    assert reopened.rows()[1]["queued_at"] == 1_700_000_001.125
    assert reopened.rows()[2]["island"] is None


def test_missing_keys_become_null_or_empty(tmp_path):
    store = ResultStore(tmp_path, METRICS)
    store.append_row({"exp_id": "e0", "status": "crash"})
    (only,) = ResultStore(tmp_path, METRICS).rows()
    assert only["objective"] is None and only["started_at"] is None and only["val_bpb"] is None
    assert only["agent"] == "" and only["tokens"] == 0 and only["budget_s"] == 0.0


def test_the_folder_reads_as_one_table_with_plain_pyarrow(tmp_path):
    store = ResultStore(tmp_path, METRICS)
    for n in range(3):
        store.append_row(row(n))
    table = ds.dataset(tmp_path).to_table()
    assert table.num_rows == 3
    assert table.column_names == [field.name for field in ROW_FIELDS] + METRICS
    assert table.schema.field("island").type == pa.int32()
    assert table.schema.field("queued_at").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("tokens").type == pa.int64()
    assert table.schema.field("val_bpb").type == pa.float64()
    assert table["exp_id"].to_pylist() == ["e0", "e1", "e2"]


def test_single_row_parts_are_merged_after_256_and_every_row_is_kept_once(tmp_path):
    store = ResultStore(tmp_path, METRICS)
    for n in range(COMPACT_EVERY + 2):
        store.append_row(row(n))
    assert part_files(tmp_path) == ["part-00000000-00000255.parquet",
                                    "part-00000256-00000256.parquet",
                                    "part-00000257-00000257.parquet"]
    expected = [f"e{n}" for n in range(COMPACT_EVERY + 2)]
    assert [r["exp_id"] for r in ResultStore(tmp_path, METRICS).rows()] == expected
    assert ds.dataset(tmp_path).to_table()["exp_id"].to_pylist() == expected


def test_an_interrupted_compaction_leaves_no_duplicates_on_reopening(tmp_path):
    store = ResultStore(tmp_path, METRICS)
    for n in range(3):
        store.append_row(row(n))
    # The merged part was written, the parts it covers not yet deleted.
    originals = part_files(tmp_path)
    merged = pa.concat_tables(pq.read_table(tmp_path / name) for name in originals)
    pq.write_table(merged, tmp_path / "part-00000000-00000002.parquet")
    reopened = ResultStore(tmp_path, METRICS)
    assert [r["exp_id"] for r in reopened.rows()] == ["e0", "e1", "e2"]
    assert part_files(tmp_path) == ["part-00000000-00000002.parquet"]
    reopened.append_row(row(3))
    assert ds.dataset(tmp_path).to_table().num_rows == 4


def test_a_stray_temporary_file_is_ignored_and_removed(tmp_path):
    ResultStore(tmp_path, METRICS).append_row(row(0))
    (tmp_path / ".part-00000001-00000001.parquet.tmp").write_bytes(b"PAR1 half a part")
    assert ds.dataset(tmp_path).to_table().num_rows == 1
    assert len(ResultStore(tmp_path, METRICS)) == 1
    assert part_files(tmp_path) == ["part-00000000-00000000.parquet"]


def test_unknown_keys_raise_and_write_nothing(tmp_path):
    store = ResultStore(tmp_path, METRICS)
    with pytest.raises(ValueError, match="colour"):
        store.append_row(row(0, colour="blue"))
    assert len(store) == 0 and part_files(tmp_path) == []


def test_reopening_with_other_metrics_raises(tmp_path):
    ResultStore(tmp_path, METRICS).append_row(row(0))
    with pytest.raises(ValueError, match="other columns"):
        ResultStore(tmp_path, ["val_bpb"])


def test_a_run_dir_from_before_a_column_was_added_gets_it_null_and_takes_new_rows(tmp_path):
    # Written by a version without the loss curve column and the steps_per_s metric.
    ResultStore(tmp_path, METRICS).append_row(row(0))
    (old_part,) = tmp_path.iterdir()
    pq.write_table(pq.read_table(old_part).drop_columns(["loss_curve"]), old_part)
    store = ResultStore(tmp_path, [*METRICS, "steps_per_s"])
    store.append_row(row(1, steps_per_s=9.5, loss_curve="[[0, 5.5], [99, 2.0]]"))
    (old, new) = ResultStore(tmp_path, [*METRICS, "steps_per_s"]).rows()
    assert (old["exp_id"], old["val_bpb"], old["loss_curve"], old["steps_per_s"]) == (
        "e0", 3.0, None, None)
    assert (new["loss_curve"], new["steps_per_s"]) == ("[[0, 5.5], [99, 2.0]]", 9.5)
    table = ds.dataset(tmp_path).to_table()  # one schema again, for any reader
    assert table["loss_curve"].to_pylist() == [None, "[[0, 5.5], [99, 2.0]]"]


def test_log_tail_keeps_its_last_4000_characters(tmp_path):
    store = ResultStore(tmp_path, METRICS)
    store.append_row(row(0, log_tail="start\n" + "x" * 3999 + "E"))
    assert store.rows()[0]["log_tail"] == "x" * 3999 + "E"
    assert ResultStore(tmp_path, METRICS).rows()[0]["log_tail"] == "x" * 3999 + "E"


def test_export_tsv_writes_the_original_autoresearch_format(tmp_path):
    store = ResultStore(tmp_path / "results", METRICS)
    store.append_row(row(1, objective=3.9876544, description="baseline", peak_memory_gb=1.26))
    store.append_row(row(2, objective=4.1, description="wider\tmlp\nand more"))
    store.append_row(row(3, status="crash", objective=None, peak_memory_gb=None))
    store.append_row(row(4, status="rejected", objective=None))
    store.append_row(row(5, status="timeout", objective=None))
    store.append_row(row(6, status="interrupted", objective=None))
    store.append_row(row(7, status="invalid", objective=2.5, description="too big"))
    store.export_tsv(tmp_path / "results.tsv", "val_bpb", kept={"e1"})
    assert (tmp_path / "results.tsv").read_text() == (
        "commit\tval_bpb\tmemory_gb\tstatus\tdescription\n"
        "0000001\t3.987654\t1.3\tkeep\tbaseline\n"
        "0000002\t4.100000\t1.2\tdiscard\twider mlp and more\n"
        "0000003\t0.000000\t0.0\tcrash\tchange 3\n"
        "0000005\t0.000000\t1.2\tcrash\tchange 5\n"
        "0000007\t2.500000\t1.2\tdiscard\ttoo big\n"
    )
    assert part_files(tmp_path) == ["results", "results.tsv"]


def test_results_tsv_lists_merged_rows_the_same_before_and_after_reopening(tmp_path):
    store = ResultStore(tmp_path / "results", METRICS)
    for n in range(COMPACT_EVERY + 2):
        store.append_row(row(n, log_tail="step 1 loss 3.2\n" * 50))
    store.export_tsv(tmp_path / "before.tsv", "val_bpb", kept={"e3"})
    reopened = ResultStore(tmp_path / "results", METRICS)
    reopened.export_tsv(tmp_path / "after.tsv", "val_bpb", kept={"e3"})
    lines = (tmp_path / "before.tsv").read_text().splitlines()
    assert len(lines) == 1 + COMPACT_EVERY + 2
    assert lines[4] == "0000003\t3.375000\t1.2\tkeep\tchange 3"
    assert (tmp_path / "after.tsv").read_text() == (tmp_path / "before.tsv").read_text()
    assert reopened.rows()[0]["log_tail"] == "step 1 loss 3.2\n" * 50
