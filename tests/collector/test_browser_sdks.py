"""The browser SDKs against a real collector (`python -m pipeline serve`), in Debian's chromium:
a source's allowed_origins seen from pages on two origins (analytics.js), and the RudderStack
JavaScript SDK end to end into the embedded warehouse. Pages, SDK files and the collector are
all on 127.0.0.1; another port is another origin."""
import socket

import duckdb
import pytest

from tests.collector import rudderstack_js, sdks
from tests.collector.serving import request, spool_lines, write_config

pytestmark = pytest.mark.browser

EVENTS = [
    {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
    {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 12.5}},
    {"type": "page", "userId": "u1", "name": "Home", "properties": {"path": "/"}},
]


@pytest.fixture(autouse=True)
def browser_present():
    if not sdks.chromium_available() or not rudderstack_js.available():
        pytest.skip("Debian's chromium or node_modules is missing (make test installs them)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def refused(collector, code: str) -> float:
    _, _, body = request(collector.url + "/metrics")
    for line in body.decode().splitlines():
        if line.startswith("sluice_collector_refused_total{") and f'code="{code}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_analytics_js_events_are_kept_from_an_allowed_origin_and_refused_from_another(start_collector, tmp_path):
    allowed, other = free_port(), free_port()
    config = write_config(tmp_path, [{"name": "web", "write_key": "key-web",
                                      "allowed_origins": [f"http://127.0.0.1:{allowed}"]}])
    collector = start_collector(["--config", str(config), "--sink", str(tmp_path / "spool")])

    kept = sdks.send_analytics_js(collector.url, "key-web", EVENTS, page_port=allowed, timeout=20)

    log = []
    with pytest.raises(sdks.SdkDeliveryError) as raised:
        sdks.send_analytics_js(collector.url, "key-web", EVENTS, page_port=other, timeout=20, log=log)
    # The 403 carries Access-Control-Allow-Origin, so the page reads it: analytics.js drops each
    # event at once (a 4xx) instead of retrying a CORS failure for hours from every visitor.
    assert "the SDK gave up" in str(raised.value)
    assert sorted(raised.value.message_ids) == sorted(e["messageId"] for e in raised.value.details)
    assert all("403" in failure["reason"] for failure in raised.value.details), raised.value.details
    assert any("status of 403" in line for line in log), log
    assert refused(collector, "origin_not_allowed") == len(EVENTS)

    assert collector.stop() == 0
    stored = [event["messageId"] for record in spool_lines(tmp_path / "spool") for event in record["batch"]]
    assert sorted(stored) == sorted(kept)


def warehouse_ids(path: str) -> dict:
    """messageId -> the tables holding it (a track event is in `tracks` and its own table)."""
    conn = duckdb.connect(path, read_only=True)
    try:
        tables = [row[0] for row in conn.execute(
            "SELECT table_name FROM duckdb_columns() WHERE column_name = 'message_id'").fetchall()]
        found = {}
        for table in tables:
            for (message_id,) in conn.execute(f'SELECT message_id FROM "{table}"').fetchall():
                found.setdefault(message_id, []).append(table)
        return found
    finally:
        conn.close()


# The beacon queue flushes every 10 minutes by default (and when the page is left): 100 ms here.
BEACON = {"useBeacon": True, "beaconQueueOptions": {"flushQueueInterval": 100}}


@pytest.mark.parametrize("transport", ["xhr", "beacon"])
def test_rudderstack_js_events_land_in_the_embedded_warehouse_once(start_collector, tmp_path, transport):
    page_port = free_port()
    config = write_config(tmp_path, [{"name": "web", "write_key": "key-web",
                                      "allowed_origins": [f"http://127.0.0.1:{page_port}"]}])
    warehouse = str(tmp_path / "w.duckdb")
    collector = start_collector(["--config", str(config), "--warehouse", f"duckdb:///{warehouse}"])
    log = []
    ids = rudderstack_js.send_rudderstack_js(collector.url, "key-web", EVENTS, page_port=page_port, log=log,
                                             load_options=BEACON if transport == "beacon" else {})
    requests = [line for line in log if line.startswith("request: ")]
    assert any("/sourceConfig/?" in line and "writeKey=key-web" in line for line in requests), requests
    posted = {line.split()[2].split("?")[0].rsplit("/", 2)[-2:][-1] for line in requests if " POST " in line}
    assert posted == ({"identify", "track", "page"} if transport == "xhr" else {"batch"}), requests

    assert collector.stop() == 0   # everything accepted is loaded before the exit
    found = warehouse_ids(warehouse)
    assert set(found) == set(ids)
    tables = {message_id: sorted(found[message_id]) for message_id in ids}
    assert tables == {ids[0]: ["identifies"], ids[1]: ["order_completed", "tracks"], ids[2]: ["pages"]}


def test_rudderstack_js_on_a_page_of_another_origin_gets_no_source_config(start_collector, tmp_path):
    """/sourceConfig/ answers 403 to an origin the source does not allow: the SDK never becomes
    ready, so it sends nothing (and a request that did would be refused the same way)."""
    config = write_config(tmp_path, [{"name": "web", "write_key": "key-web",
                                      "allowed_origins": [f"http://127.0.0.1:{free_port()}"]}])
    collector = start_collector(["--config", str(config), "--sink", str(tmp_path / "spool")])
    log = []
    with pytest.raises(sdks.SdkDeliveryError) as raised:
        rudderstack_js.send_rudderstack_js(collector.url, "key-web", EVENTS, page_port=free_port(), log=log,
                                           timeout=8)
    assert "its source config was refused" in str(raised.value)
    assert not [line for line in raised.value.details if line.startswith("beyond 127.0.0.1")], raised.value.details
    answers = [line for line in log if line.startswith("response: ") and collector.url in line]
    assert answers and all(line.startswith("response: 403 GET ") and "/sourceConfig/" in line for line in answers)
    assert collector.stop() == 0
    assert spool_lines(tmp_path / "spool") == []
