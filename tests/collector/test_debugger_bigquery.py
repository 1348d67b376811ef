"""Fates looked up in BigQuery by message id (collector.debugger.bigquery_fates), on the emulator
the suite starts: a real collector with `--sink DIR` and `debugger.warehouse` set, the pipeline's
batch job run over its spool into the emulator (forwarding to a real webhook receiver), and the
debugger's API then showing each event stored (in which table, delivered to the webhook) or
dead-lettered (with which error). A poll that fails (nothing listens
at the endpoint) is counted and leaves the entries pending; an entry past `lookup_minutes`
costs no query."""
import json
import shutil
import socket
import time
from datetime import datetime, timedelta, timezone

import pytest

from collector.debugger.bigquery_fates import BigQueryFates, spans
from collector.debugger.settings import DebuggerSettings
from collector.debugger.store import Entry, Store
from tests.collector.serving import SOURCES, basic, request
from tests.destinations.receiver import Receiver

pytestmark = pytest.mark.slow

CONTRACT = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "Order Completed", "type": "object",
            "properties": {"properties": {"type": "object", "required": ["total"],
                                          "properties": {"total": {"type": "number"}}}}}
SENT = [
    {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "bq-good",
     "properties": {"total": 12.5}},
    {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "bq-bad",
     "properties": {"total": "12"}},     # blocked by its contract: a dead letter
    {"type": "identify", "userId": "u1", "messageId": "bq-identify", "traits": {"plan": "pro"}},
    # a backfilled event years back: its partition is far from the others', a branch of its own
    {"type": "track", "event": "Product Viewed", "userId": "u2", "messageId": "bq-old",
     "timestamp": "2021-06-01T10:00:00Z"},
]


def _events(url: str) -> dict:
    status, _, body = request(f"{url}/debugger/api/events?limit=100")
    assert status == 200, body
    return {e["message_id"]: e for e in json.loads(body)["events"]}


def _metric(url: str, name: str) -> float:
    _, _, body = request(f"{url}/metrics")
    found = [line.split()[-1] for line in body.decode().splitlines() if line.startswith(name + " ")]
    return float(found[0]) if found else 0.0


@pytest.mark.integration
def test_a_sink_collector_shows_each_events_fate_from_bigquery(start_collector, tmp_path, bigquery_emulator,
                                                               dataset_name):
    from pipeline.main import run
    contracts = tmp_path / "contracts" / "track"
    contracts.mkdir(parents=True)
    (contracts / "order_completed.json").write_text(json.dumps(CONTRACT))
    warehouse = f"bigquery://{bigquery_emulator.project}/{dataset_name}"
    config = tmp_path / "sluice.yaml"
    spool = tmp_path / "spool"
    with Receiver() as crm:
        config.write_text(json.dumps({   # JSON is YAML; the job reads the same config
            "sources": SOURCES, "contracts": {"directory": str(tmp_path / "contracts"), "violations": "block"},
            "destinations": [{"name": "crm", "type": "webhook", "url": crm.url, "allow_private_network": True,
                              "events": ["Order Completed"], "retry": {"max_attempts": 1}}],
            "debugger": {"warehouse": warehouse, "bigquery_endpoint": bigquery_emulator.endpoint,
                         "poll_seconds": 1}}))
        collector = start_collector(["--config", str(config), "--sink", str(spool)])
        for body in SENT:
            status, _, _ = request(collector.url + "/v1/" + body["type"], "POST", json.dumps(body).encode(),
                                   {"Content-Type": "application/json", "Authorization": basic("key-server")})
            assert status == 200
        # Nobody has looked at the debugger yet (no page, no API call): the collector sends no
        # query until then, so the lookup below runs after the job has written everything
        # (an event's destinations are read once, with its row). /metrics is no look.
        deadline = time.monotonic() + 10   # a hang guard: the entries are inspected just after the answers
        while _metric(collector.url, "sluice_debugger_events_inspected_total") < len(SENT):
            assert time.monotonic() < deadline, collector.log()
            time.sleep(0.05)

        # The job reads what the collector made durable: the spool's open file holds whole lines
        # only (each fsynced before its 200); a copy is what the file will be once closed.
        (tmp_path / "input").mkdir()
        open_files = list(spool.glob("*.jsonl.open"))
        assert len(open_files) == 1
        shutil.copy(open_files[0], tmp_path / "input" / "spool.jsonl")
        summary = run(["--input_files", str(tmp_path / "input" / "*.jsonl"), "--config", str(config),
                       "--warehouse", warehouse, "--bigquery_endpoint", bigquery_emulator.endpoint])
    assert summary["stored"] == 3 and summary["conservation"]["holds"], summary
    assert _metric(collector.url, "sluice_debugger_fate_lookups_total") == 0

    deadline = time.monotonic() + 20   # a hang guard: the collector polls every second once looked at
    while any(e["fate"]["status"] == "pending" for e in _events(collector.url).values()):
        assert time.monotonic() < deadline, (_events(collector.url), collector.log())
        time.sleep(0.2)
    fates = {m: e["fate"] for m, e in _events(collector.url).items()}
    assert (fates["bq-good"]["status"], fates["bq-good"]["table"]) == ("stored", "order_completed")
    assert fates["bq-good"]["destinations"]["crm"]["status"] == "delivered"
    assert fates["bq-good"]["destinations"]["crm"]["http_status"] == 200
    assert (fates["bq-identify"]["status"], fates["bq-identify"]["table"]) == ("stored", "identifies")
    assert (fates["bq-old"]["status"], fates["bq-old"]["table"]) == ("stored", "product_viewed")
    assert fates["bq-bad"]["status"] == "dead_lettered" and fates["bq-bad"]["error_type"] == "contract_violation"
    assert "/properties/total" in fates["bq-bad"]["error_message"]
    assert _metric(collector.url, "sluice_debugger_fates_settled_total") == 4
    assert _metric(collector.url, "sluice_debugger_fate_lookup_failures_total") == 0
    assert _metric(collector.url, "sluice_debugger_fate_lookups_total") >= 1


@pytest.mark.integration
def test_a_delivery_recorded_after_the_events_row_is_added_to_its_fate(tmp_path, bigquery_emulator, dataset_name):
    """A streaming job writes an event's row and its destinations' outcomes independently: a
    stored entry's deliveries are asked for again while it is in its window."""
    from pipeline.main import run
    from transforms.warehouse.bigquery_backend import BigQueryWarehouse
    now = datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    (tmp_path / "in.jsonl").write_text(json.dumps({"type": "track", "event": "Order Completed", "userId": "u1",
                                                   "messageId": "m-late", "timestamp": now, "receivedAt": now}))
    (tmp_path / "sluice.yaml").write_text("")
    warehouse = f"bigquery://{bigquery_emulator.project}/{dataset_name}"
    summary = run(["--input_files", str(tmp_path / "in.jsonl"), "--config", str(tmp_path / "sluice.yaml"),
                   "--warehouse", warehouse, "--bigquery_endpoint", bigquery_emulator.endpoint])
    assert summary["stored"] == 1, summary
    store = Store()
    told = []
    store.listeners.append(lambda kind, entry: told.append((kind, entry.message_id)))
    entry = store.add(Entry(now, "web", b"{}", 2, type="track", event="Order Completed", message_id="m-late",
                            timestamp=now))
    fates = BigQueryFates(store, DebuggerSettings(warehouse=warehouse, bigquery_endpoint=bigquery_emulator.endpoint))
    assert fates.poll() == 1
    assert (entry.fate["status"], entry.fate["table"], entry.fate["destinations"]) == ("stored", "order_completed", {})

    row = {"delivery_id": "d1", "destination": "crm", "requested_at": now, "status": "delivered", "http_status": 200,
           "attempts": 1, "latency_ms": 4.5, "message_ids": ["m-late"], "idempotency_key": "k", "error_message": None}
    recorder = BigQueryWarehouse(bigquery_emulator.project, dataset_name, bigquery_emulator.endpoint).open()
    try:
        recorder.write_deliveries([row])
    finally:
        recorder.close()
    assert fates.poll() == 1
    assert entry.fate["status"] == "stored"
    assert entry.fate["destinations"] == {"crm": {"status": "delivered", "http_status": 200, "attempts": 1,
                                                  "latency_ms": 4.5}}
    assert fates.poll() == 0   # known already: nothing changes, nothing is told
    assert told == [("entry", "m-late"), ("fate", "m-late"), ("fate", "m-late")]
    assert fates.failures == 0 and fates.lookups == 3


def _pending(store: Store, message_id: str, received: datetime) -> Entry:
    at = received.isoformat().replace("+00:00", "Z")
    return store.add(Entry(at, "web", b"{}", 2, type="track", event="E", message_id=message_id, timestamp=at))


def test_a_failing_warehouse_is_counted_and_leaves_entries_pending():
    with socket.socket() as closed:   # a port nothing listens on: each call is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    store = Store()
    _pending(store, "m1", datetime.now(timezone.utc))
    settings = DebuggerSettings(warehouse="bigquery://sluice-test/d", bigquery_endpoint=f"http://127.0.0.1:{port}",
                                poll_seconds=0.05)
    fates = BigQueryFates(store, settings, retry_deadline=0.2).start()
    try:
        deadline = time.monotonic() + 20   # a hang guard
        while fates.failures < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        fates.stop()
    assert fates.lookups == 0 and store.entry("m1").fate["status"] == "pending"


def test_entries_past_the_lookup_window_cost_no_query():
    store = Store()
    _pending(store, "old", datetime.now(timezone.utc) - timedelta(minutes=16))
    fates = BigQueryFates(store, DebuggerSettings(warehouse="bigquery://sluice-test/d",
                                                  bigquery_endpoint="http://127.0.0.1:9"))
    assert fates.poll() == 0 and fates._client is None   # no client made, so no call


def test_pending_timestamps_are_grouped_into_branches_a_day_or_so_wide():
    day = datetime(2026, 12, 3, tzinfo=timezone.utc)
    items = [(day, "a"), (day + timedelta(hours=20), "b"), (day - timedelta(days=2000), "old"),
             (day + timedelta(hours=30), "c")]
    assert spans(items) == [(day - timedelta(days=2000), day - timedelta(days=2000), ["old"]),
                            (day, day + timedelta(hours=20), ["a", "b"]),
                            (day + timedelta(hours=30), day + timedelta(hours=30), ["c"])]


def test_the_debugger_warehouse_keys_are_typed_and_checked():
    from pipeline import config_file
    from pipeline.errors import UsageError
    document = {"debugger": {"warehouse": "bigquery://my-project/analytics",
                             "bigquery_endpoint": "http://127.0.0.1:9050/", "poll_seconds": 2, "lookup_minutes": 5,
                             "max_bytes_billed": 50_000_000}}
    config_file.check_schema(document)
    settings = config_file.collector_section(document).debugger
    assert (settings.warehouse, settings.bigquery_endpoint, settings.bigquery_location, settings.poll_seconds,
            settings.lookup_minutes, settings.max_bytes_billed) == (
        "bigquery://my-project/analytics", "http://127.0.0.1:9050", "US", 2.0, 5.0, 50_000_000)
    for wrong in ({"warehouse": "duckdb:///w.duckdb"}, {"warehouse": "bigquery://p/d"},
                  {"bigquery_endpoint": "127.0.0.1:9050"}, {"poll_seconds": 0.1}):
        with pytest.raises(UsageError, match="debugger"):
            config_file.check_schema({"debugger": wrong})
