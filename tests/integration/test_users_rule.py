"""The `users` table's rule, the same whatever the runner and warehouse: one row per user with
each trait's newest non-null value (DuckDB's `users`, BigQuery's `users_view`: BigQuery appends
the identifies to `users`), and `rows.users` counts the identifies applied to it. A DuckDB batch
run counted its upserts after merging a batch's rows per user (182 for the sample), streaming
and BigQuery runs counted every identify (228). The streaming run is test_streaming_pubsub's,
whose messages include IDENTIFIES."""
import json

import duckdb
import pytest

from pipeline.main import run
from pipeline.summary import format_table
from tests.conftest import rows
from tests.integration.test_bigquery_warehouse import query

pytestmark = pytest.mark.integration

# One user identified three times out of order (the newest traits win, older ones fill gaps),
# another once, and an identify without a userId (no users row).
IDENTIFIES = [
    {"type": "identify", "userId": "u7", "messageId": "i1", "timestamp": "2026-11-01T10:00:00Z",
     "traits": {"plan": "free", "email": "a@example.com"}},
    {"type": "identify", "userId": "u7", "messageId": "i3", "timestamp": "2026-11-03T10:00:00Z",
     "traits": {"plan": "pro"}},
    {"type": "identify", "userId": "u7", "messageId": "i2", "timestamp": "2026-11-02T10:00:00Z",
     "traits": {"plan": "team", "name": "Ann"}},
    {"type": "identify", "userId": "u8", "messageId": "i4", "timestamp": "2026-11-01T10:00:00Z",
     "traits": {"plan": "team"}},
    {"type": "identify", "anonymousId": "a9", "messageId": "i5", "traits": {"plan": "free"}},
]
USERS = [{"id": "u7", "plan": "pro", "name": "Ann", "email": "a@example.com"},
         {"id": "u8", "plan": "team", "name": None, "email": None}]
USERS_SQL = "SELECT id, plan, name, email FROM {} ORDER BY id"


def run_identifies(tmp_path, *warehouse) -> dict:
    (tmp_path / "identifies.jsonl").write_text("".join(json.dumps(e) + "\n" for e in IDENTIFIES))
    return run(["--input_files", str(tmp_path / "identifies.jsonl"), *warehouse])


def test_a_duckdb_batch_run_keeps_the_newest_traits_per_user_and_counts_every_identify(tmp_path):
    summary = run_identifies(tmp_path, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb")
    assert summary["tables"]["users"] == 4  # 2 before: the batch's rows merged per user first
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        assert rows(conn, USERS_SQL.format("users")) == USERS
    # The printed table does not call the 4 rows (the table has 2), nor adds them to the rows written.
    printed = format_table(summary).splitlines()
    assert "identifies applied to users 4" in [" ".join(line.split()) for line in printed]
    assert not any(line.split()[0] == "users" for line in printed if line.strip())
    identifies = summary["tables"]["identifies"]
    assert [line.split()[-1] for line in printed if line.startswith("rows written")] == [str(identifies)]


def test_a_bigquery_batch_run_keeps_the_same_users_and_prints_its_api_calls(tmp_path, bigquery_emulator,
                                                                            bigquery_client, dataset_name):
    summary = run_identifies(tmp_path, "--warehouse", f"bigquery://{bigquery_emulator.project}/{dataset_name}",
                             "--bigquery_endpoint", bigquery_emulator.endpoint)
    assert summary["tables"]["users"] == 4
    assert query(bigquery_client, USERS_SQL.format(f"`{dataset_name}.users_view`")) == USERS
    printed = format_table(summary).splitlines()  # the API calls bigquery.md promises, in the printed summary
    assert any(line.startswith("BigQuery API calls") for line in printed)
    assert any(line.split() == ["jobs.load", str(summary["api_calls"]["jobs.load"])] for line in printed)
