"""Upgrading a warehouse whose columns were named by the rules before go-snakecase (issue 14).

A column is found by the JSON pointer its values come from (`_sluice_columns.source` in
DuckDB, the column's description in BigQuery), never by its name. So after the naming change
a path keeps writing into the column the old rules named, and only paths new to a table get
names by the new rules (docs/column-names.md#migrating).
"""
import re
import unicodedata

import duckdb

from tests.conftest import run_file_job
from transforms.messages import Event
from transforms.normalize import normalize_event
from transforms.warehouse import bigquery_schema, layout, naming, planner
from transforms.warehouse.duckdb_backend import DuckDBWarehouse

NOW = "2026-11-23T10:00:00.000000Z"


def event(body):
    return Event(normalize_event(body, NOW), body, None, {}, "test", NOW)


def query(path, sql):
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def columns_of(path, table):
    return {r[0] for r in query(path, f"SELECT column_name FROM information_schema.columns WHERE table_name = '{table}'")}


def mapping(path):
    """(table, source) -> column, from the table the DuckDB backend keeps."""
    return {(t, s): c for t, c, s in query(path, "SELECT table_name, column_name, source FROM _sluice_columns")}


def test_a_column_the_old_rules_named_keeps_its_path(tmp_path):
    """The previous release named `properties.$something%` `_something_`; the new rules say
    `something`. The path's values keep going to `_something_` and no column is added."""
    path = tmp_path / "w.duckdb"
    props = {"type": "track", "event": "Order Completed", "userId": "u"}
    warehouse = DuckDBWarehouse(str(path)).open()
    warehouse.write_events([event({**props, "messageId": "m0", "properties": {"total": 1}})])
    warehouse.close()
    with duckdb.connect(str(path)) as conn:  # what the previous release left behind
        conn.execute('ALTER TABLE order_completed ADD COLUMN "_something_" VARCHAR')
        conn.execute("INSERT INTO _sluice_columns VALUES "
                     "('order_completed', '_something_', 'STRING', '/properties/$something%', now())")
    before = columns_of(path, "order_completed")
    assert naming.column_name(("$something%",)) == "something"

    warehouse = DuckDBWarehouse(str(path)).open()
    result = warehouse.write_events([event({**props, "messageId": "m1", "properties": {"$something%": "kept"}})])
    warehouse.close()

    assert len(result.stored) == 1
    assert query(path, 'SELECT message_id, "_something_" FROM order_completed ORDER BY 1') == [
        ("m0", None), ("m1", "kept")]
    assert columns_of(path, "order_completed") == before
    assert query(path, "SELECT column_name FROM _sluice_columns WHERE source = '/properties/$something%'") == [
        ("_something_",)]


def test_bigquery_finds_the_old_column_by_its_description():
    """BigQuery keeps each column's pointer in its description: a table read back with a
    column the old rules named is planned into that column, and nothing is added."""
    fields = [bigquery_schema.field(c) for c in planner.fixed_columns("order_completed")]
    fields.append(bigquery_schema.field(planner.Column("_something_", planner.STRING, "/properties/$something%")))
    schema = bigquery_schema.table_schema("order_completed", fields)
    body = normalize_event({"type": "track", "event": "Order Completed", "userId": "u", "messageId": "m1",
                            "properties": {"$something%": "kept"}}, NOW)
    rows = [r for r in layout.table_rows(body, planner.DEFAULT_FLATTEN_DEPTH) if r.table == "order_completed"]
    plan = planner.plan_rows(schema, rows)
    assert plan.new_columns == [] and plan.columns["_something_"] == ["kept"]


# The naming rules of the release before issue 14 (transforms/warehouse/naming.py at commit
# ff0676d): accents folded, acronyms split, symbols to `_` (kept at the ends of a key).
_OLD_ACRONYM = re.compile(r"([A-Z]+)([A-Z][a-z])")
_OLD_CAMEL = re.compile(r"([a-z])([A-Z])|([0-9])([A-Z][a-z])")


def _old_snake_case(key):
    folded = "".join(c for c in unicodedata.normalize("NFKD", key) if not unicodedata.combining(c))
    folded = _OLD_CAMEL.sub(lambda m: "_".join(filter(None, m.groups())), _OLD_ACRONYM.sub(r"\1_\2", folded)).lower()
    return re.sub(r"_{2,}", "_", re.sub(r"[^a-z0-9_]+", "_", folded))


def _old_finish(name, source, fallback_prefix, max_length):
    if not re.search(r"[a-z0-9]", name):
        name = f"{fallback_prefix}_{naming.short_hash(source)}"
    if name[0].isdigit() or name in naming.RESERVED_WORDS:
        name = "_" + name
    if len(name) > max_length:
        name = name[: max_length - 9].rstrip("_") + "_" + naming.short_hash(source)
    return name


def old_column_name(segments, max_length=naming.MAX_NAME_LENGTH):
    joined = re.sub(r"_{2,}", "_", "_".join(_old_snake_case(s) for s in segments))
    return _old_finish(joined, "\x00".join(segments), "col", max_length)


def old_table_name(event_name, max_length=naming.MAX_NAME_LENGTH):
    name = _old_finish(_old_snake_case(event_name).strip("_"), event_name, "event", max_length)
    return "_" + name if name in naming.FIXED_TABLES else name


# Keys the two rule sets name differently (old -> new), plus one they agree on.
PROPERTIES = {"$something%": "a", "prénom": "b", "HTTPStatusCode": 200, "ABTest": True,
              "v2API": "c", "nested": {"Base64Encode": "d", "_private_": "e"}, "plain": 1}
CONTEXT = {"page": {"URL": "https://x.test/"}, "$browser": "firefox"}


def old_release_events():
    return [
        {"type": "track", "event": "Order Completed", "userId": "u", "messageId": "t1",
         "properties": PROPERTIES, "context": CONTEXT},
        {"type": "identify", "userId": "u", "messageId": "i1", "traits": PROPERTIES, "context": CONTEXT},
        {"type": "page", "name": "Home", "anonymousId": "a", "messageId": "p1", "properties": PROPERTIES},
    ]


def test_a_warehouse_the_previous_release_wrote_keeps_its_columns(tmp_path, monkeypatch):
    """Tables the old rules named, then the new release's whole job over the same paths: every
    path's values land in its old column, and the only column added is for a path new to the
    table, even where its new-style name is an old column's name (`prenom`)."""
    path = tmp_path / "w.duckdb"
    monkeypatch.setattr(naming, "column_name", old_column_name)
    monkeypatch.setattr(naming, "table_name", old_table_name)
    warehouse = DuckDBWarehouse(str(path)).open()
    assert len(warehouse.write_events([event(e) for e in old_release_events()]).stored) == 3
    warehouse.close()
    monkeypatch.undo()

    old_columns = {t: columns_of(path, t) for t in ("order_completed", "tracks", "identifies", "users", "pages")}
    old_mapping = mapping(path)
    # The previous release's names, and that the new rules would have named them otherwise.
    assert {"_something_", "prenom", "http_status_code", "ab_test", "v2api", "nested_base64_encode",
            "nested_private_", "plain"} <= old_columns["order_completed"]
    assert {"context_page_url", "context_browser"} <= old_columns["tracks"]
    assert [naming.column_name((k,)) for k in ("$something%", "prénom", "HTTPStatusCode", "ABTest", "v2API")] == [
        "something", "pr_nom", "httpstatus_code", "abtest", "v2_api"]

    upgraded = [{**e, "messageId": e["messageId"].replace("1", "2")} for e in old_release_events()]
    upgraded[0]["properties"] = {**PROPERTIES, "prenom": "new path"}
    summary, conn = run_file_job(tmp_path, upgraded, "")
    conn.close()
    assert summary["stored"] == 3

    new_mapping = mapping(path)
    assert {k: v for k, v in new_mapping.items() if k in old_mapping} == old_mapping
    added = {k: v for k, v in new_mapping.items() if k not in old_mapping}
    assert list(added) == [("order_completed", "/properties/prenom")]
    assert added[("order_completed", "/properties/prenom")].startswith("prenom_")  # taken by prénom
    assert columns_of(path, "order_completed") == old_columns["order_completed"] | set(added.values())
    for table in ("tracks", "identifies", "users", "pages"):
        assert columns_of(path, table) == old_columns[table], table

    values = query(path, 'SELECT message_id, "_something_", prenom, http_status_code, ab_test, v2api, '
                         'nested_base64_encode, nested_private_, plain FROM order_completed ORDER BY 1')
    assert values == [("t1", "a", "b", 200, True, "c", "d", "e", 1), ("t2", "a", "b", 200, True, "c", "d", "e", 1)]
    assert query(path, "SELECT message_id, context_page_url, context_browser FROM tracks ORDER BY 1") == [
        ("t1", "https://x.test/", "firefox"), ("t2", "https://x.test/", "firefox")]
    assert query(path, 'SELECT message_id, "_something_", prenom FROM identifies ORDER BY 1') == [
        ("i1", "a", "b"), ("i2", "a", "b")]
    assert query(path, 'SELECT message_id, http_status_code FROM pages ORDER BY 1') == [("p1", 200), ("p2", 200)]
