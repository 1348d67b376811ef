import re

from hypothesis import given, strategies as st

from transforms.warehouse import naming
from transforms.warehouse.planner import STRING, TableSchema

VALID = re.compile(r"^[a-z_][a-z0-9_]*$")


def test_segment_style_names():
    assert naming.column_name(("context", "page", "url")) == "context_page_url"
    assert naming.column_name(("adTrackingEnabled",)) == "ad_tracking_enabled"
    assert naming.column_name(("HTTPStatusCode",)) == "http_status_code"
    assert naming.column_name(("Feed Type",)) == "feed_type"
    assert naming.column_name(("prénom",)) == "prenom"
    assert naming.column_name(("2fa",)) == "_2fa"
    assert naming.column_name(("order",)) == "_order"
    assert naming.column_name(("東京",)).startswith("col_")


def test_table_names():
    assert naming.table_name("Order Completed") == "order_completed"
    assert naming.table_name("Users") == "_users"
    assert naming.table_name("tracks") == "_tracks"
    assert naming.table_name("3D Viewed") == "_3d_viewed"
    assert naming.table_name("!!!").startswith("event_")


keys = st.text(min_size=1, max_size=80)


@given(st.lists(keys, min_size=1, max_size=4).map(tuple), st.integers(min_value=16, max_value=300))
def test_column_names_are_valid_stable_and_bounded(segments, limit):
    name = naming.column_name(segments, limit)
    assert VALID.match(name) and len(name) <= limit
    assert name not in naming.RESERVED_WORDS
    assert naming.column_name(segments, limit) == name


@given(keys)
def test_table_names_are_valid_and_never_fixed_tables(event):
    name = naming.table_name(event)
    assert VALID.match(name) and len(name) <= naming.MAX_NAME_LENGTH
    assert name not in naming.FIXED_TABLES


@given(st.lists(st.lists(keys, min_size=1, max_size=3).map(tuple), min_size=1, max_size=30, unique=True),
       st.integers(min_value=16, max_value=64))
def test_distinct_sources_never_share_a_column(paths, limit):
    schema = TableSchema("t", columns=[], max_name_length=limit)
    for path in paths:
        source = "/properties/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in path)
        if source not in schema.by_source:
            schema.add(schema.propose(source, STRING, "/properties"))
    names = [c.name for c in schema.columns.values()]
    assert len(names) == len(set(names)) == len(schema.by_source)
    assert all(VALID.match(n) and len(n) <= limit for n in names)
