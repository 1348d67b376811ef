"""Forwarding's outcomes in the warehouse's `_deliveries` table: a whole batch job forwarding to
real HTTP receivers on 127.0.0.1, one that answers 500 and then 200 (delivered on the second
attempt), one that answers 500 to every attempt, slowly (failed after three), into DuckDB."""
import json

import duckdb
import yaml

from pipeline.main import run
from tests.destinations.receiver import Receiver
from transforms.destinations.deliveries import Delivery, settle
from transforms.destinations.delivery import Outcome
from transforms.warehouse.duckdb_backend import DuckDBWarehouse

IDS = ["m1", "m2", "m3"]
DRIP = 0.01  # seconds between the bytes of the failing receiver's answer body


def write_inputs(tmp_path, urls: dict) -> tuple:
    """(config path, input path): each destination takes every event, in one batch; three attempts."""
    destinations = [{"name": name, "type": "webhook", "url": url, "allow_private_network": True,
                     "batch": {"max_events": 10},
                     "retry": {"max_attempts": 3, "initial_backoff_seconds": 0.01, "max_backoff_seconds": 0.02}}
                    for name, url in urls.items()]
    config = tmp_path / "sluice.yaml"
    config.write_text(yaml.safe_dump({"destinations": destinations}))
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps({"type": "track", "event": "Order Completed", "userId": "u1",
                                          "messageId": i}) + "\n" for i in IDS))
    return str(config), str(events)


def query(path, sql: str, params=()) -> list:
    with duckdb.connect(str(path), read_only=True) as conn:
        cursor = conn.execute(sql, list(params))
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


def test_a_delivered_and_a_failed_batch_are_one_row_each_with_status_attempts_latency_and_message_ids(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    with Receiver([(500, {})]) as crm, Receiver(default_status=500, drip_seconds=DRIP, drip_body_only=True) as down:
        config, events = write_inputs(tmp_path, {"crm": crm.url, "down": down.url})
        summary = run(["--input_files", events, "--warehouse", f"duckdb:///{warehouse}", "--config", config])
    assert [r.status for r in crm.requests] == [500, 200] and [r.status for r in down.requests] == [500] * 3

    rows = {r["destination"]: r for r in query(warehouse, "SELECT * FROM _deliveries")}
    assert sorted(rows) == ["crm", "down"]  # one row per batch, nothing for the retries in between
    crm_row, down_row = rows["crm"], rows["down"]
    assert (crm_row["status"], crm_row["http_status"], crm_row["attempts"]) == ("delivered", 200, 2)
    assert (down_row["status"], down_row["http_status"], down_row["attempts"]) == ("failed", 500, 3)
    assert sorted(crm_row["message_ids"]) == sorted(down_row["message_ids"]) == IDS
    assert crm_row["error_message"] is None and down_row["error_message"].startswith("HTTP 500")
    # the receiver saw the row's idempotency key on every attempt at the batch
    assert {r.headers["Idempotency-Key"] for r in crm.requests} == {crm_row["idempotency_key"]}
    # latency sums the attempts: each of the three waited for its answer's body, a byte every DRIP seconds
    body_bytes = len(json.dumps({"error": "scripted"}))
    assert down_row["latency_ms"] >= 3 * body_bytes * DRIP * 1000
    assert 0 < crm_row["latency_ms"] < down_row["latency_ms"]
    assert crm_row["requested_at"] <= down_row["loaded_at"] and crm_row["delivery_id"] != down_row["delivery_id"]

    # "did event m2 reach destination Y" is one query
    reached = query(warehouse, "SELECT destination, status FROM _deliveries WHERE list_contains(message_ids, ?) "
                               "ORDER BY destination", ["m2"])
    assert reached == [{"destination": "crm", "status": "delivered"}, {"destination": "down", "status": "failed"}]

    # the failed batch is still one dead letter per event; rows are not events
    letters = query(warehouse, "SELECT message_id, destination, error_type FROM _dead_letters ORDER BY 1")
    assert letters == [{"message_id": i, "destination": "down", "error_type": "delivery_failed"} for i in IDS]
    assert summary["tables"]["_deliveries"] == 2 and summary["stored"] == 3
    assert summary["conservation"] == {"holds": True, "unaccounted": 0}
    assert summary["destinations"]["crm"]["delivered"] == 3 and summary["destinations"]["down"]["failed"] == 3


def test_an_outcome_written_twice_is_one_row_and_a_later_delivery_of_the_same_batch_is_another(tmp_path):
    """A write retried (the bundle that wrote it failed after the insert) stores nothing new; the
    same events forwarded again later (a replay) were requested again: a row of their own."""
    row = {"delivery_id": "d1", "destination": "crm", "requested_at": "2026-12-03T01:00:00.000000Z",
           "status": "delivered", "http_status": 200, "attempts": 1, "latency_ms": 4.5, "message_ids": IDS,
           "idempotency_key": "k", "error_message": None}
    later = {**row, "delivery_id": "d2", "requested_at": "2026-12-03T02:00:00.000000Z"}
    warehouse = DuckDBWarehouse(str(tmp_path / "w.duckdb")).open()
    try:
        assert warehouse.write_deliveries([row]) == 1
        assert warehouse.write_deliveries([row, later]) == 1
    finally:
        warehouse.close()
    assert [r["delivery_id"] for r in query(tmp_path / "w.duckdb", "SELECT delivery_id FROM _deliveries "
                                                                    "ORDER BY requested_at")] == ["d1", "d2"]


def test_a_rows_id_is_its_destination_batch_and_first_request_time():
    batch = [Delivery("crm", b"{}", i, 1.0, b"{}", {}, "file:/x") for i in IDS]
    ok = Outcome(True, 200, False, "HTTP 200")

    def row(name="crm", items=batch, at=1796259600.5):
        return settle(name, items, ok, 1, at, 0.004)[0]
    assert row() == row() and row()["requested_at"] == "2026-12-03T01:00:00.500000Z"
    assert len({row()["delivery_id"], row(name="ads")["delivery_id"], row(items=batch[:2])["delivery_id"],
                row(at=1796259601.5)["delivery_id"]}) == 4
    assert row()["latency_ms"] == 4.0 and row()["message_ids"] == IDS
