"""`python -m pipeline serve --warehouse duckdb:///PATH`, the real command: events sent are
rows a query sees while it serves; SIGTERM loads everything and releases the file; after a
kill -9 the next start loads every acknowledged event exactly once."""
import io
import json
import os
import threading
import time
from contextlib import redirect_stderr, redirect_stdout

import duckdb
import pytest

from pipeline import query as query_command
from tests.collector.serving import basic, request, write_config

pytestmark = pytest.mark.slow


def send(url: str, first: int, count: int) -> int:
    body = json.dumps({"batch": [{"type": "track", "event": "Item Viewed", "userId": f"u{n}",
                                  "messageId": f"serve-{n}", "properties": {"n": n}}
                                 for n in range(first, first + count)]}).encode()
    status, _, _ = request(url + "/v1/batch", "POST", body, {"Authorization": basic("key-server"),
                                                               "Content-Type": "application/json"})
    return status


def ask(warehouse: str, sql: str) -> tuple:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = query_command.main([f"duckdb:///{warehouse}", sql])
    return code, out.getvalue(), err.getvalue()


def number(output: str) -> int:
    """The one number a count(*) query printed (DuckDB's box)."""
    found = [line.strip("│ ") for line in output.splitlines() if line.strip("│ ").isdigit()]
    assert len(found) == 1, output
    return int(found[0])


def test_events_are_queryable_while_serving_and_all_loaded_at_sigterm(start_collector, tmp_path):
    warehouse = str(tmp_path / "w.duckdb")
    collector = start_collector(["--config", str(write_config(tmp_path)), "--warehouse", f"duckdb:///{warehouse}"])
    serve_file = warehouse + ".serve.json"
    deadline = time.monotonic() + 30
    while not os.path.exists(serve_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert oct(os.stat(serve_file).st_mode & 0o777) == "0o600"

    assert send(collector.url, 0, 10) == 200
    seen, deadline = 0, time.monotonic() + 30
    while seen < 10 and time.monotonic() < deadline:   # loaded within seconds, asked over loopback
        code, out, err = ask(warehouse, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'item_viewed'")
        assert code == 0, err
        if number(out):
            code, out, err = ask(warehouse, "SELECT count(*) FROM item_viewed")
            seen = number(out)
        time.sleep(0.2)
    assert seen == 10

    sent = []

    def keep_sending():
        for batch in range(1, 30):
            assert send(collector.url, batch * 10, 10) == 200
            sent.append(batch)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    counts = []
    while sender.is_alive():   # queries while loads run: a count that only grows
        code, out, err = ask(warehouse, "SELECT count(*) FROM item_viewed")
        assert code == 0, err
        counts.append(number(out))
    sender.join()
    assert counts == sorted(counts)
    code, _, err = ask(warehouse, "DELETE FROM item_viewed")
    assert code == 2 and "reads only" in err

    assert collector.stop() == 0          # everything accepted is loaded before the exit
    assert not os.path.exists(serve_file)
    assert "conservation holds" in collector.log()
    conn = duckdb.connect(warehouse, read_only=True)   # released: any client may open it now
    assert conn.execute("SELECT count(*), count(DISTINCT message_id) FROM item_viewed").fetchone() == (300, 300)
    conn.close()
    assert [e.name for e in os.scandir(warehouse + ".spool") if e.is_file()] == []


def test_after_kill_9_the_next_start_loads_every_acknowledged_event_once(start_collector, tmp_path):
    warehouse = str(tmp_path / "w.duckdb")
    args = ["--config", str(write_config(tmp_path)), "--warehouse", f"duckdb:///{warehouse}"]
    first = start_collector(args)
    acknowledged = []
    for batch in range(40):
        if send(first.url, batch * 25, 25) == 200:
            acknowledged.append(batch)
        if batch == 30:
            time.sleep(2.5)   # some files closed and loaded, others open at the kill
    first.kill()
    assert len(acknowledged) == 40

    second = start_collector(args)        # cuts the open file, loads what is left, holds the file
    assert second.stop() == 0
    conn = duckdb.connect(warehouse, read_only=True)
    assert conn.execute("SELECT count(*), count(DISTINCT message_id) FROM item_viewed").fetchone() == (1000, 1000)
    conn.close()
