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
