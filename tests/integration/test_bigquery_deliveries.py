"""Forwarding's outcomes in BigQuery's `_deliveries` (on the local emulator): a batch job
forwarding to real HTTP receivers on 127.0.0.1, one delivered batch and one failed."""
import json

import pytest
import yaml

from pipeline.main import run
from tests.destinations.receiver import Receiver
from transforms.warehouse.bigquery_backend import BigQueryWarehouse

pytestmark = pytest.mark.integration

IDS = ["m1", "m2", "m3"]


def test_a_delivered_and_a_failed_batch_are_rows_found_by_message_id(tmp_path, bigquery_emulator, bigquery_client,
                                                                     dataset_name):
    with Receiver([(500, {})]) as crm, Receiver(default_status=500) as down:
        destinations = [{"name": name, "type": "webhook", "url": url, "allow_private_network": True,
                         "batch": {"max_events": 10},
                         "retry": {"max_attempts": 3, "initial_backoff_seconds": 0.01, "max_backoff_seconds": 0.02}}
                        for name, url in (("crm", crm.url), ("down", down.url))]
        (tmp_path / "sluice.yaml").write_text(yaml.safe_dump({"destinations": destinations}))
        (tmp_path / "in.jsonl").write_text("".join(json.dumps({"type": "track", "event": "Order Completed",
                                                               "userId": "u1", "messageId": i}) + "\n" for i in IDS))
        summary = run(["--input_files", str(tmp_path / "in.jsonl"), "--config", str(tmp_path / "sluice.yaml"),
                       "--warehouse", f"bigquery://{bigquery_emulator.project}/{dataset_name}",
                       "--bigquery_endpoint", bigquery_emulator.endpoint])
    assert summary["conservation"]["holds"] and summary["tables"]["_deliveries"] == 2
    assert len(crm.requests) == 2 and len(down.requests) == 3

    # "did event m2 reach destination Y": one query
    sql = (f"SELECT destination, status, http_status, attempts, latency_ms, ARRAY_LENGTH(message_ids) AS events "
           f"FROM `{dataset_name}._deliveries` WHERE 'm2' IN UNNEST(message_ids) ORDER BY destination")
    rows = [dict(r.items()) for r in bigquery_client.query(sql).result()]
    assert [(r["destination"], r["status"], r["http_status"], r["attempts"], r["events"]) for r in rows] == [
        ("crm", "delivered", 200, 2, 3), ("down", "failed", 500, 3, 3)]
    assert all(r["latency_ms"] > 0 for r in rows)
    view = list(bigquery_client.query(f"SELECT count(*) AS n FROM `{dataset_name}._deliveries_view`").result())
    assert view[0]["n"] == 2
    table = bigquery_client.get_table(f"{bigquery_emulator.project}.{dataset_name}._deliveries")
    assert table.time_partitioning.field == "requested_at" and table.clustering_fields == ["destination", "status"]
    assert {f.name: f.mode for f in table.schema}["message_ids"] == "REPEATED"
    letters = list(bigquery_client.query(f"SELECT count(*) AS n FROM `{dataset_name}._dead_letters` "
                                         "WHERE destination = 'down'").result())
    assert letters[0]["n"] == 3


@pytest.mark.parametrize("method", ["load", "insert_all"])
def test_an_outcome_written_twice_is_one_row(bigquery_emulator, bigquery_client, dataset_name, method):
    """A write retried stores nothing new (load: the stored ids are looked up within the rows'
    requested_at; insert_all: the insertId); the same batch requested later is a row of its own."""
    row = {"delivery_id": "d1", "destination": "crm", "requested_at": "2026-12-03T01:00:00.000000Z",
           "status": "delivered", "http_status": 200, "attempts": 1, "latency_ms": 4.5, "message_ids": IDS,
           "idempotency_key": "k", "error_message": None}
    later = {**row, "delivery_id": "d2", "requested_at": "2026-12-03T02:00:00.000000Z"}
    warehouse = BigQueryWarehouse(bigquery_emulator.project, dataset_name, bigquery_emulator.endpoint,
                                  write_method=method).open()
    try:
        assert warehouse.write_deliveries([row]) == 1
        warehouse.write_deliveries([row, later])
    finally:
        warehouse.close()
    view = f"`{dataset_name}._deliveries_view`" if method == "insert_all" else f"`{dataset_name}._deliveries`"
    found = [r["delivery_id"] for r in bigquery_client.query(f"SELECT delivery_id FROM {view} ORDER BY 1").result()]
    assert found == ["d1", "d2"]
