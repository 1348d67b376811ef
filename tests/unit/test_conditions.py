"""Declarative conditions (transforms/rules/conditions.py)."""
import pytest

from transforms.rules.conditions import ConditionError, compile_condition, json_equal

EVENT = {"type": "track", "event": "Order Completed", "userId": "019mr8mf4r",
         "properties": {"total": 30, "currency": "USD", "tags": ["sale", 3, {"k": 1}],
                        "email": "pgibbons@example.com", "coupon": None, "first.name": "Peter"}}


def holds(path, op, value=..., body=EVENT):
    spec = {"path": path, "op": op} if value is ... else {"path": path, "op": op, "value": value}
    return compile_condition(spec, "when")(body)


@pytest.mark.parametrize("path, op, value, expected", [
    ("properties.coupon", "exists", ..., True), ("properties.coupon", "missing", ..., False),  # null exists
    ("properties.nope", "exists", ..., False), ("properties.nope", "missing", ..., True),
    ("event", "eq", "Order Completed", True), ("properties.total", "eq", 30.0, True),
    ("properties.total", "ne", 31, True), ("properties.total", "ne", 30, False),
    ("properties.currency", "in", ["EUR", "USD"], True), ("properties.currency", "not_in", ["EUR", "USD"], False),
    ("properties.total", "lt", 31, True), ("properties.total", "lte", 30, True),
    ("properties.total", "gt", 29.5, True), ("properties.total", "gte", 31, False),
    ("properties.currency", "gt", "EUR", True),  # strings compare with strings
    ("properties.currency", "lt", 100, False),   # a string and a number never compare
    ("properties.email", "contains", "@example", True), ("properties.tags", "contains", "sale", True),
    ("properties.tags", "contains", 3.0, True), ("properties.tags", "contains", {"k": 1}, True),
    ("properties.tags", "contains", "sal", False),  # an element, not a substring of one
    ("properties.email", "starts_with", "pgibbons@", True), ("properties.email", "ends_with", ".com", True),
    ("properties.email", "matches", r"@example\.(com|org)$", True),
    ("properties.email", "matches", r"^example", False),  # searched, anchored by ^
    ("event", "glob", "Order *", True), ("event", "glob", "order *", False),  # case-sensitive
    ("event", "glob", "Order", False),  # matches the whole name
    ("properties.total", "starts_with", "3", False),  # string operators need a string
    ("/properties/first.name", "eq", "Peter", True),
])
def test_operators(path, op, value, expected):
    assert holds(path, op, value) is expected


@pytest.mark.parametrize("op, value, expected", [
    ("eq", None, False), ("ne", None, True), ("in", [None], False), ("not_in", [None], True),
    ("lt", 1, False), ("lte", "a", False), ("gt", 1, False), ("gte", "a", False),
    ("contains", "a", False), ("starts_with", "", False), ("matches", "", False), ("glob", "*", False),
])
def test_a_missing_path_equals_nothing(op, value, expected):
    assert holds("properties.absent.deeper", op, value) is expected


def test_json_equality():
    assert json_equal(1, 1.0) and json_equal({"a": [1, None]}, {"a": [1.0, None]})
    assert not json_equal(True, 1) and not json_equal(0, False) and not json_equal([True], [1])
    assert not json_equal({"a": 1}, {"a": 1, "b": 2}) and not json_equal("1", 1)
    assert holds("flag", "eq", 1, {"flag": True}) is False
    assert holds("flag", "in", [1, 0], {"flag": False}) is False
    assert holds("n", "eq", 1.0, {"n": 1}) is True


def test_nested_all_any_not():
    spec = {"all": [
        {"path": "type", "op": "eq", "value": "track"},
        {"any": [{"path": "properties.total", "op": "gt", "value": 100},
                 {"not": {"path": "properties.currency", "op": "eq", "value": "USD"}}]},
    ]}
    cond = compile_condition(spec, "when")
    assert cond(EVENT) is False
    assert cond({**EVENT, "properties": {"total": 101, "currency": "USD"}}) is True
    assert cond({**EVENT, "properties": {"total": 1, "currency": "EUR"}}) is True
    assert cond({**EVENT, "type": "page", "properties": {"total": 101}}) is False


def test_segment_examples(segment_examples):
    cond = compile_condition({"all": [{"path": "type", "op": "eq", "value": "track"},
                                      {"path": "event", "op": "glob", "value": "Account *"}]}, "when")
    assert sorted(e["event"] for e in segment_examples if cond(e)) == [
        "Account Added User", "Account Created", "Account Deleted", "Account Removed User"]


@pytest.mark.parametrize("spec, where", [
    ({"path": "a", "op": "bogus", "value": 1}, "transforms[0].when.op"),
    ({"path": "a", "op": "bogus"}, "transforms[0].when.op"),
    ({"path": "a", "op": "in", "value": "USD"}, "transforms[0].when.value"),
    ({"path": "a", "op": "not_in", "value": {"a": 1}}, "transforms[0].when.value"),
    ({"path": "a", "op": "lt", "value": True}, "transforms[0].when.value"),
    ({"path": "a", "op": "glob", "value": 5}, "transforms[0].when.value"),
    ({"path": "a", "op": "exists", "value": True}, "transforms[0].when.value"),
    ({"path": "a", "op": "eq"}, "transforms[0].when"),
    ({"path": "a"}, "transforms[0].when"),
    ({"path": "a..b", "op": "exists"}, "transforms[0].when.path"),
    ({"path": "a", "op": "exists", "vaule": 1}, "transforms[0].when.vaule"),
    ({"all": [{"path": "a", "op": "exists"}, {"path": "a", "op": "matches", "value": "(unclosed"}]},
     "transforms[0].when.all[1].value"),
    ({"all": []}, "transforms[0].when.all"),
    ({"any": {"path": "a", "op": "exists"}}, "transforms[0].when.any"),
    ({"all": [{"path": "a", "op": "exists"}], "path": "b"}, "transforms[0].when"),
    ({"all": [{"path": "a", "op": "exists"}], "any": [{"path": "a", "op": "exists"}]}, "transforms[0].when"),
    ({"not": {"any": [{"path": "a", "op": "exists"}, "a exists"]}}, "transforms[0].when.not.any[1]"),
    ("properties.a == 1", "transforms[0].when"),
    ([{"path": "a", "op": "exists"}], "transforms[0].when"),
])
def test_config_errors_name_their_key_path(spec, where):
    with pytest.raises(ConditionError) as caught:
        compile_condition(spec, "transforms[0].when")
    assert caught.value.where == where
    assert str(caught.value).startswith(where + ": ")
