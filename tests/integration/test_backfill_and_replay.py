"""Backfills from gs:// on the GCS emulator: globs over date-partitioned folders, .gz files,
batch envelopes and one-event-per-line files; a re-run over the same files stores nothing
twice, in DuckDB and in the BigQuery emulator. And replay on the BigQuery emulator."""
import gzip
import json

import duckdb
import pytest

from pipeline.errors import UsageError
from pipeline.main import run
from tests.conftest import rows
from tests.integration.test_bigquery_warehouse import query

pytestmark = pytest.mark.integration


def track(i, day):
    return {"type": "track", "event": "Order Completed", "userId": f"u{i}", "messageId": f"{day}-t{i}",
            "timestamp": f"{day}T10:00:00Z", "properties": {"total": i}}


def lines(items) -> bytes:
    return b"".join(json.dumps(item).encode() + b"\n" for item in items)


FILES = {
    # one event per line, plain
    "events/dt=2026-11-01/part-0.jsonl": lines([track(i, "2026-11-01") for i in range(10)]) + b"not json\n",
    # Segment batch envelopes, gzipped
    "events/dt=2026-11-01/part-1.jsonl.gz": gzip.compress(lines(
        [{"batch": [track(i, "2026-11-01") for i in range(10, 15)]},
         {"batch": [{"type": "identify", "userId": "u1", "messageId": "2026-11-01-i1", "traits": {"plan": "pro"}}]}])),
    # one event per line, gzipped, another day
    "events/dt=2026-11-02/part-0.jsonl.gz": gzip.compress(lines([track(i, "2026-11-02") for i in range(7)])),
    # outside the pattern: never read
    "events/dt=2026-10-31/part-0.jsonl": lines([track(i, "2026-10-31") for i in range(3)]),
    "other/elsewhere.jsonl": lines([track(99, "2026-11-01")]),
}
PATTERN = "gs://{bucket}/events/dt=2026-11-*/*"
EXPECTED = {"read": 20, "events": 24, "stored": 23, "dead_lettered": {"malformed_json": 1}}


@pytest.fixture
def backfill_bucket(gcs_bucket):
    name, client = gcs_bucket
    bucket = client.bucket(name)
    for path, data in FILES.items():
        bucket.blob(path).upload_from_string(data)
    return name


def test_a_duckdb_backfill_from_gcs_reads_every_kind_of_file_and_reruns_without_duplicates(tmp_path, backfill_bucket,
                                                                                         gcs_bucket):
    args = ["--input_files", PATTERN.format(bucket=backfill_bucket), "--warehouse", f"duckdb:///{tmp_path}/w.duckdb"]
    first = run(args + ["--summary_path", f"gs://{backfill_bucket}/runs/first.json"])
    assert {k: first[k] for k in EXPECTED} == EXPECTED and first["conservation"]["holds"]
    written = json.loads(gcs_bucket[1].bucket(backfill_bucket).blob("runs/first.json").download_as_bytes())
    assert written == json.loads(json.dumps(first))  # the summary, on GCS
    gcs_bucket[1].bucket(backfill_bucket).blob("config/sluice.yaml").upload_from_string(
        b"warehouse:\n  batch_size: 3\n")  # a config on GCS too; small batches: many writes
    second = run(args + ["--config", f"gs://{backfill_bucket}/config/sluice.yaml"])
    assert second["stored"] == 0 and second["dropped"].get("duplicate") == 23 and second["conservation"]["holds"]
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        tracks = rows(conn, "SELECT message_id FROM tracks")
        letters = rows(conn, "SELECT source FROM _dead_letters")
    assert len(tracks) == 22 and len({t["message_id"] for t in tracks}) == 22
    assert [letter["source"] for letter in letters] == \
        [f"file:gs://{backfill_bucket}/events/dt=2026-11-01/part-0.jsonl"]  # one dead letter after two runs


def test_a_bigquery_backfill_from_gcs_reruns_without_duplicates(tmp_path, backfill_bucket, bigquery_emulator,
                                                               bigquery_client, dataset_name):
    args = ["--input_files", PATTERN.format(bucket=backfill_bucket),
            "--warehouse", f"bigquery://{bigquery_emulator.project}/{dataset_name}",
            "--bigquery_endpoint", bigquery_emulator.endpoint]
    first = run(args)
    second = run(args)
    assert first["stored"] == 23 and second["stored"] == 0 and second["conservation"]["holds"]
    counts = query(bigquery_client, f"SELECT count(*) AS n, count(DISTINCT message_id) AS d "
                                    f"FROM `{dataset_name}.tracks`")[0]
    assert (counts["n"], counts["d"]) == (22, 22)
    letters = query(bigquery_client, f"SELECT count(*) AS n FROM `{dataset_name}._dead_letters`")[0]["n"]
    assert letters == 1


def test_replay_on_bigquery_stores_a_fixed_event_once(tmp_path, bigquery_emulator, bigquery_client, dataset_name):
    """The replay path on the BigQuery emulator: select, replay, record in _replays."""
    from pipeline.main import run_replay
    from tests.replay.test_replay import CONTRACT, EVENTS
    (tmp_path / "contracts" / "track").mkdir(parents=True)
    contract = tmp_path / "contracts" / "track" / "order_completed.json"
    contract.write_text(json.dumps(CONTRACT))
    (tmp_path / "sluice.yaml").write_text("contracts:\n  directory: contracts\n  violations: block\n")
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    common = ["--config", str(tmp_path / "sluice.yaml"), "--bigquery_endpoint", bigquery_emulator.endpoint,
              "--warehouse", f"bigquery://{bigquery_emulator.project}/{dataset_name}"]
    assert run(["--input_files", str(tmp_path / "events.jsonl"), *common])["dead_lettered"] == {"contract_violation": 2}
    states = f"SELECT state, latest_error_type FROM `{dataset_name}._dead_letters_view`"
    assert run_replay([*common, "--dry_run"])["dry_run"].splitlines()[0] == "would replay 2 dead letters"
    again = run_replay(common)  # the contract not fixed: both fail again, and count once each
    assert (again["replayed"], again["failed_again"]) == (2, 2)
    assert query(bigquery_client, states) == [{"state": "failed_again", "latest_error_type": "contract_violation"}] * 2
    contract.write_text(json.dumps({"type": "object"}))
    replayed = run_replay(common)
    assert (replayed["replayed"], replayed["stored"]) == (2, 2)
    assert run_replay(common)["replayed"] == 0
    assert query(bigquery_client, states) == [{"state": "fixed", "latest_error_type": "contract_violation"}] * 2
    assert query(bigquery_client, f"SELECT count(*) AS n FROM `{dataset_name}._dead_letters`")[0]["n"] == 4
    stored = query(bigquery_client, f"SELECT message_id FROM `{dataset_name}.order_completed` ORDER BY 1")
    assert [r["message_id"] for r in stored] == ["good", "in-batch", "string-total"]
    schema = bigquery_client.get_table(f"{dataset_name}._replays")
    assert schema.clustering_fields == ["dead_letter_id"] and schema.time_partitioning.field == "replayed_at"


def test_the_bigquery_view_follows_chains_and_shows_failures_whose_original_is_elsewhere(tmp_path, bigquery_emulator,
                                                                                         bigquery_client, dataset_name):
    """The view's recursive CTE on BigQuery: a pre-upgrade chain D1 -> D2 -> D3 (only
    sluice_replay_of) with D3 waiting is one failure, failed again; F2, a replay's failure whose
    original F1 is in an export, shows by itself."""
    (tmp_path / "events.jsonl").write_text("{not json\n")
    warehouse = f"bigquery://{bigquery_emulator.project}/{dataset_name}"
    run(["--input_files", str(tmp_path / "events.jsonl"), "--warehouse", warehouse, "--bigquery_endpoint",
         bigquery_emulator.endpoint])  # the dataset, _dead_letters (its row M1), _replays and the view
    letters = (("D1", 1, {}), ("D2", 2, {"sluice_replay_of": "D1"}), ("D3", 3, {"sluice_replay_of": "D2"}),
               ("F2", 2, {"sluice_replay_of": "F1", "sluice_replay_origin": "F1"}))
    values = ", ".join(f"('{i}', 'contract_violation', TIMESTAMP '2026-11-0{day} 00:00:00+00', "
                       f"JSON '{json.dumps(attributes)}')" for i, day, attributes in letters)
    query(bigquery_client, f"INSERT INTO `{dataset_name}._dead_letters` (dead_letter_id, error_type, failed_at, "
                           f"attributes) VALUES {values}")
    query(bigquery_client, f"INSERT INTO `{dataset_name}._replays` (dead_letter_id, replayed_at, replay_run) "
                           "VALUES ('D1', CURRENT_TIMESTAMP(), 'r1'), ('D2', CURRENT_TIMESTAMP(), 'r2')")
    view = query(bigquery_client, f"SELECT dead_letter_id, state, latest_dead_letter_id FROM "
                                  f"`{dataset_name}._dead_letters_view` WHERE error_type = 'contract_violation' "
                                  "ORDER BY 1")
    assert view == [{"dead_letter_id": "D1", "state": "failed_again", "latest_dead_letter_id": "D3"},
                    {"dead_letter_id": "F2", "state": "failed_again", "latest_dead_letter_id": "F2"}]


def test_a_dry_run_on_a_bigquery_dataset_that_does_not_exist_creates_nothing(bigquery_emulator, bigquery_client,
                                                                            dataset_name):
    from pipeline.main import run_replay
    with pytest.raises(UsageError, match=f"--warehouse bigquery://{bigquery_emulator.project}/{dataset_name}: "
                                         "no dataset .* \\(a dry run creates nothing\\)"):
        run_replay(["--warehouse", f"bigquery://{bigquery_emulator.project}/{dataset_name}", "--bigquery_endpoint",
                    bigquery_emulator.endpoint, "--dry_run"])
    assert [d.dataset_id for d in bigquery_client.list_datasets()].count(dataset_name) == 0
