"""No single event can fail a run: events that once stopped a whole job (exit 1, nothing of the
file stored) end as dead letters while the rest of the file is stored, run after run."""
import json

import duckdb
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from pipeline.main import run
from tests.conftest import rows
from transforms.decode import DEFAULT_MAX_DEPTH
from transforms.messages import Event, EventCoder

GOOD = [{"type": "track", "event": "Order Completed", "userId": f"u{i}", "messageId": f"good-{i}",
         "properties": {"total": i}} for i in range(3)]


def run_lines(tmp_path, lines: list) -> tuple:
    """The real job over `lines` (bytes); (summary, {message_id or line: error_type} of its dead
    letters, the stored message ids)."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    summary = run(["--input_files", str(path), "--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    assert summary["conservation"]["holds"], summary
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        letters = rows(conn, "SELECT error_type, payload, message_id FROM _dead_letters")
        stored = {r["message_id"] for r in rows(conn, "SELECT message_id FROM tracks")}
    return summary, letters, stored


@pytest.mark.slow
@pytest.mark.parametrize("field, value", [
    ("timestamp", "0001-01-01T00:00:00+14:00"), ("timestamp", "9999-12-31T23:59:59-14:00"),
    ("sentAt", "0001-01-01T00:00:00+14:00"), ("originalTimestamp", "9999-12-31T23:59:59-14:00"),
])
def test_a_time_outside_years_1_to_9999_in_utc_is_one_dead_letter_and_the_rest_is_stored(tmp_path, field, value):
    bad = {"type": "track", "event": "A", "userId": "u", "messageId": "bad", "timestamp": "2026-01-01T00:00:00Z",
           field: value}
    for attempt in range(2):  # a re-run goes the same way: the line no longer blocks its file
        summary, letters, stored = run_lines(tmp_path, [json.dumps(e).encode() for e in GOOD + [bad]])
        assert stored == {e["messageId"] for e in GOOD}
        assert [(r["error_type"], r["message_id"]) for r in letters] == [("invalid_timestamp", "bad")]
        assert summary["dead_lettered"] == {"invalid_timestamp": 1}
        assert summary["stored" if attempt == 0 else "dropped"] == (3 if attempt == 0 else {"duplicate": 3})


def nested(depth: int, shapes: list):
    """A value `depth` containers deep: shapes[i % len] says whether level i is an object or an array."""
    value = "leaf"
    for level in range(depth):
        value = {"k": value, "n": level} if shapes[level % len(shapes)] else [value, level]
    return value


def as_line(depth: int, shapes: list, where: str, message_id: str) -> bytes:
    """A track event with a value of `depth` containers in properties, context or a batch envelope."""
    event = {"type": "track", "event": "Deep", "userId": "u", "messageId": message_id}
    if where == "context":
        event["context"] = {"deep": nested(depth, shapes)}
    else:
        event["properties"] = {"deep": nested(depth, shapes)}
    if where == "batch":
        return json.dumps({"batch": [event]}).encode()
    return json.dumps(event).encode()


def event_depth(depth: int) -> int:
    """Levels of the event itself: the event object, properties (or context), then the value."""
    return depth + 2


CASES = st.lists(st.tuples(st.integers(0, 900), st.lists(st.booleans(), min_size=1, max_size=4),
                           st.sampled_from(["properties", "context", "batch"])), min_size=1, max_size=12)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(CASES)
@example([(DEFAULT_MAX_DEPTH - 2, [True], "properties"), (DEFAULT_MAX_DEPTH - 1, [True], "properties"),
          (DEFAULT_MAX_DEPTH - 2, [False, True], "batch"), (DEFAULT_MAX_DEPTH - 1, [False], "batch"),
          (485, [False], "context"), (487, [True, False], "properties"), (900, [False], "batch")])
def test_every_nesting_depth_ends_stored_or_dead_lettered_too_deep(tmp_path_factory, cases):
    """Whatever the depth and shape: stored when within decode.max_depth (and then it also
    survives the coder a Dataflow shuffle uses), else a too_deep dead letter holding the line."""
    tmp_path = tmp_path_factory.mktemp("deep")
    lines = [as_line(depth, shapes, where, f"deep-{i}") for i, (depth, shapes, where) in enumerate(cases)]
    summary, letters, stored = run_lines(tmp_path, [json.dumps(e).encode() for e in GOOD] + lines)
    assert summary["events"] == len(GOOD) + len(cases)
    too_deep = {r["payload"] for r in letters if r["error_type"] == "too_deep"}
    assert len(letters) == len(too_deep)  # nothing else failed
    for i, (depth, shapes, where) in enumerate(cases):
        fits = event_depth(depth) <= DEFAULT_MAX_DEPTH
        assert (f"deep-{i}" in stored, lines[i].decode() in too_deep) == (fits, not fits), (depth, where)
        if fits:
            body = json.loads(lines[i])
            body = body["batch"][0] if where == "batch" else body
            event = Event(body, body, None, {}, "file:x", "2026-01-01T00:00:00.000000Z")
            assert EventCoder().decode(EventCoder().encode(event)) == event
    assert {e["messageId"] for e in GOOD} <= stored
