"""Whole jobs forwarding to a real HTTP server on 127.0.0.1: retries through 503 and 429 with
Retry-After, batches within their limits, signed requests, exactly-once-or-dead-lettered."""
import json
from collections import Counter

import duckdb
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings, strategies as st

from pipeline.main import run
from tests.conftest import rows
from tests.destinations.receiver import RESET, Receiver
from transforms.deadletter import decode_payload
from transforms.destinations import signing

SECRET = "whsec-test-0123456789"
TOKEN = "tok-abcdef-987654"


def write_config(tmp_path, url, **overrides) -> str:
    destination = {"name": "crm", "type": "webhook", "url": url, "allow_private_network": True,
                   "headers": {"Authorization": {"env": "CRM_TOKEN", "prefix": "Bearer "}, "X-Team": "growth"},
                   "signing_secret": {"env": "CRM_SIGNING_SECRET"},
                   "types": ["track", "identify", "page"],
                   "mapping": {"id": {"@path": "$.messageId"}, "type": {"@path": "$.type"},
                               "event": {"@path": "$.event"}, "user": {"@path": "$.userId"}, "source": "sluice",
                               "note": {"@path": "$.properties.note"}},
                   "batch": {"max_events": 3, "max_bytes": 1024, "max_wait_seconds": 1},
                   "retry": {"max_attempts": 6, "initial_backoff_seconds": 0.05, "max_backoff_seconds": 0.2}}
    destination.update(overrides)
    destination = {key: value for key, value in destination.items() if value is not None}
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump({"destinations": [destination]}))
    return str(path)


@pytest.fixture
def secrets_env(monkeypatch):
    monkeypatch.setenv("CRM_TOKEN", TOKEN)
    monkeypatch.setenv("CRM_SIGNING_SECRET", SECRET)


def write_events(tmp_path, destination: str = "crm") -> tuple:
    """(input path, message ids the destination must get): tracks, identifies and pages go;
    groups are not its type; one event opts out through `integrations`; one is invalid."""
    events = ([{"type": "track", "event": f"Order {i}", "userId": f"u{i}", "messageId": f"t{i}",
                "properties": {"total": i, "note": "x" * (i * 15)}} for i in range(30)]
              + [{"type": "identify", "userId": f"u{i}", "messageId": f"i{i}", "traits": {"plan": "pro"}}
                 for i in range(10)]
              + [{"type": "page", "userId": "u1", "name": "Home", "messageId": f"p{i}"} for i in range(5)]
              + [{"type": "group", "userId": "u1", "groupId": "g", "messageId": f"g{i}"} for i in range(5)]
              + [{"type": "track", "event": "Private", "userId": "u1", "messageId": "opt-out",
                  "integrations": {destination: False}},
                 {"type": "track", "messageId": "no-identity", "event": "X"}])
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    return str(path), [e["messageId"] for e in events[:45]]


def test_every_event_is_delivered_once_through_503s_and_a_429(tmp_path, secrets_env):
    script = [(503, {}), (503, {}), (429, {"Retry-After": "1"})]
    path, expected = write_events(tmp_path)
    with Receiver(script) as receiver:
        summary = run(["--input_files", path, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb",
                       "--config", write_config(tmp_path, receiver.url)])
    delivered = Counter(p["id"] for p in receiver.delivered_payloads())
    assert delivered == Counter(expected)  # each exactly once
    crm = summary["destinations"]["crm"]
    assert (crm["delivered"], crm["failed"], crm["retried"]) == (45, 0, 3)
    assert (crm["dropped_filter"], crm["dropped_integrations"]) == (5, 1) and summary["conservation"]["holds"]
    for request in receiver.requests:
        batch = json.loads(request.body)["batch"]
        assert 1 <= len(batch) <= 3 and len(request.body) <= 1024
        assert signing.verify(SECRET, request.headers["X-Sluice-Signature"], request.body)
        assert request.headers["Authorization"] == f"Bearer {TOKEN}" and request.headers["X-Team"] == "growth"
        assert all(p["source"] == "sluice" and ("event" in p) == (p["type"] == "track") for p in batch)
    # payloads of up to ~500 bytes: three would pass 1 KB, so the byte limit cut batches
    assert max(len(r.body) for r in receiver.requests) > 700 and any(
        len(json.loads(r.body)["batch"]) < 3 and len(r.body) + 500 > 1024 for r in receiver.requests)
    # The 429's Retry-After was honoured: its batch came back no sooner than a second later.
    throttled = next(r for r in receiver.requests if r.status == 429)
    retry = next(r for r in receiver.requests if r.at > throttled.at and
                 r.headers["Idempotency-Key"] == throttled.headers["Idempotency-Key"])
    assert retry.at - throttled.at >= 0.95


def test_a_permanent_refusal_dead_letters_each_event_once_with_the_status(tmp_path, secrets_env):
    path, expected = write_events(tmp_path)
    with Receiver(default_status=400) as receiver:
        summary = run(["--input_files", path, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb",
                       "--config", write_config(tmp_path, receiver.url)])
    crm = summary["destinations"]["crm"]
    assert (crm["delivered"], crm["failed"]) == (0, 45)
    assert crm["requests"] == len(receiver.requests) and crm["retried"] == 0  # 400 is not retried
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        letters = rows(conn, "SELECT * FROM _dead_letters WHERE error_stage = 'forwarding'")
    assert sorted(letter["message_id"] for letter in letters) == sorted(expected)
    assert {letter["error_type"] for letter in letters} == {"delivery_failed"}
    assert {letter["destination"] for letter in letters} == {"crm"}
    assert all(json.loads(letter["error_details"])["status"] == 400 for letter in letters)
    for letter in letters:  # replayable: the original event, not the mapped payload
        original = json.loads(decode_payload(letter["payload"], letter["payload_encoding"]))
        assert original["messageId"] == letter["message_id"] and "type" in original
        assert TOKEN not in json.dumps(letter, default=str) and SECRET not in json.dumps(letter, default=str)
    # the warehouse's own conservation is untouched by forwarding's dead letters
    assert summary["stored"] + sum(summary["dead_lettered"].values()) + sum(summary["dropped"].values()) \
        == summary["events"]


def test_transient_failures_past_max_attempts_are_dead_letters(tmp_path, secrets_env):
    path, _ = write_events(tmp_path)
    with Receiver(default_status=503) as receiver:
        summary = run(["--input_files", path, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb",
                       "--config", write_config(tmp_path, receiver.url, retry={
                           "max_attempts": 3, "initial_backoff_seconds": 0.01, "max_backoff_seconds": 0.02})])
    crm = summary["destinations"]["crm"]
    batches = {r.headers["Idempotency-Key"] for r in receiver.requests}
    assert crm["requests"] == len(receiver.requests) == 3 * len(batches)
    assert (crm["failed"], crm["delivered"]) == (45, 0) and summary["conservation"]["holds"]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(script=[RESET, 503, 400, RESET, 429, 200, 404], max_events=2)  # every kind of answer, for certain
@given(script=st.lists(st.sampled_from([200, 200, 503, 500, 429, 408, 400, 404, RESET]), max_size=12),
       max_events=st.integers(1, 7))
def test_whatever_the_receiver_answers_each_event_is_delivered_once_or_dead_lettered_once(
        tmp_path_factory, secrets_env, script, max_events):
    """Random answers (resets included) and batch sizes: every event the destination takes ends
    delivered exactly once (by messageId, counting 2xx answers only) or dead-lettered once,
    never both, never neither."""
    tmp_path = tmp_path_factory.mktemp("random")
    path, expected = write_events(tmp_path)
    with Receiver([(status, {}) for status in script]) as receiver:
        summary = run(["--input_files", path, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb",
                       "--config", write_config(tmp_path, receiver.url, batch={"max_events": max_events},
                                                retry={"max_attempts": 3, "initial_backoff_seconds": 0.01,
                                                       "max_backoff_seconds": 0.02})])
    delivered = Counter(p["id"] for p in receiver.delivered_payloads())
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        failed = Counter(r["message_id"] for r in rows(conn, "SELECT message_id FROM _dead_letters "
                                                              "WHERE error_type = 'delivery_failed'"))
    assert max(delivered.values(), default=1) == 1 and max(failed.values(), default=1) == 1
    assert sorted(delivered + failed) == sorted(expected) and not set(delivered) & set(failed)
    crm = summary["destinations"]["crm"]
    assert (crm["delivered"], crm["failed"]) == (len(delivered), len(failed)) and summary["conservation"]["holds"]


def test_body_event_sends_each_event_alone_as_segments_classic_webhooks_do(tmp_path, secrets_env):
    path, expected = write_events(tmp_path)
    with Receiver() as receiver:
        summary = run(["--input_files", path, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb",
                       "--config", write_config(tmp_path, receiver.url, body="event", batch={}, mapping=None)])
    bodies = [json.loads(r.body) for r in receiver.requests]
    assert sorted(b["messageId"] for b in bodies) == sorted(expected)  # the whole event, one per request
    assert all("batch" not in b and b["type"] in ("track", "identify", "page") for b in bodies)
    assert all(signing.verify(SECRET, r.headers["X-Sluice-Signature"], r.body) for r in receiver.requests)
    assert summary["destinations"]["crm"]["requests"] == 45
