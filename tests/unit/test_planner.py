import json

from hypothesis import given, strategies as st

from transforms.normalize import normalize_event
from transforms.warehouse import layout, planner

NOW = "2026-11-23T10:00:00.000000Z"


def rows_of(*bodies, table=None):
    rows = [r for b in bodies for r in layout.table_rows(normalize_event(b, NOW), 6)]
    return [r for r in rows if table is None or r.table == table]


def track(props, event="Order Completed", **extra):
    return {"type": "track", "event": event, "userId": "u", "properties": props, **extra}


def test_track_lands_in_tracks_and_its_event_table():
    rows = rows_of(track({"total": 9.5}, context={"page": {"url": "https://x"}}))
    assert [r.table for r in rows] == ["tracks", "order_completed"]
    schema = planner.TableSchema("order_completed")
    plan = planner.plan_rows(schema, rows[1:])
    assert plan.columns["total"] == [9.5]
    assert plan.columns["context_page_url"] == ["https://x"]
    assert plan.columns["event"] == ["order_completed"] and plan.columns["event_text"] == ["Order Completed"]
    tracks = planner.plan_rows(planner.TableSchema("tracks"), rows[:1])
    assert "total" not in tracks.columns  # Segment's tracks table has no properties


def test_each_type_has_its_tables():
    bodies = [{"type": "identify", "userId": "u", "traits": {"email": "e"}},
              {"type": "identify", "anonymousId": "a", "traits": {"email": "e"}},
              {"type": "page", "anonymousId": "a", "name": "Home", "properties": {"path": "/"}},
              {"type": "screen", "anonymousId": "a", "name": "Home"},
              {"type": "group", "userId": "u", "groupId": "g", "traits": {"name": "Org"}},
              {"type": "alias", "userId": "u", "previousId": "p"}]
    assert [r.table for r in rows_of(*bodies)] == ["identifies", "users", "identifies", "pages", "screens",
                                                   "groups", "aliases"]


def test_first_value_decides_and_conflicts_are_kept_losslessly():
    schema = planner.TableSchema("order_completed")
    plan = planner.plan_rows(schema, rows_of(track({"code": "A1"}), track({"code": 7}), track({"code": [1, 2]}),
                                             table="order_completed"))
    assert schema.columns["code"].type == planner.STRING
    assert plan.columns["code"] == ["A1", None, None]
    assert plan.type_conflicts == 2
    unmapped = [json.loads(v) if v else None for v in plan.columns[planner.UNMAPPED_COLUMN]]
    assert unmapped == [None, {"/properties/code": 7}, {"/properties/code": [1, 2]}]


def test_integer_column_widens_to_float_when_lossless():
    schema = planner.TableSchema("video_played")
    rows = rows_of(track({"position": 3}, "Video Played"), track({"position": 4.0}, "Video Played"),
                   track({"position": 4.5}, "Video Played"), table="video_played")
    first = planner.plan_rows(schema, rows[:2])
    assert schema.columns["position"].type == planner.INT64 and first.columns["position"] == [3, 4]
    second = planner.plan_rows(schema, rows[2:])
    assert second.widened == ["position"] and schema.columns["position"].type == planner.FLOAT64
    assert second.columns["position"] == [4.5]


def test_refused_widening_keeps_the_value_in_unmapped():
    schema = planner.TableSchema("video_played")
    planner.plan_rows(schema, rows_of(track({"position": 3}, "Video Played"), table="video_played"))
    schema.no_widen.add("position")
    plan = planner.plan_rows(schema, rows_of(track({"position": 4.5}, "Video Played"), table="video_played"))
    assert plan.widened == [] and plan.type_conflicts == 1
    assert schema.columns["position"].type == planner.INT64
    assert plan.columns.get("position", [None]) == [None]  # 4.5 is not cut to an integer
    assert [json.loads(v) for v in plan.columns[planner.UNMAPPED_COLUMN]] == [{"/properties/position": 4.5}]


def test_colliding_names_get_their_own_columns():
    schema = planner.TableSchema("signed_up")
    plan = planner.plan_rows(schema, rows_of(track({"firstName": "A", "first_name": "B", "user_id": "x"},
                                                   "Signed Up"), table="signed_up"))
    by_source = {c.source: c.name for c in schema.columns.values()}
    assert by_source["/properties/firstName"] == "first_name"
    # The second claimant is suffixed with the first 6 hex digits of the SHA-1 of its source path,
    # computed once outside the project's code: printf '%s' /properties/first_name | sha1sum
    # Fixed: a change would name the same property differently in tables created after it.
    assert by_source["/properties/first_name"] == "first_name_66b4fc"
    assert by_source["/properties/user_id"] == "user_id_0cd2fc" and by_source["/userId"] == "user_id"
    # each value in its own property's column, none in the other's or in _unmapped
    assert plan.columns[by_source["/properties/firstName"]] == ["A"]
    assert plan.columns[by_source["/properties/first_name"]] == ["B"]
    assert plan.columns[by_source["/properties/user_id"]] == ["x"] and plan.columns["user_id"] == ["u"]
    assert plan.columns.get(planner.UNMAPPED_COLUMN, [None]) == [None]


def test_column_cap_sends_new_properties_to_unmapped():
    schema = planner.TableSchema("order_completed")
    cap = len(schema.columns) + 2
    plan = planner.plan_rows(schema, rows_of(track({"a": 1, "b": 2, "c": 3, "d": 4}), table="order_completed"),
                             max_columns=cap)
    assert len(schema.columns) == cap and plan.capped == 2
    assert [c.source for c in plan.new_columns] == ["/properties/a", "/properties/b"]
    assert plan.columns["a"] == [1] and plan.columns["b"] == [2]
    # the two properties past the cap: in _unmapped, with their values
    assert json.loads(plan.columns[planner.UNMAPPED_COLUMN][0]) == {"/properties/c": 3, "/properties/d": 4}


def test_deep_objects_and_arrays_are_json():
    deep = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}
    schema = planner.TableSchema("order_completed")
    plan = planner.plan_rows(schema, rows_of(track({"deep": deep, "items": [{"x": 1}], "empty": {}}),
                                             table="order_completed"))
    types = {c.source: c.type for c in schema.columns.values()}
    assert types["/properties/items"] == planner.JSON and types["/properties/empty"] == planner.JSON
    json_columns = [c for c in schema.columns.values() if c.source.startswith("/properties/deep")]
    assert len(json_columns) == 1 and json_columns[0].type == planner.JSON
    # flattened to the depth limit (6, counting `properties`), the rest one JSON value
    assert json_columns[0].source == "/properties/deep/a/b/c/d"
    by_source = {c.source: c.name for c in schema.columns.values()}
    assert json.loads(plan.columns[json_columns[0].name][0]) == {"e": {"f": 1}}
    assert json.loads(plan.columns[by_source["/properties/items"]][0]) == [{"x": 1}]
    assert json.loads(plan.columns[by_source["/properties/empty"]][0]) == {}


def test_users_rows_collapse_newest_wins():
    older = {"type": "identify", "userId": "u", "timestamp": "2026-01-01T00:00:00Z", "traits": {"plan": "free", "a": 1}}
    newer = {"type": "identify", "userId": "u", "timestamp": "2026-02-01T00:00:00Z", "traits": {"plan": "pro"}}
    for order in ((newer, older), (older, newer)):  # by timestamp, not by arrival
        [row] = planner.collapse_by_key(rows_of(*order, table="users"))
        assert row.parts[0]["/traits/plan"] == "pro" and row.parts[0]["/traits/a"] == 1


scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=5)
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                      max_leaves=8)


@given(st.lists(st.dictionaries(st.text(max_size=6), values, max_size=5), min_size=1, max_size=8))
def test_no_value_is_lost(property_sets):
    """Every non-null leaf lands in a column or in _unmapped, whatever the types."""
    schema = planner.TableSchema("order_completed")
    rows = rows_of(*[track(p) for p in property_sets], table="order_completed")
    plan = planner.plan_rows(schema, rows, max_columns=len(schema.columns) + 3)
    assert all(len(v) == len(rows) for v in plan.columns.values())
    by_name = {c.name: c.source for c in schema.columns.values()}
    for i, row in enumerate(rows):
        expected = {k for part in row.parts for k, v in part.items() if v is not None}
        unmapped = plan.columns.get(planner.UNMAPPED_COLUMN, [None] * len(rows))[i]
        found = {by_name[name] for name, vals in plan.columns.items()
                 if vals[i] is not None and name != planner.UNMAPPED_COLUMN}
        found |= set(json.loads(unmapped)) if unmapped else set()
        assert expected == found
