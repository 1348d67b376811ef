import re

import pytest
from hypothesis import given, strategies as st

from transforms.warehouse import naming
from transforms.warehouse.planner import STRING, TableSchema

VALID = re.compile(r"^[a-z_][a-z0-9_]*$")


# Every case of go-snakecase's own test, copied as fixed vectors: repository
# segmentio/go-snakecase, file snake_test.go, commit 5e4a23e7a7bf2d4ede976046611e07ffba02224c
# (MIT). That commit's snake.go is the algorithm Segment's warehouse loaders use.
GO_SNAKECASE_CASES = [
    ("@49L0S145_¬fwHƒ0TSLNVp", "49l0s145_fw_h_0tslnvp"),
    ("lk0B@bFmjrLQ_Z6YL", "lk0_b_b_fmjr_lq_z6yl"),
    ("samPLE text", "sam_ple_text"),
    ("sample text", "sample_text"),
    ("sample-text", "sample_text"),
    ("sample_text", "sample_text"),
    ("sample___text", "sample_text"),
    ("sampleText", "sample_text"),
    ("inviteYourCustomersAddInvites", "invite_your_customers_add_invites"),
    ("sample 2 Text", "sample_2_text"),
    ("   sample   2    Text   ", "sample_2_text"),
    ("   $#$sample   2    Text   ", "sample_2_text"),
    ("SAMPLE 2 TEXT", "sample_2_text"),
    ("___$$Base64Encode", "base64_encode"),
    ("FOO:BAR$BAZ", "foo_bar_baz"),
    ("FOO#BAR#BAZ", "foo_bar_baz"),
    ("something.com", "something_com"),
    ("$something%", "something"),
    ("something.com", "something_com"),
    ("•¶§ƒ˚foo˙∆˚¬", "foo"),
    ("CStringRef", "cstring_ref"),
    ("5test", "5test"),
    ("test5", "test5"),
    ("THE5r", "the5r"),
    ("5TEst", "5test"),
    ("_5TEst", "5test"),
    ("@%#&5TEst", "5test"),
    ("edf_6N", "edf_6n"),
    ("f_pX9", "f_p_x9"),
    ("p_z9Rg", "p_z9_rg"),
    ("2FA Enabled", "2fa_enabled"),
    ("Enabled 2FA", "enabled_2fa"),
]
# The inputs of the same commit's benchmarks_test.go; their outputs follow from snake.go.
GO_SNAKECASE_BENCHMARK_INPUTS = [
    ("invite_your_customers_add_invites", "invite_your_customers_add_invites"),
    ("sample_text", "sample_text"),
    ("ß_ƒ_foo", "foo"),
    ("inviteYourCustomersAddInvites", "invite_your_customers_add_invites"),
    ("FOO:BAR$BAZ__Sample    Text___", "foo_bar_baz_sample_text"),
    ("sample text", "sample_text"),
    ("ẞ•¶§ƒ˚foo˙∆˚¬", "foo"),
    ("some sample text here_noething:too$amazing", "some_sample_text_here_noething_too_amazing"),
]


@pytest.mark.parametrize("key, expected", GO_SNAKECASE_CASES + GO_SNAKECASE_BENCHMARK_INPUTS)
def test_snake_case_matches_go_snakecase(key, expected):
    assert naming.snake_case(key) == expected


@pytest.mark.parametrize("key, expected", [
    # Non-ASCII letters separate words, as in go-snakecase (no accent folding).
    ("prénom", "pr_nom"),
    ("Café Visited", "caf_visited"),
    ("東京", ""),
    # An upper-case run stays one word with the lower-case letters after it.
    ("HTTPStatusCode", "httpstatus_code"),
    ("ABTest", "abtest"),
    ("userID", "user_id"),
    ("sha256Hash", "sha256_hash"),
    ("Base64Encode", "base64_encode"),
    ("", ""),
    ("_", ""),
    ("a_", "a"),
])
def test_snake_case_consequences_of_the_reference(key, expected):
    assert naming.snake_case(key) == expected


def test_segment_style_names():
    assert naming.column_name(("context", "page", "url")) == "context_page_url"
    assert naming.column_name(("adTrackingEnabled",)) == "ad_tracking_enabled"
    assert naming.column_name(("Feed Type",)) == "feed_type"
    assert naming.column_name(("$something%",)) == "something"
    assert naming.column_name(("context", "$browser", "Name_")) == "context_browser_name"
    # A key with nothing to keep adds nothing to the path's name.
    assert naming.column_name(("context", "東京", "city")) == "context_city"


def test_sluice_rules_beyond_the_reference():
    # A leading digit or a reserved word would need quoting: `_` prefix.
    assert naming.column_name(("2FA Enabled",)) == "_2fa_enabled"
    assert naming.column_name(("2fa",)) == "_2fa"
    assert naming.column_name(("order",)) == "_order"
    assert naming.column_name(("Order",)) == "_order"
    assert naming.column_name(("order", "id")) == "order_id"
    # No ASCII letter or digit: a fallback name from a hash of the whole path.
    assert naming.column_name(("東京",)) == "col_" + naming.short_hash("東京")
    assert naming.column_name(("$", "%")) == "col_" + naming.short_hash("$\x00%")
    assert naming.column_name(("東京",)) != naming.column_name(("大阪",))
    # Too long: cut, and suffixed with a hash of the whole path.
    long_key = "word " * 40
    name = naming.column_name((long_key,), 32)
    assert len(name) <= 32 and name.endswith("_" + naming.short_hash(long_key))
    assert name != naming.column_name((long_key + "x",), 32)


def test_joining_keys_is_snake_casing_the_joined_path():
    # Segment flattens `context.field.nestedA.nestedB` to one name; snake-casing each key and
    # joining gives what snake-casing the `_`-joined path gives.
    assert naming.column_name(("context", "field", "nestedA", "nestedB")) == "context_field_nested_a_nested_b"
    for path in [("a", "5TEst"), ("ab5", "X"), ("$x", "y%"), ("edf", "6N"), ("lk0", "B"), ("2", "FA"),
                 ("x", "1aB"), ("context", "東京")]:
        assert naming.column_name(path) == naming.column_name(("_".join(path),)), path


tricky_keys = st.text(alphabet="aBz9_0 $.Zé東", max_size=8)


@given(st.lists(tricky_keys, min_size=1, max_size=4))
def test_snake_cased_keys_join_like_the_joined_path(keys):
    assert "_".join(filter(None, map(naming.snake_case, keys))) == naming.snake_case("_".join(keys))


def test_table_names():
    assert naming.table_name("Order Completed") == "order_completed"
    assert naming.table_name("Users") == "_users"
    assert naming.table_name("tracks") == "_tracks"
    assert naming.table_name("$tracks!") == "_tracks"
    assert naming.table_name("3D Viewed") == "_3d_viewed"
    assert naming.table_name("Café Visited") == "caf_visited"
    assert naming.table_name("!!!") == "event_" + naming.short_hash("!!!")
    assert naming.table_name("Select") == "_select"


keys = st.text(min_size=1, max_size=80)


@given(st.lists(keys, min_size=1, max_size=4).map(tuple), st.integers(min_value=16, max_value=300))
def test_column_names_are_valid_stable_and_bounded(segments, limit):
    name = naming.column_name(segments, limit)
    assert VALID.match(name) and len(name) <= limit
    assert name not in naming.RESERVED_WORDS
    assert naming.column_name(segments, limit) == name


@given(keys)
def test_snake_case_output_is_clean_and_stable(key):
    name = naming.snake_case(key)
    assert re.fullmatch(r"([a-z0-9]+(_[a-z0-9]+)*)?", name)
    assert naming.snake_case(name) == name


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
