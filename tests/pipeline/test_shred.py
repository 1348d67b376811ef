"""Shredding in bulk (transforms.warehouse.shred) against real DuckDB files: a batch whose fields
all have columns is written by DuckDB from the events' JSON text, and what lands must be what
Python's planner writes, value for value, whatever the batch holds."""
import json
import math
import re
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import validate
from pipeline.errors import UsageError
from pipeline.graph import warehouse_settings
from transforms.messages import Event
from transforms.normalize import normalize_event
from transforms.warehouse import layout, shred, sink
from transforms.warehouse.duckdb_backend import DuckDBWarehouse
from transforms.warehouse.sink import opened_backend

NOW = "2026-11-23T10:00:00.000000Z"
SAMPLE = Path(__file__).resolve().parents[2] / "samples" / "events.jsonl"


def event(body, violations=None):
    return Event(normalize_event(dict(body), NOW), body, None, {}, "test", NOW, violations=violations)


def track(message_id, properties, name="Order Completed", **fields):
    return event({"type": "track", "event": name, "userId": "u", "messageId": message_id,
                  "properties": properties, **fields})


def write(path, batches, shred_in_bulk, **options):
    warehouse = DuckDBWarehouse(str(path), shred_in_bulk=shred_in_bulk, **options).open()
    try:
        return [warehouse.write_events(batch) for batch in batches]
    finally:
        warehouse.close()


def outcome(result) -> tuple:
    """A WriteResult, comparable across paths (order aside, zero counts dropped)."""
    ids = lambda events: sorted(e.body["messageId"] for e in events)  # noqa: E731
    return (ids(result.stored), ids(result.duplicates), sorted(e.body["messageId"] for e, _ in result.failed),
            sorted((t, n) for t, n in result.rows.items() if n),
            sorted((t, n) for t, n in result.type_conflicts.items() if n),
            sorted((t, n) for t, n in result.capped.items() if n))


def contents(path) -> dict:
    """Every table's rows, each value by the source its column holds (which of two sources that
    propose one name gets it plain depends on the order events are planned in, not on the path),
    JSON parsed (DuckDB may write a float in other notation); and each table's (source, type)."""
    found = {}
    with duckdb.connect(str(path), read_only=True) as conn:
        registry = conn.execute("SELECT table_name, column_name, column_type, source FROM _sluice_columns").fetchall()
        found["columns"] = sorted((table, source, kind) for table, _, kind, source in registry)
        sources = {(table, name): source for table, name, _, source in registry}
        for (table,) in conn.execute("SELECT DISTINCT table_name FROM _sluice_columns").fetchall():
            columns = conn.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ? "
                                   "AND column_name != 'loaded_at'", [table]).fetchall()
            select = ", ".join(f'"{name}"' for name, _ in columns)
            found[table] = sorted(
                (tuple(sorted((sources.get((table, name), name), json.loads(v) if kind == "JSON" else v)
                              for (name, kind), v in zip(columns, row) if v is not None))
                 for row in conn.execute(f'SELECT {select} FROM "{table}"').fetchall()), key=repr)
        for table in ("_dead_letters", "_deliveries"):
            found[table] = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return found


def both_ways(tmp_path, batches, **options):
    """(results, contents) written with the bulk path, then with Python alone; asserts they agree."""
    bulk = write(tmp_path / "bulk.duckdb", batches, True, **options)
    planned = write(tmp_path / "planned.duckdb", batches, False, **options)
    assert [outcome(r) for r in bulk] == [outcome(r) for r in planned]
    assert contents(tmp_path / "bulk.duckdb") == contents(tmp_path / "planned.duckdb")
    return bulk


def test_a_steady_batch_goes_in_bulk_and_lands_as_python_would_write_it(tmp_path):
    first = [track(f"a{i}", {"total": 1.5 * i, "coupon": f"C{i}", "qty": i, "gift": i % 2 == 0,
                             "items": [{"sku": i}], "nested": {"deep": {"x": i}}},
                   context={"ip": "203.0.113.1", "page": {"url": f"/p{i}"}}, integrations={"All": False})
             for i in range(5)]
    second = [track(f"b{i}", {"total": i, "coupon": None, "qty": -i, "gift": True, "items": [],
                              "nested": {"deep": {"x": None}}},
                    context={"ip": "203.0.113.2", "page": {"url": "/q"}}) for i in range(5)]
    results = both_ways(tmp_path, [first, second])
    assert results[0].shredded == 0  # the tables did not exist: Python made them
    assert results[1].shredded == 5 and results[1].rows == {"tracks": 5, "order_completed": 5}


def test_a_new_field_sends_its_group_to_python_and_the_others_stay_in_bulk(tmp_path):
    first = [track("a1", {"total": 1}), track("a2", {"plan": "x"}, name="Signed Up")]
    second = [track("b1", {"total": 2, "coupon": "NEW"}), track("b2", {"plan": "y"}, name="Signed Up")]
    results = both_ways(tmp_path, [first, second])
    assert results[1].shredded == 1  # Signed Up; Order Completed added its coupon column in Python
    with duckdb.connect(str(tmp_path / "bulk.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT coupon FROM order_completed WHERE message_id = 'b1'").fetchall() == [("NEW",)]


@pytest.mark.parametrize("value, shredded", [("seven", 2), ([1], 2), (7.0, 2), (2 ** 63, 0), (1.5, 0), (1e20, 0),
                                             ({"a": 1}, 0)])
def test_a_value_its_column_does_not_take_is_sorted_as_python_sorts_it(tmp_path, value, shredded):
    """In an INT64 column: a string and an array are type conflicts, kept in `_unmapped` row by row
    in bulk; 7.0 is stored as 7. An integer past INT64 (where every value is an integer) fails the
    bulk INSERT's cast; a fraction or a float past 2^53 (the column is widened) and an object
    (flattened into columns of its own) change the schema: each of those batches is planned in Python."""
    first = [track("a1", {"total": 3})]
    second = [track("b1", {"total": value}), track("b2", {"total": 4})]
    results = both_ways(tmp_path, [first, second])
    assert len(results[1].stored) == 2 and not results[1].failed and results[1].shredded == shredded


def test_an_integer_past_2_53_for_a_float_column_is_a_conflict_not_a_rounding(tmp_path):
    first = [track("a1", {"total": 1.5})]
    second = [track("b1", {"total": 2 ** 53 + 1}), track("b2", {"total": 2})]
    results = both_ways(tmp_path, [first, second])
    assert results[1].type_conflicts["order_completed"] == 1
    with duckdb.connect(str(tmp_path / "bulk.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT _unmapped FROM order_completed WHERE message_id = 'b1'").fetchone()[0] == \
            json.dumps({"/properties/total": 2 ** 53 + 1}, separators=(",", ":"))


def test_empty_objects_violations_and_identifies_with_users_are_planned_in_python(tmp_path):
    violation = [{"path": "/properties/total", "message": "x"}]
    first = [track("a1", {"total": 1, "meta": {}}),
             event({"type": "track", "event": "Order Completed", "userId": "u", "messageId": "a2",
                    "properties": {"total": 4}}, violations=violation),
             event({"type": "identify", "userId": "u1", "messageId": "i1", "traits": {"plan": "pro"}})]
    second = [track("b1", {"total": 2, "meta": {}}),
              track("b2", {"total": 3}),
              event({"type": "track", "event": "Order Completed", "userId": "u", "messageId": "b3",
                     "properties": {"total": 4}}, violations=violation),
              event({"type": "identify", "userId": "u1", "messageId": "i2", "traits": {"plan": "free"}})]
    results = both_ways(tmp_path, [first, second])
    assert results[1].shredded == 1  # b2 alone


def test_a_table_the_batch_planned_in_python_changes_takes_its_shreddable_events_along(tmp_path):
    """The first value decides a new column's type: a new field seen first in an event the bulk
    path could write, then in one only Python plans, gets the first one's type, as in Python."""
    first = [track("a1", {"total": 1})]
    second = [track("b1", {"total": 2, "fresh": False}), track("b2", {"total": 3, "fresh": [], "meta": {}}),
              track("b3", {"total": 4})]
    results = both_ways(tmp_path, [first, second])
    assert results[1].shredded == 0 and results[1].type_conflicts["order_completed"] == 1


def test_a_group_left_to_python_that_may_widen_a_shared_column_holds_the_others_back(tmp_path):
    """Python widens an INT64 column only if its stored integers fit a double: bulk rows of the same
    batch must not be there first. `Signed Up` brings a new field (planned in Python after the
    commit) and a fraction for tracks' `context.n`; `Order Completed`'s 2^60 would have been stored
    before it, and the widening refused."""
    first = [track("a1", {"total": 1}, context={"n": 2}),
             track("a2", {"plan": "x"}, name="Signed Up", context={"n": 3})]
    second = [track("b1", {"plan": "y", "fresh": 1}, name="Signed Up", context={"n": 1.5}),
              track("b2", {"total": 2}, context={"n": 2 ** 60})]
    results = both_ways(tmp_path, [first, second])
    assert results[1].shredded == 0 and results[1].type_conflicts["tracks"] == 1


def test_a_field_both_object_and_scalar_in_a_left_group_holds_back_the_int64_columns_below_it(tmp_path):
    """Merged, an object and a scalar at one field are "JSON", which hides the object's fields: an
    INT64 column under that field may still be widened by the group's Python plan."""
    warehouse = DuckDBWarehouse(str(tmp_path / "w.duckdb")).open()
    warehouse.write_events([track("a1", {"total": 1}, context={"screen": {"density": 2}})])
    structure = {"type": "VARCHAR", "event": "VARCHAR", "context": "JSON", "properties": {"total": "UBIGINT"}}
    found = shred.widening("track:order_completed", structure, warehouse._db.schemas, 3)
    plain = shred.widening("track:order_completed", {**structure, "context": {"screen": {"density": "UBIGINT"}}},
                           warehouse._db.schemas, 3)
    warehouse.close()
    assert found == {"tracks", "order_completed"} and plain == set()


def test_a_top_level_key_that_differs_from_the_section_only_in_case_leaves_its_group_to_python(tmp_path):
    """DuckDB's structs fold case: `Properties` beside `properties` cannot share one json_transform."""
    first = [track("a1", {"total": 1}, Properties={"a": 1}), track("a2", {"plan": "x"}, name="Signed Up")]
    second = [track("b1", {"total": 2}, Properties={"a": 2}), track("b2", {"plan": "y"}, name="Signed Up")]
    results = both_ways(tmp_path, [first, second])
    assert results[1].shredded == 1  # Signed Up; the batch was not failed and planned again whole


def test_an_event_left_to_python_whose_rows_cannot_be_made_fails_alone(tmp_path, monkeypatch):
    """The bulk part of the batch is committed by then: the one event becomes an insert_failed
    dead letter, not the whole batch (a fault injected around the real layout)."""
    warehouse = DuckDBWarehouse(str(tmp_path / "w.duckdb")).open()
    warehouse.write_events([track("a1", {"total": 1}), track("a2", {"plan": "x"}, name="Signed Up")])
    real = layout.event_rows

    def failing(event, *args):
        if event.body["messageId"] == "b1":
            raise RuntimeError("injected")
        return real(event, *args)

    monkeypatch.setattr(layout, "event_rows", failing)
    result = warehouse.write_events([track("b1", {"plan": "y", "fresh": 1}, name="Signed Up"),
                                     track("b2", {"total": 2})])
    monkeypatch.undo()
    warehouse.close()
    assert [e.body["messageId"] for e in result.stored] == ["b2"] and result.shredded == 1
    assert [(e.body["messageId"], error) for e, error in result.failed] == [("b1", "RuntimeError: injected")]


def test_duplicates_within_and_across_batches_are_counted_as_in_python(tmp_path):
    first = [track("a1", {"total": 1}), track("a2", {"total": 2})]
    second = [track("a1", {"total": 1}), track("b1", {"total": 3}), track("b1", {"total": 3})]
    results = both_ways(tmp_path, [first, second, second])
    assert len(results[1].duplicates) == 2 and len(results[2].duplicates) == 3


def test_a_structure_query_out_of_memory_leaves_the_batch_to_python(tmp_path, monkeypatch):
    """DuckDB's json_group_structure grows with its rows; at the memory budget the batch is planned
    in Python rather than the budget raised (a fault injected around the real connection)."""
    warehouse = DuckDBWarehouse(str(tmp_path / "w.duckdb")).open()
    warehouse.write_events([track("a1", {"total": 1})])
    real = warehouse._db.conn

    class Refusing:
        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *args):
            if "json_group_structure" in sql:
                raise duckdb.OutOfMemoryException("injected")
            return real.execute(sql, *args)

    monkeypatch.setattr(warehouse._db, "conn", Refusing())
    result = warehouse.write_events([track("b1", {"total": 2})])
    monkeypatch.undo()
    warehouse.close()
    assert len(result.stored) == 1 and result.shredded == 0 and result.rows["order_completed"] == 1


def test_a_structure_part_out_of_memory_is_read_in_halves_and_the_batch_still_goes_in_bulk(tmp_path, monkeypatch):
    """What else DuckDB holds counts against the budget too: a part that runs out is split in two
    until the parts fit (a fault injected around the real connection for parts over 2 rows)."""
    monkeypatch.setattr(shred, "STRUCTURE_ROWS", 8)
    monkeypatch.setattr(shred, "MIN_STRUCTURE_ROWS", 1)
    warehouse = DuckDBWarehouse(str(tmp_path / "w.duckdb")).open()
    warehouse.write_events([track("a0", {"total": 1})])
    real, parts = warehouse._db.conn, []

    class Refusing:
        def __getattr__(self, name):
            return getattr(real, name)

        def execute(self, sql, *args):
            if "json_group_structure" in sql:
                start, end = map(int, re.search(r"n >= (\d+) AND n < (\d+)", sql).groups())
                parts.append((start, end - start))
                if end - start > 2:
                    raise duckdb.OutOfMemoryException("injected")
            return real.execute(sql, *args)

    monkeypatch.setattr(warehouse._db, "conn", Refusing())
    result = warehouse.write_events([track(f"b{i}", {"total": i}) for i in range(6)])
    monkeypatch.undo()
    warehouse.close()
    assert result.shredded == 6 and result.rows["order_completed"] == 6
    assert parts == [(0, 6), (0, 3), (0, 1), (1, 2), (3, 3), (3, 1), (4, 2)]


def test_a_batch_larger_than_one_structure_query_merges_its_parts(tmp_path, monkeypatch):
    monkeypatch.setattr(shred, "STRUCTURE_ROWS", 2)
    first = [track(f"a{i}", {"n": i, "f": 0.5, "s": "x"}) for i in range(3)]
    second = [track("b0", {"n": -1}), track("b1", {"f": 2}), track("b2", {"s": "y", "n": 5}),
              track("b3", {"f": 1.25}), track("b4", {"n": 18446744073709551615})]
    results = both_ways(tmp_path, [first, second])
    assert len(results[1].stored) == 5


_KEYS = st.sampled_from(["a", "A", "b", "x/y", "t~1", "c.d", 'q"', "", "é", "total"])
_SCALARS = (st.none() | st.booleans() | st.integers(-(2 ** 66), 2 ** 66) | st.integers(-5, 5)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=3))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=2) | st.dictionaries(_KEYS, inner, max_size=3),
                       max_leaves=6)
_SECTIONS = st.dictionaries(_KEYS, _VALUES, max_size=4)


@st.composite
def _events(draw, prefix: str):
    events = []
    for number in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["track", "track", "page", "identify", "group", "alias"]))
        body = {"type": kind, "messageId": f"{prefix}{draw(st.integers(0, 8))}", "anonymousId": "anon"}
        if kind == "track":
            body["event"] = draw(st.sampled_from(["Order Completed", "Signed Up"]))
        if kind == "group":
            body["groupId"] = "g"
        if kind == "alias":
            body.update(userId="u", previousId="p")
        if kind == "identify" and draw(st.booleans()):
            body["userId"] = "u"
        section = "traits" if kind in ("identify", "group") else "properties"
        if kind != "alias":
            body[section] = draw(_SECTIONS)
        if draw(st.booleans()):
            body["context"] = draw(st.dictionaries(_KEYS, _VALUES, max_size=2))
        if draw(st.booleans()):
            body["integrations"] = draw(st.sampled_from([{}, {"All": False}, {"Mixpanel": {"x": 1}}]))
        events.append(event(body))
    return events


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=_events("a"), second=_events("b"))
def test_whatever_the_batches_hold_bulk_and_python_store_the_same(tmp_path_factory, first, second):
    """The second batch repeats the first's bodies under new ids (every field has its column, the
    bulk path's case), then adds its own (new fields, conflicts); the third repeats the second."""
    tmp_path = tmp_path_factory.mktemp("shred")
    again = [event({**e.original, "messageId": "r" + e.body["messageId"]}) for e in first]
    both_ways(tmp_path, [first, again + second, again + second], flatten_depth=3)


def write_reading_ahead(path, batches, **options) -> list:
    """write() as a batch run writes with the structures read ahead (sink.WriteEventsFn): each
    batch's structure read from more events than it keeps, the batch before it too (duplicates of
    stored events, tables it may change), which may only leave more of it to Python."""
    warehouse = DuckDBWarehouse(str(path), **options).open()
    results, previous = [], []
    try:
        for batch in batches:
            shreds = warehouse.shred_events(batch)
            parts = [warehouse.read_structures(warehouse.shred_events(previous)), warehouse.read_structures(shreds)]
            prepared = warehouse.prepare_events(batch, shreds, lambda: shred.merge_groups(parts))
            try:
                warehouse.commit_prepared(prepared)
            except Exception as exc:  # noqa: BLE001 - finish_events plans it again, as write_events does
                results.append(warehouse.finish_events(prepared, exc))
            else:
                results.append(warehouse.finish_events(prepared))
            previous = batch
        return results
    finally:
        warehouse.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=_events("a"), second=_events("b"))
def test_structures_read_ahead_over_more_events_than_the_batch_keeps_store_what_python_does(
        tmp_path_factory, first, second):
    tmp_path = tmp_path_factory.mktemp("ahead")
    again = [event({**e.original, "messageId": "r" + e.body["messageId"]}) for e in first]
    batches = [first, again + second, again + second, second]
    ahead = write_reading_ahead(tmp_path / "ahead.duckdb", batches, flatten_depth=3)
    planned = write(tmp_path / "planned.duckdb", batches, False, flatten_depth=3)
    assert [outcome(r) for r in ahead] == [outcome(r) for r in planned]
    assert contents(tmp_path / "ahead.duckdb") == contents(tmp_path / "planned.duckdb")


def test_floats_in_json_columns_keep_their_value(tmp_path):
    values = [1e20, 1.5e-7, 0.1, 1e16, -0.0, 5e-324, 1.7976931348623157e308]
    both_ways(tmp_path, [[track("a1", {"list": [1.0]})], [track("b1", {"list": values})]])
    with duckdb.connect(str(tmp_path / "bulk.duckdb"), read_only=True) as conn:
        stored = json.loads(conn.execute("SELECT list FROM order_completed WHERE message_id = 'b1'").fetchone()[0])
    assert stored == values and math.copysign(1, stored[4]) == -1


def test_the_config_turns_bulk_shredding_off_and_a_wrong_value_names_the_key(tmp_path):
    off = warehouse_settings(f"duckdb:///{tmp_path}/off.duckdb",
                             validate({"warehouse": {"duckdb_shred_in_bulk": False}}))
    on = warehouse_settings(f"duckdb:///{tmp_path}/on.duckdb", validate({}))
    shredded = []
    for settings in (off, on):
        with opened_backend(settings) as backend:
            backend.write_events([track("a1", {"total": 1})])
            shredded.append(backend.write_events([track("b1", {"total": 2})]).shredded)
    assert shredded == [0, 1]
    with pytest.raises(UsageError, match="warehouse.duckdb_shred_in_bulk"):
        validate({"warehouse": {"duckdb_shred_in_bulk": "yes"}})


def test_the_real_job_stores_the_same_either_way_and_counts_what_went_in_bulk(tmp_path, monkeypatch):
    """`python -m pipeline` over the demo's 2,000 lines in batches of 500: the first makes the
    tables in Python, the others go mostly in bulk on the committer thread; the tables, the column
    registry and the summary are those of the run with warehouse.duckdb_shred_in_bulk off."""
    from pipeline import main, summary as summaries
    counted = []
    real = summaries.counters_from_result
    monkeypatch.setattr(summaries, "counters_from_result", lambda result: counted.append(real(result)) or counted[-1])
    outcomes = []
    for flag in ("true", "false"):
        (tmp_path / f"{flag}.yaml").write_text(f"warehouse:\n  batch_size: 500\n  duckdb_shred_in_bulk: {flag}\n")
        outcomes.append(main.run(["--input_files", str(SAMPLE), "--config", str(tmp_path / f"{flag}.yaml"),
                                  "--warehouse", f"duckdb:///{tmp_path}/{flag}.duckdb"]))
    assert outcomes[0] == outcomes[1] and outcomes[0]["conservation"]["holds"]
    assert contents(tmp_path / "true.duckdb") == contents(tmp_path / "false.duckdb")
    bulk, planned = counted[0].get("stored_in_bulk", 0), counted[1].get("stored_in_bulk", 0)
    assert planned == 0 and outcomes[0]["stored"] / 2 < bulk < outcomes[0]["stored"]


def test_a_runs_first_batch_is_short_so_that_the_batches_after_it_go_in_bulk(tmp_path, monkeypatch):
    """Tables a run creates are planned in Python; with the backfill default (20,000) the demo's
    2,000 lines would be one batch, all Python. The first batch is cut at sink.FIRST_BATCH_SIZE."""
    from pipeline import main, summary as summaries
    counted = []
    real = summaries.counters_from_result
    monkeypatch.setattr(summaries, "counters_from_result", lambda result: counted.append(real(result)) or counted[-1])
    outcome_ = main.run(["--input_files", str(SAMPLE), "--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    assert outcome_["conservation"]["holds"] and outcome_["stored"] > 2 * sink.FIRST_BATCH_SIZE
    assert outcome_["stored"] / 2 < counted[0].get("stored_in_bulk", 0) < outcome_["stored"]
