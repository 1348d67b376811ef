"""Each policy from input file to warehouse tables and dead letters, through the real job."""
import json

import pytest

from tests.conftest import rows, run_file_job
from tests.contracts.helpers import COMMON, ORDER, write_contracts

GOOD = {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "good",
        "timestamp": "2026-11-02T09:00:00Z", "properties": {"orderId": "o-1", "total": 10, "quantity": 2,
                                                            "paidAt": "2026-11-02T10:00:00+01:00"}}
BAD = {**GOOD, "messageId": "bad", "properties": {"orderId": "o-2", "total": "ten", "quantity": 1}}
UNPLANNED = {"type": "track", "event": "Order Refunded", "userId": "u1", "messageId": "unplanned"}


def run_job(tmp_path, contracts_config: str, lines=(GOOD, BAD, UNPLANNED)):
    write_contracts(tmp_path / "contracts", {"common": COMMON, "track/order_completed": ORDER})
    return run_file_job(tmp_path, lines, f"contracts:\n  directory: contracts\n{contracts_config}")


def test_allow_stores_violations_in_a_column(tmp_path):
    summary, conn = run_job(tmp_path, "  violations: allow\n")
    assert summary["stored"] == 3 and summary["contracts"] == {"unplanned": 1, "violations": 1, "omitted": 0}
    found = {r["message_id"]: r for r in rows(conn, "SELECT message_id, total, _violations, _unmapped FROM order_completed")}
    assert found["good"]["_violations"] is None and found["good"]["total"] == 10.0
    violations = json.loads(found["bad"]["_violations"])
    assert [(v["pointer"], v["keyword"], v["action"]) for v in violations] == [("/properties/total", "type", "kept")]
    assert found["bad"]["total"] is None  # a declared FLOAT64 column: the string is kept in _unmapped
    assert json.loads(found["bad"]["_unmapped"]) == {"/properties/total": "ten"}


def test_omit_properties_stores_the_rest(tmp_path):
    summary, conn = run_job(tmp_path, "  violations: omit_properties\n")
    assert summary["stored"] == 3 and summary["contracts"]["omitted"] == 1
    bad = rows(conn, "SELECT total, order_id, _violations, _unmapped FROM order_completed WHERE message_id = 'bad'")[0]
    assert bad["total"] is None and bad["_unmapped"] is None and bad["order_id"] == "o-2"
    assert json.loads(bad["_violations"])[0]["action"] == "omitted"


def test_block_dead_letters_every_violation_and_keeps_the_payload(tmp_path):
    summary, conn = run_job(tmp_path, "  violations: block\n")
    assert summary["stored"] == 2 and summary["dead_lettered"] == {"contract_violation": 1}
    assert summary["contracts"] == {"unplanned": 1, "violations": 1, "omitted": 0}  # a blocking one counts too
    dead = rows(conn, "SELECT * FROM _dead_letters")[0]
    assert dead["error_stage"] == "contracts" and dead["message_id"] == "bad"
    assert json.loads(dead["payload"]) == BAD  # untouched: replayable once the contract is fixed
    # every violation: BAD breaks the contract once (total), and that is all the record lists
    assert [(v["pointer"], v["keyword"]) for v in json.loads(dead["error_details"])["violations"]] == [
        ("/properties/total", "type")]
    assert [r["message_id"] for r in rows(conn, "SELECT message_id FROM order_completed")] == ["good"]


def test_unplanned_block(tmp_path):
    summary, conn = run_job(tmp_path, "  unplanned: block\n")
    assert summary["dead_lettered"] == {"unplanned_event": 1}
    assert rows(conn, "SELECT error_type, message_id FROM _dead_letters") == [
        {"error_type": "unplanned_event", "message_id": "unplanned"}]
    tables = {r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert "order_refunded" not in tables


def test_declared_types_shape_the_columns(tmp_path):
    _, conn = run_job(tmp_path, "", lines=(GOOD,))
    types = dict(conn.execute("SELECT column_name, data_type FROM duckdb_columns() "
                              "WHERE table_name = 'order_completed'").fetchall())
    # the first value of total is 10, an integer: without the contract it would be BIGINT
    assert types["total"] == "DOUBLE" and types["paid_at"] == "TIMESTAMP WITH TIME ZONE"
    assert rows(conn, "SELECT CAST(paid_at AS VARCHAR) AS t FROM order_completed")[0]["t"].startswith("2026-11-02 09:00:00")


@pytest.mark.parametrize("policy", ["allow", "omit_properties", "block"])
def test_every_policy_conserves_against_the_warehouse(tmp_path, policy):
    summary, conn = run_job(tmp_path, f"  violations: {policy}\n  unplanned: block\n")
    stored = conn.execute("SELECT count(*) FROM tracks").fetchone()[0]
    dead = conn.execute("SELECT count(*) FROM _dead_letters").fetchone()[0]
    assert (stored, dead) == (summary["stored"], sum(summary["dead_lettered"].values()))
