"""Fates the embedded loader gives the debugger's entries, against a real collector
(`serve --warehouse duckdb:///...`, its own process; tests/collector/serving.py)."""
import json
import time

import pytest

from tests.collector.serving import SOURCES, basic, request

pytestmark = pytest.mark.slow
HANG_GUARD_SECONDS = 60


def _entries(url: str) -> list:
    status, _, body = request(url + "/debugger/api/events?limit=1000")
    assert status == 200, body
    return json.loads(body)["events"]


def _settled(url: str, count: int) -> list:
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while True:
        found = _entries(url)
        if len(found) == count and all(e["fate"]["status"] != "pending" for e in found):
            return found
        assert time.monotonic() < deadline, found
        time.sleep(0.2)


def test_two_sends_of_one_message_in_one_load_show_one_stored_and_one_duplicate(start_collector, tmp_path):
    """The warehouse keeps one row a message id: of two sends loaded together (one batch, so one
    spool file and one load) the first is the row, the second its duplicate."""
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"sources": SOURCES}))
    url = start_collector(["--config", str(config), "--warehouse", f"duckdb:///{tmp_path / 'w.duckdb'}"]).url
    send = {"type": "track", "event": "Twice", "userId": "u", "messageId": "twice-1"}
    once = {"type": "track", "event": "Once", "userId": "u", "messageId": "once-1"}
    body = json.dumps({"batch": [{**send, "properties": {"n": 1}}, once, {**send, "properties": {"n": 2}}]})
    status, _, _ = request(url + "/v1/batch", "POST", body.encode(),
                           {"Authorization": basic("key-server"), "Content-Type": "application/json"})
    assert status == 200
    found = sorted(_settled(url, 3), key=lambda e: e["id"])
    fates = [(e["message_id"], e["payload"].get("properties", {}).get("n"), e["fate"]["status"], e["fate"]["table"],
              e["fate"]["policy"]) for e in found]
    assert fates == [("twice-1", 1, "stored", "twice", None), ("once-1", None, "stored", "once", None),
                     ("twice-1", 2, "stored", "twice", "duplicate")]


class _Counting:
    """A real DuckDB cursor, noting each query and how many rows it gave (what a lookup costs)."""

    def __init__(self, cursor):
        self.cursor, self.queries = cursor, []

    def execute(self, sql, params=None):
        self.queries.append(sql)
        self._result = self.cursor.execute(sql, params) if params is not None else self.cursor.execute(sql)
        return self

    def fetchall(self):
        rows = self._result.fetchall()
        self.queries[-1] = (self.queries[-1], len(rows))
        return rows


def test_a_lookup_reads_only_the_deliveries_naming_its_ids_and_keys_only_after_duplicates(tmp_path):
    """On a warehouse the embedded loader wrote (transforms.warehouse.duckdb_backend), with 200
    forwarded batches of which one names the pending event."""
    from datetime import datetime, timedelta, timezone

    import duckdb

    from collector.debugger import fates
    from transforms.warehouse import planner
    from transforms.warehouse.duckdb_backend import KEYS_TABLE, SQL_TYPES
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    columns = ", ".join(f'"{n}" {SQL_TYPES[t]}' for n, t in planner.DELIVERY_COLUMNS)
    conn.execute(f"CREATE TABLE {fates.DELIVERIES} ({columns})")
    now = datetime.now(timezone.utc)
    names = [n for n, _ in planner.DELIVERY_COLUMNS]
    for batch in range(200):
        row = {"delivery_id": f"d{batch}", "destination": "crm", "requested_at": now, "status": "delivered",
               "http_status": 200, "attempts": 1, "latency_ms": 5.0,
               "message_ids": ["wanted-1" if batch == 7 else f"other-{batch}-{i}" for i in range(3)]}
        conn.execute(f"INSERT INTO {fates.DELIVERIES} VALUES ({', '.join('?' * len(names))})",
                     [row.get(n) for n in names])
    conn.execute(f"CREATE TABLE {KEYS_TABLE} (key UHUGEINT)")
    cursor = _Counting(conn.cursor())
    found = fates.lookup(cursor, {"wanted-1": ("track", "E")}, now - timedelta(minutes=1), {"dropped": {}})
    assert found["wanted-1"]["destinations"]["crm"]["status"] == "delivered"
    read = [q for q in cursor.queries if isinstance(q, tuple) and fates.DELIVERIES in q[0]]
    assert [rows for _, rows in read] == [1]   # the one batch naming it, not 200
    assert not any(KEYS_TABLE in (q[0] if isinstance(q, tuple) else q) for q in cursor.queries)
    cursor = _Counting(conn.cursor())
    fates.lookup(cursor, {"wanted-1": ("track", "E")}, now - timedelta(minutes=1), {"dropped": {"duplicate": 1}})
    assert any(KEYS_TABLE in (q[0] if isinstance(q, tuple) else q) for q in cursor.queries)


def test_an_entry_inspected_after_its_file_was_loaded_gets_its_fate_at_the_next_run(tmp_path):
    """The collector answers before the debugger inspects what it accepted, so a quick run can
    load a file before its events are entries: the next run looks them up in that run's rows."""
    from datetime import datetime, timezone

    import duckdb

    from collector.debugger.fates import Fates
    from collector.debugger.store import Entry, Store
    conn = duckdb.connect(str(tmp_path / "w.duckdb"))
    conn.execute("CREATE TABLE tracks (message_id VARCHAR, event VARCHAR, loaded_at TIMESTAMPTZ)")
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text(json.dumps({"source": "web", "batch": [{"type": "track", "event": "Late",
                                                              "messageId": "late-1"}]}) + "\n")
    second.write_text(json.dumps({"source": "web", "batch": [{"type": "track", "event": "Next",
                                                               "messageId": "next-1"}]}) + "\n")
    store = Store()
    fates = Fates(store, conn.cursor)
    conn.execute("INSERT INTO tracks VALUES ('late-1', 'late', ?)", [datetime.now(timezone.utc)])
    assert fates.loaded([str(first)], {"stored": 1}) == 0   # late-1 loaded, not yet an entry
    late = store.add(Entry("2026-12-03T00:00:00.000Z", "web", b"{}", 2, type="track", event="Late",
                           message_id="late-1"))
    nxt = store.add(Entry("2026-12-03T00:00:00.000Z", "web", b"{}", 2, type="track", event="Next",
                          message_id="next-1"))
    conn.execute("INSERT INTO tracks VALUES ('next-1', 'next', ?)", [datetime.now(timezone.utc)])
    assert fates.loaded([str(second)], {"stored": 1}) == 2
    assert (late.fate["status"], late.fate["table"]) == ("stored", "late")
    assert (nxt.fate["status"], nxt.fate["table"]) == ("stored", "next")
