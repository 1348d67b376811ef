"""benchmarks/peers.py and the row check of benchmarks/throughput.py: a run that lost events must
not pass for a fast one. (dlt itself is not installed here: `make bench` puts it in .bench/dlt.)"""
import sys
from pathlib import Path

import duckdb
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import peers  # noqa: E402
import throughput  # noqa: E402


@pytest.fixture(scope="module")
def events_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("peers") / "events.jsonl"
    messages, events = throughput.write_input(str(path), 600)
    assert messages < events  # batch envelopes are in it
    return str(path), events


def test_segment_rows_route_each_event_as_segment_lays_it_out():
    track = {"type": "track", "event": "Order Completed", "messageId": "m1", "properties": {"total": 3}}
    identify = {"type": "identify", "userId": "u1", "messageId": "m2", "traits": {"plan": "pro"}}
    page = {"type": "page", "messageId": "m3", "properties": {"path": "/"}}
    routed = list(peers.segment_rows([track, identify, page]))
    assert [table for table, _ in routed] == ["tracks", "track:Order Completed", "identifies", "users", "pages"]
    assert "total" not in routed[0][1] and routed[1][1]["total"] == 3
    assert routed[3][1] == {"id": "u1", "plan": "pro"}
    assert routed[4][1]["path"] == "/"


def test_reference_stores_every_event_and_the_check_catches_a_lost_one(events_file, tmp_path):
    path, events = events_file
    expected = peers.expected_rows(path)
    assert expected["events"] == events
    database = str(tmp_path / "reference.duckdb")
    assert peers.run_reference(path, database)["seconds"] > 0
    rows = throughput.check_rows("reference", database, "main", expected, one_row=False)
    assert sum(rows[t] for t in ("tracks", "identifies", "pages", "screens", "groups", "aliases")) == events
    with duckdb.connect(database) as connection:
        connection.execute("DELETE FROM tracks WHERE rowid = (SELECT min(rowid) FROM tracks)")
    with pytest.raises(SystemExit, match="did not store every event"):
        throughput.check_rows("reference", database, "main", expected, one_row=False)


def test_dlt_is_skipped_with_one_line_when_its_environment_is_missing(monkeypatch, tmp_path):
    monkeypatch.setattr(throughput, "DLT_PYTHON", ROOT / ".bench" / "absent" / "bin" / "python")
    reason = throughput.dlt_unusable()
    assert "missing" in reason and "\n" not in reason
