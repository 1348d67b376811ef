"""The BigQuery warehouse against the local BigQuery emulator: the real client, the real job."""
import json

import pytest

from pipeline.main import run
from tests.conftest import FIXTURES

pytestmark = pytest.mark.integration


def track(message_id, name="Order Completed", **properties):
    return {"type": "track", "event": name, "userId": "u1", "messageId": message_id,
            "timestamp": "2026-11-02T09:00:00Z", "properties": properties}


def run_job(tmp_path, emulator, dataset, lines, config="", name="in.jsonl", method="auto"):
    (tmp_path / "sluice.yaml").write_text(config)
    (tmp_path / name).write_text("\n".join(line if isinstance(line, str) else json.dumps(line)
                                           for line in lines) + "\n")
    summary = run(["--input_files", str(tmp_path / name), "--config", str(tmp_path / "sluice.yaml"),
                   "--warehouse", f"bigquery://{emulator.project}/{dataset}",
                   "--bigquery_endpoint", emulator.endpoint, "--bigquery_write_method", method])
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


@pytest.mark.parametrize("method", ["load", "insert_all"])
def test_a_new_property_becomes_a_column_and_its_rows_land(tmp_path, bigquery_emulator, bigquery_client,
                                                           dataset_name, method):
    run_job(tmp_path, bigquery_emulator, dataset_name, [track("m1", total=10)], method=method)
    run_job(tmp_path, bigquery_emulator, dataset_name, [track("m2", total=12, coupon="AUTUMN")], name="b.jsonl",
            method=method)
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


def test_dead_letters_and_their_view_are_queryable_from_the_first_run(tmp_path, bigquery_emulator, bigquery_client,
                                                                      dataset_name):
    """A run with only good events leaves `_dead_letters` and `_dead_letters_view` empty, not
    missing (the launcher creates them): a monitoring query works before anything has failed."""
    summary = run_job(tmp_path, bigquery_emulator, dataset_name, [track("m1", total=10)])
    assert summary["stored"] == 1 and summary["dead_lettered"] == {}
    for name in ("_dead_letters", "_dead_letters_view"):
        assert query(bigquery_client, f"SELECT count(*) AS n FROM `{dataset_name}.{name}`") == [{"n": 0}]
    view = bigquery_client.get_table(f"{bigquery_emulator.project}.{dataset_name}._dead_letters_view")
    assert view.table_type == "VIEW"


def test_a_dataset_from_before_the_dead_letter_states_gets_the_new_view(tmp_path, bigquery_emulator, bigquery_client,
                                                                       dataset_name):
    """A dataset whose _dead_letters_view was the newest row per dead_letter_id (before each
    original failure's state) gets the new view at the next run (a new process: its cache cleared)."""
    from transforms.warehouse import bigquery_schema, bigquery_tables, replays
    run_job(tmp_path, bigquery_emulator, dataset_name, [track("m1", total=10)])
    ref = f"{bigquery_emulator.project}.{dataset_name}"
    bigquery_client.query(bigquery_schema.create_view_sql(f"{ref}._dead_letters_view", bigquery_schema.latest_view_sql(
        f"{ref}._dead_letters", "dead_letter_id"))).result()
    assert "state" not in {f.name for f in bigquery_client.get_table(f"{ref}._dead_letters_view").schema}
    bigquery_tables._STATES_CURRENT.discard((bigquery_emulator.project, dataset_name))
    run_job(tmp_path, bigquery_emulator, dataset_name, [track("m2", total=10)])
    current = bigquery_client.get_table(f"{ref}._dead_letters_view")
    assert "state" in {f.name for f in current.schema}
    # A state view of an earlier version (here: chains followed one step only) is replaced too
    older = current.view_query.replace(f"c.depth < {replays.MAX_CHAIN}", "c.depth < 1")
    assert older != current.view_query
    bigquery_client.query(bigquery_schema.create_view_sql(f"{ref}._dead_letters_view", older)).result()
    bigquery_tables._STATES_CURRENT.discard((bigquery_emulator.project, dataset_name))
    run_job(tmp_path, bigquery_emulator, dataset_name, [track("m3", total=10)])
    assert bigquery_client.get_table(f"{ref}._dead_letters_view").view_query == current.view_query


def page(message_id, **properties):
    return {"type": "page", "name": "Home", "userId": "u1", "messageId": message_id,
            "timestamp": "2026-11-02T09:00:00Z", "properties": properties}


def test_a_refused_row_is_a_dead_letter_while_its_batch_mates_land(tmp_path, bigquery_emulator, bigquery_client,
                                                                   dataset_name):
    """Someone retyped a column by hand (DATE, a type Sluice never writes): rows carrying it are
    refused by BigQuery, one by one, and the rest of the batch is stored."""
    from google.cloud import bigquery

    from transforms.warehouse import bigquery_schema, planner
    bigquery_client.create_dataset(f"{bigquery_emulator.project}.{dataset_name}")
    columns = list(planner.fixed_columns("pages"))
    table = bigquery_schema.new_table(f"{bigquery_emulator.project}.{dataset_name}.pages", "pages", columns)
    table.schema = list(table.schema) + [bigquery.SchemaField("code", "DATE", description="/properties/code")]
    bigquery_client.create_table(table)
    summary = run_job(tmp_path, bigquery_emulator, dataset_name,
                      [page("p1", title="a"), page("p2", code="not a date"), page("p3", title="c")])
    assert summary["stored"] == 2 and summary["dead_lettered"] == {"insert_failed": 1}
    stored = query(bigquery_client, f"SELECT message_id FROM `{dataset_name}.pages` ORDER BY 1")
    assert [r["message_id"] for r in stored] == ["p1", "p3"]
    [letter] = query(bigquery_client, f"SELECT message_id, error_stage, error_message, payload "
                                      f"FROM `{dataset_name}._dead_letters`")
    assert (letter["message_id"], letter["error_stage"]) == ("p2", "warehouse")
    assert "invalid at code" in letter["error_message"]
    assert json.loads(letter["payload"]) == page("p2", code="not a date")


def identify(message_id, timestamp, **traits):
    return {"type": "identify", "userId": "u9", "messageId": message_id, "timestamp": timestamp, "traits": traits}


def test_views_show_one_row_per_message_and_the_latest_traits_per_user(tmp_path, bigquery_emulator,
                                                                     bigquery_client, dataset_name):
    run_job(tmp_path, bigquery_emulator, dataset_name, [
        identify("i1", "2026-11-01T09:00:00Z", email="old@example.com", plan="free"),
        identify("i2", "2026-11-02T09:00:00Z", plan="pro"),
        track("t1", total=1)])
    # The same message written again later (a replay past the insertId window): two rows, one in the view.
    ref = f"{bigquery_emulator.project}.{dataset_name}.tracks"
    assert bigquery_client.insert_rows_json(ref, [{"message_id": "t1", "event": "order_completed",
                                                   "timestamp": "2026-11-02T09:00:00Z",
                                                   "loaded_at": "2030-01-01T00:00:00Z"}], row_ids=["other"]) == []
    assert query(bigquery_client, f"SELECT count(*) AS n FROM `{dataset_name}.tracks`")[0]["n"] == 2
    view = query(bigquery_client, f"SELECT message_id, loaded_at FROM `{dataset_name}.tracks_view`")
    assert [(r["message_id"], r["loaded_at"].year) for r in view] == [("t1", 2030)]
    users = query(bigquery_client, f"SELECT id, email, plan FROM `{dataset_name}.users_view`")
    assert users == [{"id": "u9", "email": "old@example.com", "plan": "pro"}]
    assert query(bigquery_client, f"SELECT count(*) AS n FROM `{dataset_name}.users`")[0]["n"] == 2


def test_users_view_follows_new_traits(tmp_path, bigquery_emulator, bigquery_client, dataset_name):
    run_job(tmp_path, bigquery_emulator, dataset_name, [identify("i1", "2026-11-01T09:00:00Z", plan="free")])
    run_job(tmp_path, bigquery_emulator, dataset_name, [identify("i2", "2026-11-02T09:00:00Z", company="ACME")],
            name="b.jsonl")
    assert query(bigquery_client, f"SELECT id, plan, company FROM `{dataset_name}.users_view`") == [
        {"id": "u9", "plan": "free", "company": "ACME"}]


def test_concurrent_schema_additions_from_two_workers_both_land(bigquery_emulator, bigquery_client, dataset_name):
    """Two processes (two workers' caches, no shared lock) add columns to one table at once:
    a stale patch is refused (412, or 400 for a field it would remove), re-read and retried.
    The proxy passes one request at a time: the emulator's storage (DuckLake) fails concurrent
    commits outright, even of inserts into other tables, which BigQuery does not do."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from tests.integration.bigquery_workers import write_with_new_columns
    from tests.integration.faultproxy import FaultProxy
    with FaultProxy(bigquery_emulator.endpoint, serialize=True) as proxy, \
            ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(write_with_new_columns, proxy.url, bigquery_emulator.project,
                               dataset_name, worker, 8) for worker in ("a", "b")]
        outcomes = [f.result(timeout=240) for f in futures]
        patches = [r for r in proxy.requests if r[0] == "PATCH"]
    assert outcomes == [(8, 0), (8, 0)]
    assert len(patches) >= 15  # a column per batch, less the one the table was created with
    table = bigquery_client.get_table(f"{bigquery_emulator.project}.{dataset_name}.shared")
    names = {f.name for f in table.schema}
    assert {f"{w}_{b}" for w in "ab" for b in range(8)} <= names and "common" in names
    assert query(bigquery_client, f"SELECT count(*) AS n FROM `{dataset_name}.shared`")[0]["n"] == 16


def test_a_rerun_of_a_backfill_stores_nothing_twice(tmp_path, bigquery_emulator, bigquery_client, dataset_name):
    lines = [track(f"m{i}", total=i) for i in range(5)] + [identify("i1", "2026-11-01T09:00:00Z", plan="pro")]
    first = run_job(tmp_path, bigquery_emulator, dataset_name, lines, method="load")
    again = run_job(tmp_path, bigquery_emulator, dataset_name, lines, method="load")
    assert first["stored"] == 6 and again["stored"] == 0 and again["dropped"] == {"duplicate": 6}
    counts = {t: query(bigquery_client, f"SELECT count(*) AS n FROM `{dataset_name}.{t}`")[0]["n"]
              for t in ("tracks", "order_completed", "identifies", "users")}
    assert counts == {"tracks": 5, "order_completed": 5, "identifies": 1, "users": 1}
    assert first["api_calls"]["jobs.load"] == 4 and "tabledata.insertAll" not in first["api_calls"]


def test_past_the_column_cap_new_properties_go_to_unmapped(tmp_path, bigquery_emulator, bigquery_client,
                                                           dataset_name):
    many = {f"p{i:02d}": i for i in range(30)}
    summary = run_job(tmp_path, bigquery_emulator, dataset_name, [track("m1", **many)],
                      config="warehouse:\n  max_columns_per_table: 25\n")
    table = bigquery_client.get_table(f"{bigquery_emulator.project}.{dataset_name}.order_completed")
    assert len(table.schema) == 25
    capped = summary["column_cap"]["order_completed"]
    [row] = query(bigquery_client, f"SELECT TO_JSON_STRING(_unmapped) AS u FROM `{dataset_name}.order_completed`")
    unmapped = json.loads(row["u"])
    unmapped = json.loads(unmapped) if isinstance(unmapped, str) else unmapped
    assert len(unmapped) == capped > 0
    assert all(unmapped[f"/properties/{k}"] == many[k] for k in (p.split("/")[-1] for p in unmapped))
