"""Exposures through the whole batch job (FnApiRunner) into a real DuckDB file and into the
BigQuery emulator: the experiment_exposures rows, conservation, a re-run storing nothing twice,
an invalid_exposure dead letter replayed once the config names the right path, and without an
experiments: section the invalid exposures stored as plain events (invalid_exposures: store)."""
import json

import duckdb
import yaml

from pipeline import summary as summary_module
from pipeline.main import run, run_replay
from tests.conftest import rows, run_file_job
from tests.destinations.receiver import Receiver
from tests.integration.test_bigquery_warehouse import query, run_job

DAY = "2026-11-02T09:00:00"
SECTION = "experiments: {}\n"  # present, all defaults: invalid exposures are dead letters


def exposure(message_id, unit, properties, unit_field="userId"):
    return {"type": "track", "event": "Experiment Viewed", unit_field: unit, "messageId": message_id,
            "timestamp": DAY + "Z", "properties": properties}


EVENTS = [
    exposure("e1", "u1", {"experiment_id": "checkout", "variation_id": "control"}),
    exposure("e2", "u2", {"experimentId": "checkout", "variationId": 1}),           # GrowthBook's spelling
    exposure("e3", "u3", {"experimentId": "checkout", "variationId": 0}),
    exposure("e4", "a4", {"experiment_id": "checkout", "variation_id": "x"}, "anonymousId"),  # no user id
    exposure("e5", "u5", {"exp": "pricing", "variation_id": "b"}),                 # an unconfigured path
    {"type": "track", "event": "Experiment Exposures", "userId": "u1", "messageId": "clash"},
    {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "o1", "properties": {"revenue": 5}},
]
EXPECTED = [  # (unit_id, unit_type, experiment_id, variation_id, message_id)
    ("u1", "user_id", "checkout", "control", "e1"),
    ("u2", "user_id", "checkout", "1", "e2"),
    ("u3", "user_id", "checkout", "0", "e3"),
]
EXPOSURES_SQL = ("SELECT unit_id, unit_type, experiment_id, variation_id, message_id FROM {table} "
                 "ORDER BY message_id")


def test_a_batch_job_writes_the_exposures_table_and_conserves(tmp_path):
    summary, conn = run_file_job(tmp_path, EVENTS, SECTION)
    assert summary["events"] == 7 and summary["stored"] == 5
    assert summary["dead_lettered"] == {"invalid_exposure": 2}
    assert summary["tables"]["experiment_exposures"] == 3 and summary["tables"]["experiment_viewed"] == 3
    assert [tuple(r.values()) for r in rows(conn, EXPOSURES_SQL.format(table="experiment_exposures"))] == EXPECTED
    times = rows(conn, "SELECT DISTINCT strftime(timestamp AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S') AS t, source "
                       "FROM experiment_exposures")
    assert times == [{"t": DAY, "source": f"file:{tmp_path}/in.jsonl"}]
    types = {r["column_name"]: r["column_type"] for r in rows(conn, "DESCRIBE experiment_exposures")}
    assert types == {"unit_id": "VARCHAR", "unit_type": "VARCHAR", "experiment_id": "VARCHAR",
                     "variation_id": "VARCHAR", "timestamp": "TIMESTAMP WITH TIME ZONE", "message_id": "VARCHAR",
                     "source": "VARCHAR", "loaded_at": "TIMESTAMP WITH TIME ZONE"}
    # an invalid exposure is in no event table: only its dead letter holds it
    assert {r["message_id"] for r in rows(conn, "SELECT message_id FROM tracks")} == {"e1", "e2", "e3", "clash", "o1"}
    assert rows(conn, "SELECT message_id FROM _experiment_exposures") == [{"message_id": "clash"}]
    letters = rows(conn, "SELECT message_id, error_stage, payload FROM _dead_letters ORDER BY message_id")
    assert [(r["message_id"], r["error_stage"], json.loads(r["payload"])) for r in letters] == [
        ("e4", "experiments", EVENTS[3]), ("e5", "experiments", EVENTS[4])]
    conn.close()

    again, conn = run_file_job(tmp_path, EVENTS, SECTION)  # the same input again: every event a duplicate
    assert again["stored"] == 0 and again["dropped"] == {"duplicate": 5}
    assert "experiment_exposures" not in again["tables"]
    assert conn.execute("SELECT count(*) FROM experiment_exposures").fetchone()[0] == 3
    conn.close()


def test_without_the_section_an_invalid_exposure_is_a_plain_event_counted_by_reason(tmp_path):
    """A config written before experiments existed: the anonymous visitor's Experiment Viewed is
    stored as it was before (tracks, experiment_viewed), with no exposure row, and counted."""
    summary, conn = run_file_job(tmp_path, EVENTS, "")
    assert summary["stored"] == 7 and summary["dead_lettered"] == {}
    assert summary["exposures_unusable"] == {"unit": 1, "experiment": 1}
    assert summary["tables"]["experiment_exposures"] == 3 and summary["tables"]["experiment_viewed"] == 5
    assert [tuple(r.values()) for r in rows(conn, EXPOSURES_SQL.format(table="experiment_exposures"))] == EXPECTED
    assert rows(conn, "SELECT message_id, anonymous_id FROM experiment_viewed WHERE message_id IN ('e4', 'e5') "
                      "ORDER BY 1") == [{"message_id": "e4", "anonymous_id": "a4"},
                                        {"message_id": "e5", "anonymous_id": None}]
    assert {r["message_id"] for r in rows(conn, "SELECT message_id FROM tracks")} >= {"e4", "e5"}
    conn.close()
    printed = summary_module.format_table(summary).splitlines()
    at = next(n for n, line in enumerate(printed) if line.startswith("exposures stored without a row"))
    assert [line.split() for line in printed[at:at + 3]] == [
        ["exposures", "stored", "without", "a", "row", "2"], ["experiment", "1"], ["unit", "1"]]


def test_an_invalid_exposure_is_replayed_once_the_config_names_its_path(tmp_path):
    summary, conn = run_file_job(tmp_path, EVENTS[3:5], SECTION)
    conn.close()
    assert summary["dead_lettered"] == {"invalid_exposure": 2}
    config = tmp_path / "sluice.yaml"
    config.write_text("experiments:\n  experiment_key: [properties.experiment_id, properties.exp]\n")
    warehouse = f"duckdb:///{tmp_path}/w.duckdb"
    replayed = run_replay(["--warehouse", warehouse, "--config", str(config), "--error_type", "invalid_exposure"])
    # the one without a user id fails again (a new dead letter); the other lands now
    assert replayed["replayed"] == 2 and replayed["stored"] == 1 and replayed["conservation"]["holds"]
    assert replayed["dead_lettered"] == {"invalid_exposure": 1}
    config.write_text("experiments:\n  experiment_key: [properties.experiment_id, properties.exp]\n"
                      "  unit: anonymous_id\n")
    last = run_replay(["--warehouse", warehouse, "--config", str(config), "--error_type", "invalid_exposure"])
    assert last["replayed"] == 1 and last["stored"] == 1
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        assert [tuple(r.values()) for r in rows(conn, EXPOSURES_SQL.format(table="experiment_exposures"))] == [
            ("a4", "anonymous_id", "checkout", "x", "e4"), ("u5", "user_id", "pricing", "b", "e5")]


def test_a_replayed_invalid_exposure_goes_to_the_warehouse_only(tmp_path):
    """Forwarding sent it on as it arrived (the check is the warehouse's): its replay must not send it again."""
    def write_config(section: dict, url: str) -> str:
        destination = {"name": "crm", "type": "webhook", "url": url, "allow_private_network": True,
                       "mapping": {"id": {"@path": "$.messageId"}}, "batch": {"max_events": 10, "max_wait_seconds": 1}}
        (tmp_path / "sluice.yaml").write_text(yaml.safe_dump({"experiments": section, "destinations": [destination]}))
        return str(tmp_path / "sluice.yaml")

    (tmp_path / "in.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EVENTS[:4]))
    warehouse = f"duckdb:///{tmp_path}/w.duckdb"
    with Receiver() as receiver:
        first = run(["--input_files", str(tmp_path / "in.jsonl"), "--warehouse", warehouse,
                     "--config", write_config({}, receiver.url)])
        assert first["dead_lettered"] == {"invalid_exposure": 1} and first["destinations"]["crm"]["delivered"] == 4
        assert sorted(p["id"] for p in receiver.delivered_payloads()) == ["e1", "e2", "e3", "e4"]
        replayed = run_replay(["--warehouse", warehouse, "--error_type", "invalid_exposure",
                               "--config", write_config({"unit": "anonymous_id"}, receiver.url)])
        assert replayed["replayed"] == 1 and replayed["stored"] == 1 and replayed["conservation"]["holds"]
        assert replayed["destinations"]["crm"]["dropped_integrations"] == 1
        assert sorted(p["id"] for p in receiver.delivered_payloads()) == ["e1", "e2", "e3", "e4"]  # none again
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        assert rows(conn, "SELECT unit_id, message_id FROM experiment_exposures WHERE unit_type = 'anonymous_id'") == [
            {"unit_id": "a4", "message_id": "e4"}]


def test_the_bigquery_emulator_gets_the_same_rows(tmp_path, bigquery_emulator, bigquery_client, dataset_name):
    """A batch job's write path, load jobs (the streaming one, insertAll: test_exposure_streaming.py)."""
    summary = run_job(tmp_path, bigquery_emulator, dataset_name, EVENTS, config=SECTION, method="load")
    assert summary["stored"] == 5 and summary["dead_lettered"] == {"invalid_exposure": 2}
    assert summary["tables"]["experiment_exposures"] == 3
    found = query(bigquery_client, EXPOSURES_SQL.format(table=f"`{dataset_name}.experiment_exposures_view`"))
    assert [tuple(r.values()) for r in found] == EXPECTED
    table = bigquery_client.get_table(f"{bigquery_emulator.project}.{dataset_name}.experiment_exposures")
    assert table.time_partitioning.field == "timestamp" and table.clustering_fields == ["experiment_id", "unit_id"]
    assert {f.name: f.field_type for f in table.schema} == {
        "unit_id": "STRING", "unit_type": "STRING", "experiment_id": "STRING", "variation_id": "STRING",
        "timestamp": "TIMESTAMP", "message_id": "STRING", "source": "STRING", "loaded_at": "TIMESTAMP"}
    # (a re-run is dropped whole by the load path's lookup of the tracks rows, before any row is written:
    # tests/integration covers that; the DuckDB test above re-runs)
