"""Paths into an event and the copy-on-write EventDoc (transforms/rules/paths.py)."""
import copy

import pytest
from hypothesis import given, settings, strategies as st

from transforms.rules.paths import MISSING, EventDoc, PathError, get, identical, parse


@pytest.mark.parametrize("text, parts", [
    ("properties.email", ("properties", "email")),
    ("userId", ("userId",)),
    ("/properties/first.name", ("properties", "first.name")),
    ("/a~1b/c~0d", ("a/b", "c~d")),
    ("/x~01", ("x~1",)),  # ~1 is decoded before ~0, as RFC 6901 says
])
def test_parse_dotted_and_pointer(text, parts):
    assert parse(text) == parts


@pytest.mark.parametrize("text", ["", "a..b", ".a", "a.", "/", "/a//b", "/a/", None, 5, ["a"]])
def test_parse_rejects_empty_segments_and_non_strings(text):
    with pytest.raises(PathError):
        parse(text)


def test_get_follows_objects_only():
    body = {"a": {"b": None, "c": [1, {"d": 2}]}, "s": "text"}
    assert get(body, ("a", "b")) is None and get(body, ("a", "x")) is MISSING and get(body, ("s", "x")) is MISSING
    assert get(body, ("a", "c", "d"), "dflt") == "dflt"  # arrays are never indexed


def test_set_delete_get_and_intermediate_objects():
    body = {"properties": {"email": "a@example.com"}, "context": {"ip": "8.8.8.8"}}
    snapshot = copy.deepcopy(body)
    doc = EventDoc(body)
    assert doc.set(("properties", "plan"), "pro") is True
    assert doc.set(("traits", "address", "city"), "Paris") is True
    assert doc.delete(("properties", "email")) is True
    assert doc.delete(("properties", "email")) is False
    assert doc.delete(("nothing", "here")) is False
    assert doc.get(("traits", "address", "city")) == "Paris"
    assert doc.root == {"properties": {"plan": "pro"}, "context": {"ip": "8.8.8.8"},
                        "traits": {"address": {"city": "Paris"}}}
    assert body == snapshot
    assert doc.root["context"] is body["context"]  # untouched objects stay shared
    copied = doc.root["properties"]
    doc.set(("properties", "x"), 1)
    assert doc.root["properties"] is copied is not body["properties"]  # copied once per doc


def test_delete_removes_the_objects_it_leaves_empty():
    body = {"properties": {"a": {"b": {"c": 1}}, "keep": {}}, "context": {"x": {"y": 1}, "z": 2}}
    doc = EventDoc(body)
    assert doc.delete(("properties", "a", "b", "c")) is True
    assert doc.root["properties"] == {"keep": {}}  # an object that was empty before stays
    assert doc.delete(("context", "x", "y")) is True
    assert doc.delete(("properties", "keep")) is True
    assert doc.root == {"context": {"z": 2}}
    assert body == {"properties": {"a": {"b": {"c": 1}}, "keep": {}}, "context": {"x": {"y": 1}, "z": 2}}


@pytest.mark.parametrize("blocker", ["a string", [1, 2], 7, True])
def test_refuses_to_write_through_a_non_object(blocker):
    body = {"properties": blocker}
    doc = EventDoc(body)
    assert doc.set(("properties", "email"), "x") is False
    assert doc.root["properties"] == blocker
    assert doc.delete(("properties", "email")) is False
    assert body == {"properties": blocker}


def test_a_null_in_the_way_is_replaced_by_an_object():
    doc = EventDoc({"context": None})
    assert doc.set(("context", "page", "url"), "https://example.com") is True
    assert doc.root == {"context": {"page": {"url": "https://example.com"}}}


@pytest.mark.parametrize("a, b, same", [
    ("pro", "pro", True), (1, 1, True), (None, None, True), ({"a": [1, {"b": None}]}, {"a": [1, {"b": None}]}, True),
    (1, 1.0, False), (True, 1, False), (0, False, False), ({"a": 1}, {"a": 1.0}, False), ([True], [1], False),
    ({"a": 1}, {"a": 1, "b": 2}, False), ([1, 2], [2, 1], False), (MISSING, None, False), ("1", 1, False),
])
def test_identical_is_equality_of_values_and_types(a, b, same):
    assert identical(a, b) is same and identical(b, a) is same


# --- property: EventDoc behaves as in-place edits of a deep copy, and never writes its input

KEYS = st.sampled_from(["a", "b", "c"])
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["s", "t"]),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=12)
PATH = st.lists(KEYS, min_size=1, max_size=3).map(tuple)
OPS = st.lists(st.one_of(
    st.tuples(st.just("set"), PATH, JSON),
    st.tuples(st.just("delete"), PATH, st.none()),
    st.tuples(st.just("move"), PATH, PATH),  # what rename does: set the value elsewhere, delete it here
), max_size=12)


def ref_get(body, parts):
    node = body
    for part in parts:
        if type(node) is not dict or part not in node:
            return MISSING
        node = node[part]
    return node


def ref_set(body, parts, value):
    node = body
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        elif type(node[part]) is not dict:
            return False
        node = node[part]
    node[parts[-1]] = value
    return True


def ref_delete(body, parts):
    parent = ref_get(body, parts[:-1])
    if type(parent) is not dict or parts[-1] not in parent:
        return False
    del parent[parts[-1]]
    for depth in range(len(parts) - 1, 0, -1):  # objects the removal leaves empty go too
        if ref_get(body, parts[:depth]):
            break
        del ref_get(body, parts[:depth - 1])[parts[depth - 1]]
    return True


@settings(max_examples=400, deadline=None)
@given(body=st.dictionaries(KEYS, JSON, max_size=3), ops=OPS)
def test_eventdoc_matches_reference_and_never_writes_its_input(body, ops):
    snapshot, expected = copy.deepcopy(body), copy.deepcopy(body)
    doc = EventDoc(body)
    for op, path, arg in ops:
        if op == "set":
            assert doc.set(path, copy.deepcopy(arg)) == ref_set(expected, path, copy.deepcopy(arg))
        elif op == "delete":
            assert doc.delete(path) == ref_delete(expected, path)
        else:
            value, ref_value = doc.get(path), ref_get(expected, path)
            assert value == ref_value
            if value is not MISSING:
                moved = doc.set(arg, value)
                assert moved == ref_set(expected, arg, ref_value)
                if moved:
                    assert doc.delete(path) == ref_delete(expected, path)
        assert doc.root == expected
    assert body == snapshot
