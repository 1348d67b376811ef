"""A batch run commits each batch on a thread of its own while the next is made
(transforms.warehouse.sink.WriteEventsFn, overlap): what it writes, counts and dead-letters is
what a run without overlap gives, a failed commit included, in the middle of the bundle or for
its last batch (settled in finish_bundle).

The failing commit is injected by wrapping the real DuckDB commit: no real input makes a
correct transaction fail, which is the point."""
import json
import threading

import duckdb
import yaml

from pipeline.main import run
from tests.conftest import rows
from transforms.warehouse.duckdb_backend import DuckDBWarehouse


def track(i: int, message_id: str = None) -> dict:
    return {"type": "track", "event": "Order Completed", "userId": f"u{i}", "messageId": message_id or f"m-{i}",
            "properties": {"order_id": f"o{i}", "total": i}}


def run_file(tmp_path, events: list, batch_size: int) -> tuple:
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (tmp_path / "sluice.yaml").write_text(yaml.safe_dump({"warehouse": {"batch_size": batch_size}}))
    summary = run(["--input_files", str(tmp_path / "in.jsonl"), "--config", str(tmp_path / "sluice.yaml"),
                   "--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        stored = sorted(r["message_id"] for r in rows(conn, "SELECT message_id FROM tracks"))
        letters = rows(conn, "SELECT error_type, message_id, error_stage FROM _dead_letters")
    return summary, stored, letters


def test_commits_run_beside_the_bundle_and_a_failed_one_is_retried_event_by_event(tmp_path, monkeypatch):
    real = DuckDBWarehouse.commit_prepared
    threads = set()

    def commit(self, prepared):
        threads.add(threading.current_thread().name)
        if any(e.body["messageId"].startswith("boom") for e in prepared.events):
            raise duckdb.IOException("injected: the disk is full")
        return real(self, prepared)
    monkeypatch.setattr(DuckDBWarehouse, "commit_prepared", commit)
    # batches of 3: "boom-mid" in the second batch, "boom-last" in the last one (settled at the bundle's end)
    events = [track(0), track(1), track(2), track(3), track(4, "boom-mid"), track(5), track(6), track(7, "boom-last")]
    summary, stored, letters = run_file(tmp_path, events, batch_size=3)
    assert summary["conservation"]["holds"], summary
    assert summary["dead_lettered"] == {"insert_failed": 2}
    assert stored == [f"m-{i}" for i in (0, 1, 2, 3, 5, 6)]  # the failed batches' other events, one by one
    assert sorted((r["error_type"], r["message_id"], r["error_stage"]) for r in letters) == [
        ("insert_failed", "boom-last", "warehouse"), ("insert_failed", "boom-mid", "warehouse")]
    assert any(name.startswith("sluice-commit") for name in threads), threads  # committed beside the bundle


def test_an_overlapped_run_stores_and_counts_what_a_plain_write_does(tmp_path):
    events = [track(i) for i in range(40)] + [track(3)]  # a repeat within the run: the duplicate drop
    summary, stored, letters = run_file(tmp_path, events, batch_size=7)
    assert summary["conservation"]["holds"], summary
    assert summary["stored"] == 40 and summary["dropped"] == {"duplicate": 1} and letters == []
    assert stored == sorted(f"m-{i}" for i in range(40))
    again, _, _ = run_file(tmp_path, events, batch_size=7)  # a re-run: every event stored already
    assert again["stored"] == 0 and again["dropped"] == {"duplicate": 41}


def test_a_transaction_failing_half_way_leaves_nothing_and_the_retry_stores_each_event_once(tmp_path, monkeypatch):
    """The batch's script fails after its INSERTs ran (a statement injected before COMMIT): they
    are rolled back, and the retry one event at a time stores every event once."""
    real = DuckDBWarehouse.commit_prepared
    failed = []

    def commit(self, prepared):
        if not failed and prepared.script:
            failed.append(prepared)
            head, _, _ = prepared.script.rpartition(";\n")  # without its COMMIT
            prepared = prepared._replace(script=f"{head};\nSELECT error('injected after the inserts');\nCOMMIT")
        return real(self, prepared)
    monkeypatch.setattr(DuckDBWarehouse, "commit_prepared", commit)
    summary, stored, letters = run_file(tmp_path, [track(i) for i in range(5)], batch_size=10)
    assert failed and summary["conservation"]["holds"], summary
    assert summary["stored"] == 5 and letters == []
    assert stored == [f"m-{i}" for i in range(5)]  # once each: the first INSERTs were rolled back
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM _sluice_message_keys").fetchone()[0] == 5


def _bulk_counted(monkeypatch) -> list:
    from pipeline import summary as summaries
    counted = []
    real = summaries.counters_from_result
    monkeypatch.setattr(summaries, "counters_from_result", lambda result: counted.append(real(result)) or counted[-1])
    return counted


def test_structures_are_read_ahead_on_the_committer_while_the_batch_fills(tmp_path, monkeypatch):
    """Parts of 16 events are read as they fill, on the committer's thread; the commit finds them
    and queries nothing itself; the run's duplicate (a repeat of an event stored before) is in a part
    read but stored once."""
    from transforms.warehouse import duckdb_backend, shred
    monkeypatch.setattr(shred, "STRUCTURE_ROWS", 16)
    read, own = [], []
    real_read, real_rows = DuckDBWarehouse.read_structures, duckdb_backend._structure_rows

    def read_structures(self, shreds):
        read.append((threading.current_thread().name, len(shreds)))
        read_structures.inside = True
        try:
            return real_read(self, shreds)
        finally:
            read_structures.inside = False

    def structure_rows(conn, count):
        if not read_structures.inside:
            own.append(count)  # the commit reading its batch's structure itself
        return real_rows(conn, count)
    read_structures.inside = False
    monkeypatch.setattr(DuckDBWarehouse, "read_structures", read_structures)
    monkeypatch.setattr(duckdb_backend, "_structure_rows", structure_rows)
    counted = _bulk_counted(monkeypatch)
    events = [track(i) for i in range(100)] + [track(3)]
    summary, stored, _ = run_file(tmp_path, events, batch_size=40)
    assert summary["conservation"]["holds"] and summary["stored"] == 100 and summary["dropped"] == {"duplicate": 1}
    assert all(name.startswith("sluice-commit") for name, _ in read) and sum(n for _, n in read) == 101
    assert max(n for _, n in read) == 16 and own == []
    assert counted[0]["stored_in_bulk"] > 50  # the first batch (40) makes the table; later ones go in bulk
    assert len(stored) == 100


def test_a_part_read_ahead_that_fails_leaves_the_commit_to_read_the_structure_itself(tmp_path, monkeypatch):
    """A failure reading a part ahead (injected around the real method) costs the read-ahead, not
    the batch: the commit reads its structure itself and the batch still goes in bulk."""
    from transforms.warehouse import shred
    monkeypatch.setattr(shred, "STRUCTURE_ROWS", 16)
    real_read = DuckDBWarehouse.read_structures
    calls = []

    def read_structures(self, shreds):
        calls.append(len(shreds))
        if len(calls) % 2 == 0:
            raise duckdb.IOException("injected")
        return real_read(self, shreds)
    monkeypatch.setattr(DuckDBWarehouse, "read_structures", read_structures)
    counted = _bulk_counted(monkeypatch)
    summary, stored, letters = run_file(tmp_path, [track(i) for i in range(100)], batch_size=40)
    assert summary["conservation"]["holds"] and summary["stored"] == 100 and letters == []
    assert len(calls) > 4 and counted[0]["stored_in_bulk"] > 50 and len(stored) == 100


def test_a_failure_making_a_parts_bulk_form_is_its_batchs_dead_letters_not_a_failed_run(tmp_path, monkeypatch):
    """Reading ahead runs in process(), outside FallibleFn's handler: a part whose bulk form cannot
    be made (a fault injected around the real shred.shreddable) is not read ahead, and prepare_events
    meets the failure again where it becomes the batch's internal_error dead letters."""
    from transforms.warehouse import shred
    real = shred.shreddable

    def shreddable(event, exposures=None):
        if event.body["messageId"] == "boom":
            raise RuntimeError("injected")
        return real(event, exposures)
    monkeypatch.setattr(shred, "shreddable", shreddable)
    monkeypatch.setattr(shred, "STRUCTURE_ROWS", 2)
    events = [track(i) for i in range(8)] + [track(8, "boom")] + [track(i) for i in range(9, 12)]
    summary, stored, letters = run_file(tmp_path, events, batch_size=4)
    assert summary["conservation"]["holds"], summary
    assert summary["dead_lettered"] == {"internal_error": 4}  # the batch of the marked event, whole
    assert stored == sorted(f"m-{i}" for i in range(8))
    assert {r["message_id"] for r in letters} == {"boom", "m-9", "m-10", "m-11"}
