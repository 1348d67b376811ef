"""The collector's records as the pipeline decodes them: every event of a request the collector
acknowledged is decoded (never refused whole for the collector's own additions), a config whose
decode limits could not hold its collector's records is refused at start, and the source's
name is the events' `source` in the warehouse and in the dead letters."""
import base64
from datetime import datetime, timezone

import duckdb
import orjson
import pytest

from collector.requests import Refusal, Request, handle
from collector.settings import RECORD_BYTES_PER_EVENT, CollectorSettings, Source
from pipeline import config, serve
from pipeline.errors import UsageError
from pipeline.main import run
from tests.conftest import rows
from transforms.decode import DecodeLimits, Refused, decode_message
from transforms.messages import Event, RawMessage

KEY = "wk_records_1"
SETTINGS = CollectorSettings((Source("web", KEY),))
LIMITS = SETTINGS.limits
NOW = datetime(2026, 12, 3, 1, 0, 0, 123000, tzinfo=timezone.utc)
LONGEST_IP = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"  # 45 characters, the longest address text


def post(body, client=LONGEST_IP, path="/v1/batch"):
    headers = {"authorization": "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()}
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return handle(Request("POST", path, "", headers, data, client), SETTINGS, NOW)


def full_batch(event: bytes) -> bytes:
    """A batch of max_batch_events copies of `event` (JSON text), its "PAD" padded so the body is
    just under max_request_bytes."""
    def body(pad):
        return b'{"batch":[' + b",".join([event.replace(b"PAD", b"x" * pad)] * LIMITS.max_batch_events) + b"]}"
    data = body((LIMITS.max_request_bytes - len(body(0))) // LIMITS.max_batch_events)
    assert LIMITS.max_request_bytes - LIMITS.max_batch_events <= len(data) <= LIMITS.max_request_bytes
    return data


def decoded(record: bytes, limits=DecodeLimits()) -> list:
    return list(decode_message(RawMessage(record, {}, "file:x"), "2026-12-03T01:00:01.000Z", limits))


def test_the_most_the_collector_adds_stays_within_its_bound_and_decodes():
    """Every addition at once on every event: no context, no messageId (so context.ip, messageId
    and receivedAt each added) from the longest address text, in the largest request."""
    body = full_batch(b'{"type":"track","event":"e","userId":"u","properties":{"p":"PAD"}}')
    accepted = post(body)
    grown = len(accepted.record) - len(body)
    assert grown > LIMITS.max_batch_events * (RECORD_BYTES_PER_EVENT - 10)  # the per-event allowance is tight
    assert DecodeLimits().max_batch_bytes < len(accepted.record) <= LIMITS.largest_record("web")
    assert LIMITS.largest_record("web") <= DecodeLimits().max_record_bytes  # the defaults agree
    outcomes = decoded(accepted.record)
    assert len(outcomes) == LIMITS.max_batch_events and all(isinstance(o, Event) for o in outcomes)


def test_a_record_that_would_outgrow_the_bound_is_refused_not_acknowledged():
    """Compact JSON writes some numbers longer (1e9 as 1000000000.0): a record past the bound
    decode is sure to accept is a 413, never a 2xx whose events decode refuses."""
    body = full_batch(b'{"type":"track","event":"e","userId":"u","properties":{"n":[%s],"p":"PAD"}}'
                      % b",".join([b"1e9"] * 30))
    with pytest.raises(Refusal) as info:
        post(body)
    assert info.value.status == 413 and info.value.code == "request_too_large"
    assert f"over the {LIMITS.largest_record('web')}-byte limit" in info.value.message


@pytest.mark.parametrize("envelope", [
    {"batch": [{"type": "track", "event": "e", "userId": "u"}]},                  # no source, no receivedAt
    {"batch": [{"type": "track", "event": "e", "userId": "u"}], "source": "web"},  # no receivedAt
])
def test_a_large_batch_the_collector_did_not_write_keeps_the_batch_limit(envelope):
    """Messages from files or another producer's Pub/Sub: over decode.max_batch_bytes is still
    batch_too_large, as before; so is an unparsable one of that size."""
    data = orjson.dumps({**envelope, "batch": envelope["batch"] * 15000})
    assert DecodeLimits().max_batch_bytes < len(data) < DecodeLimits().max_record_bytes
    for message in (data, data[:-1]):
        [outcome] = decoded(message)
        assert isinstance(outcome, Refused) and outcome.rejection.error_type == "batch_too_large"
        assert outcome.rejection.details["limit_bytes"] == DecodeLimits().max_batch_bytes


def test_a_collector_record_over_max_record_bytes_is_refused_whole():
    record = post({"batch": [{"type": "track", "event": "e", "userId": "u", "properties": {"p": "x" * 120}}] * 2500})
    assert len(record.record) > DecodeLimits().max_batch_bytes
    [outcome] = decoded(record.record, DecodeLimits(max_record_bytes=len(record.record) - 1))
    assert isinstance(outcome, Refused) and outcome.rejection.error_type == "batch_too_large"
    assert len(decoded(record.record, DecodeLimits(max_record_bytes=len(record.record)))) == 2500


SOURCES = "sources:\n  - {name: web, write_key: k1}\n"


@pytest.mark.parametrize("text, key", [
    (SOURCES + "decode: {max_record_bytes: 600000}\n", "decode.max_record_bytes"),
    (SOURCES + "collector: {max_request_bytes: 900000}\n", "decode.max_record_bytes"),
    ("collector: {max_batch_events: 5000}\n", "decode.max_record_bytes"),
    (SOURCES + "decode: {max_event_bytes: 20000}\n", "decode.max_event_bytes"),
    (SOURCES + "collector: {max_event_bytes: 40000}\n", "decode.max_event_bytes"),
])
def test_a_config_whose_decode_cannot_hold_its_collectors_records_is_refused(tmp_path, text, key):
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=f"^config: {key}: "):
        config.load(str(path))   # the batch and streaming jobs, and serve --warehouse, read it so


def test_serve_refuses_it_at_start_with_exit_2(tmp_path, capsys):
    path = tmp_path / "sluice.yaml"
    path.write_text(SOURCES + "decode: {max_record_bytes: 600000}\n")
    assert serve.main(["--config", str(path), "--warehouse", f"duckdb:///{tmp_path}/w.duckdb", "--port", "0"]) == 2
    assert "decode.max_record_bytes" in capsys.readouterr().err


@pytest.mark.parametrize("text", [
    "decode: {max_record_bytes: 600000}\n",   # no collector: nothing to hold
    SOURCES + "collector: {max_request_bytes: 900000}\ndecode: {max_record_bytes: 1400000}\n",
    SOURCES + "collector: {max_request_bytes: 900000}\ndecode: {max_batch_bytes: 1400000}\n",
])
def test_a_config_that_holds_them_is_accepted(tmp_path, text):
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    config.load(str(path))


def test_the_source_name_is_the_rows_source_and_the_dead_letters(tmp_path):
    """The batch job on a record the collector wrote (one good event of each kind and a bad one),
    and on a line no collector wrote: only the collector's events get a `source` column value."""
    record = post({"batch": [
        {"type": "track", "event": "Signed Up", "userId": "u1", "messageId": "t1", "source": "spoofed"},
        {"type": "identify", "userId": "u1", "messageId": "i1", "traits": {"plan": "pro"}},
        {"type": "page", "anonymousId": "a1", "name": "Home", "messageId": "p1"},
        {"type": "track", "userId": "u2", "messageId": "bad"},                     # no event name
    ]}, client="203.0.113.9").record
    plain = orjson.dumps({"type": "track", "event": "Signed Up", "userId": "u3", "messageId": "t3"})
    (tmp_path / "records.jsonl").write_bytes(record + b"\n" + plain + b"\n")
    (tmp_path / "sluice.yaml").write_text(SOURCES)
    summary = run(["--input_files", str(tmp_path / "records.jsonl"), "--config", str(tmp_path / "sluice.yaml"),
                   "--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    assert summary["conservation"]["holds"] and summary["stored"] == 4, summary
    conn = duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True)
    stored = {r["message_id"]: r["source"] for table in ("tracks", "identifies", "pages", "signed_up")
              for r in rows(conn, f"SELECT message_id, source FROM {table}")}
    # the write key's source, not what the client claimed; a line from no collector has none
    assert stored == {"t1": "web", "i1": "web", "p1": "web", "t3": None}
    [letter] = rows(conn, "SELECT source, error_type, message_id FROM _dead_letters")
    assert letter == {"source": "web", "error_type": "missing_event_name", "message_id": "bad"}
