"""The BigQuery warehouse against the local BigQuery emulator: the real client, the real job."""
import json

import pytest

from pipeline.main import run
from tests.conftest import FIXTURES

pytestmark = pytest.mark.integration


def track(message_id, name="Order Completed", **properties):
    return {"type": "track", "event": name, "userId": "u1", "messageId": message_id,
            "timestamp": "2026-11-02T09:00:00Z", "properties": properties}


def run_job(tmp_path, emulator, dataset, lines, config="", name="in.jsonl"):
    (tmp_path / "sluice.yaml").write_text(config)
    (tmp_path / name).write_text("\n".join(line if isinstance(line, str) else json.dumps(line)
                                           for line in lines) + "\n")
    summary = run(["--input_files", str(tmp_path / name), "--config", str(tmp_path / "sluice.yaml"),
                   "--warehouse", f"bigquery://{emulator.project}/{dataset}",
                   "--bigquery_endpoint", emulator.endpoint])
    assert summary["conservation"]["holds"], summary
    return summary


def query(client, sql) -> list:
    return [dict(row.items()) for row in client.query(sql).result()]


def test_tables_are_created_partitioned_and_clustered(tmp_path, bigquery_emulator, bigquery_client, dataset_name):
    summary = run_job(tmp_path, bigquery_emulator, dataset_name, [track("m1", total=10, currency="EUR")])
    assert summary["stored"] == 1 and summary["tables"] == {"order_completed": 1, "tracks": 1}
    table = bigquery_client.get_table(f"{bigquery_emulator.project}.{dataset_name}.order_completed")
    assert table.time_partitioning.field == "timestamp" and table.time_partitioning.type_ == "DAY"
    assert table.clustering_fields == ["event", "user_id"]
    fields = {f.name: (f.field_type, f.mode, f.description) for f in table.schema}
    assert fields["total"] == ("INTEGER", "NULLABLE", "/properties/total")
    assert fields["message_id"][2] == "/messageId"
    rows = query(bigquery_client, f"SELECT message_id, total, currency FROM `{dataset_name}.order_completed`")
    assert rows == [{"message_id": "m1", "total": 10, "currency": "EUR"}]


def test_a_new_property_becomes_a_column_and_its_rows_land(tmp_path, bigquery_emulator, bigquery_client,
                                                           dataset_name):
    run_job(tmp_path, bigquery_emulator, dataset_name, [track("m1", total=10)])
    run_job(tmp_path, bigquery_emulator, dataset_name, [track("m2", total=12, coupon="AUTUMN")], name="b.jsonl")
    rows = query(bigquery_client, f"SELECT message_id, total, coupon FROM `{dataset_name}.order_completed` "
                                  "ORDER BY message_id")
    assert rows == [{"message_id": "m1", "total": 10, "coupon": None},
                    {"message_id": "m2", "total": 12, "coupon": "AUTUMN"}]


def test_a_type_conflict_is_kept_in_unmapped(tmp_path, bigquery_emulator, bigquery_client, dataset_name):
    run_job(tmp_path, bigquery_emulator, dataset_name, [track("m1", total=10)])
    # BigQuery cannot retype the INT64 column: the fraction is kept whole, like the string.
    summary = run_job(tmp_path, bigquery_emulator, dataset_name, [track("m2", total=10.5), track("m3", total="ten")],
                      name="b.jsonl")
    assert summary["stored"] == 2 and summary["type_conflicts"] == {"order_completed": 2}
    rows = query(bigquery_client, f"SELECT message_id, total, TO_JSON_STRING(_unmapped) AS unmapped "
                                  f"FROM `{dataset_name}.order_completed` ORDER BY message_id")
    assert [(r["message_id"], r["total"]) for r in rows] == [("m1", 10), ("m2", None), ("m3", None)]
    assert json.loads(json.loads(rows[1]["unmapped"]) if rows[1]["unmapped"].startswith('"')
                      else rows[1]["unmapped"]) == {"/properties/total": 10.5}


def test_the_segment_examples_land_with_dead_letters_and_views(tmp_path, bigquery_emulator, bigquery_client,
                                                               dataset_name):
    lines = FIXTURES.read_text(encoding="utf-8").splitlines() + ["not json"]
    summary = run_job(tmp_path, bigquery_emulator, dataset_name, lines)
    assert summary["dead_lettered"]["malformed_json"] == 1
    stored = query(bigquery_client, f"SELECT count(*) AS n FROM `{dataset_name}.tracks`")[0]["n"]
    assert stored == summary["tables"]["tracks"]
    letters = query(bigquery_client, f"SELECT error_type, payload FROM `{dataset_name}._dead_letters`")
    assert {r["error_type"] for r in letters} == set(summary["dead_lettered"])
    assert "not json" in {r["payload"] for r in letters}
    views = query(bigquery_client, f"SELECT count(*) AS n FROM `{dataset_name}.tracks_view`")
    assert views[0]["n"] == stored
    users = query(bigquery_client, f"SELECT id, email FROM `{dataset_name}.users_view` ORDER BY id")
    assert users and all(u["id"] for u in users)
