"""collector.requests: every path, auth form, refusal and the enrichment of what is accepted."""
import base64
import gzip
import json
import zlib
from datetime import datetime, timezone

import orjson
import pytest
from hypothesis import event as hypothesis_event, given, settings as hsettings, strategies as st

from collector import requests as req
from collector.requests import Accepted, Refusal, Request, find_source, handle
from collector.settings import CollectorLimits, CollectorSettings, Source

KEY, OFF_KEY = "wk_live_1234567890", "wk_off_0987654321"
SETTINGS = CollectorSettings((Source("web", KEY), Source("old", OFF_KEY, enabled=False)))
NOW = datetime(2026, 12, 2, 22, 0, 0, 123456, tzinfo=timezone.utc)
STAMP = "2026-12-02T22:00:00.123Z"
TRACK = {"type": "track", "event": "Order Completed", "userId": "u1", "properties": {"revenue": 9.5}}


def basic(key: str, password: str = "", colon: bool = True) -> dict:
    raw = f"{key}:{password}" if colon else key
    return {"authorization": "Basic " + base64.b64encode(raw.encode()).decode()}


def post(path, body, headers=None, query="", client="203.0.113.9", settings=SETTINGS, method="POST"):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return handle(Request(method, path, query, headers if headers is not None else basic(KEY), data, client),
                  settings, NOW)


def refused(*args, **kwargs) -> Refusal:
    with pytest.raises(Refusal) as info:
        post(*args, **kwargs)
    refusal = info.value
    body = json.loads(refusal.body())
    assert body == {"success": False, "code": refusal.code, "message": refusal.message}
    assert "\n" not in refusal.message and KEY not in refusal.message and OFF_KEY not in refusal.message
    return refusal


def record(accepted: Accepted) -> dict:
    assert b"\n" not in accepted.record
    return json.loads(accepted.record)


# --- paths -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path, event_type", [
    ("/v1/track", "track"), ("/v1/identify", "identify"), ("/v1/page", "page"), ("/v1/screen", "screen"),
    ("/v1/group", "group"), ("/v1/alias", "alias"), ("/v1/t", "track"), ("/v1/i", "identify"),
    ("/v1/p", "page"), ("/v1/s", "screen"), ("/v1/g", "group"), ("/v1/a", "alias")])
def test_single_event_paths_set_the_type_when_absent(path, event_type):
    accepted = post(path, {"userId": "u1", "event": "E"})
    assert accepted.source.name == "web" and accepted.events == 1
    assert record(accepted)["batch"][0]["type"] == event_type
    kept = record(post(path, {"type": "custom", "userId": "u1"}))
    assert kept["batch"][0]["type"] == "custom"


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import", "/v1/b", "//v1/batch", "/v1/batch/"])
def test_batch_paths(path):
    accepted = post(path, {"batch": [TRACK, {**TRACK, "type": "identify"}], "sentAt": "2026-12-02T21:59:59Z"})
    assert accepted.events == 2
    line = record(accepted)
    assert [e["type"] for e in line["batch"]] == ["track", "identify"]
    assert line["sentAt"] == "2026-12-02T21:59:59Z" and line["source"] == "web"


def test_metrics_path_is_answered_and_kept_nowhere():
    assert post("/v1/m", b"not even json", headers={}) == Accepted(None, None, 0)


def test_rudderstack_beacon_takes_the_key_from_the_query():
    accepted = post("/beacon/v1/batch", {"batch": [TRACK]}, headers={}, query=f"writeKey={KEY}")
    assert accepted.source.name == "web" and accepted.events == 1
    refusal = refused("/beacon/v1/batch", {"batch": [TRACK]}, headers={}, query="writeKey=nope")
    assert refusal.code == "invalid_write_key"
    assert refused("/beacon/v1/batch", {"batch": [TRACK]}, headers={}).code == "missing_write_key"


def test_the_query_key_counts_only_for_the_beacon():
    assert refused("/v1/batch", {"batch": [TRACK]}, headers={}, query=f"writeKey={KEY}").code == "missing_write_key"


def test_signalsmith_one_event_or_a_batch():
    one = post("/api/v1/events", TRACK)
    assert one.events == 1 and record(one)["batch"][0]["event"] == "Order Completed"
    many = post("/api/v1/events", {"batch": [TRACK, TRACK, TRACK]})
    assert many.events == 3
    untyped = record(post("/api/v1/events", {"userId": "u"}))
    assert "type" not in untyped["batch"][0]   # no type from this path: the pipeline judges it


def test_unknown_paths_and_methods():
    assert refused("/v2/track", TRACK).status == 404
    assert refused("/", TRACK).code == "not_found"
    refusal = refused("/v1/track", TRACK, method="PUT")
    assert refusal.status == 405 and refusal.headers == {"allow": "POST"}


# --- auth --------------------------------------------------------------------------------------------

UNPADDED = {"authorization": "basic " + base64.b64encode(f"{KEY}:".encode()).decode().rstrip("=")}


@pytest.mark.parametrize("headers", [basic(KEY), basic(KEY, colon=False), basic(KEY, "ignored"), UNPADDED])
def test_basic_auth_forms(headers):
    assert post("/v1/batch", {"batch": [TRACK]}, headers=headers).source.name == "web"


def test_write_key_in_the_body_envelope_or_event():
    assert post("/v1/batch", {"batch": [TRACK], "writeKey": KEY}, headers={}).source.name == "web"
    assert post("/v1/t", {**TRACK, "writeKey": KEY}, headers={}).source.name == "web"
    # Basic with an empty user name, or another scheme: the body's key decides
    assert post("/v1/t", {**TRACK, "writeKey": KEY}, headers=basic("")).source.name == "web"
    assert post("/v1/t", {**TRACK, "writeKey": KEY}, headers={"authorization": "Bearer x"}).source.name == "web"


def test_the_header_key_wins_over_the_body():
    assert refused("/v1/t", {**TRACK, "writeKey": KEY}, headers=basic("other")).code == "invalid_write_key"


@pytest.mark.parametrize("headers, body, status, code", [
    ({}, {"batch": [TRACK]}, 401, "missing_write_key"),
    ({}, {"batch": [TRACK], "writeKey": ""}, 401, "missing_write_key"),
    ({}, {"batch": [TRACK], "writeKey": ["list"]}, 401, "invalid_write_key"),
    ({}, {"batch": [TRACK], "writeKey": 12}, 401, "invalid_write_key"),
    (basic("nope"), {"batch": [TRACK]}, 401, "invalid_write_key"),
    ({"authorization": "Basic !!!not-base64"}, {"batch": [TRACK]}, 401, "malformed_authorization"),
    ({"authorization": "Basic " + base64.b64encode(b"\xff\xfe:").decode()}, {"batch": [TRACK]}, 401,
     "malformed_authorization"),
    ({"authorization": "Basic é"}, {"batch": [TRACK]}, 401, "malformed_authorization"),
    (basic(OFF_KEY), {"batch": [TRACK]}, 403, "source_disabled"),
    ({}, {"batch": [TRACK], "writeKey": OFF_KEY}, 403, "source_disabled"),
])
def test_auth_refusals(headers, body, status, code):
    refusal = refused("/v1/batch", body, headers=headers)
    assert (refusal.status, refusal.code) == (status, code)


def test_an_unknown_header_key_is_refused_before_the_body_is_read():
    headers = {**basic("nope"), "content-encoding": "gzip"}
    assert refused("/v1/batch", b"\x1f\x8b garbage", headers=headers).status == 401


def test_find_source_is_what_settings_paths_use():
    assert find_source(SETTINGS, KEY).name == "web"
    with pytest.raises(Refusal) as info:
        find_source(SETTINGS, "nope")
    assert info.value.status == 401
    unresolved = CollectorSettings((Source("s", object()),))   # a secret never read matches nothing
    with pytest.raises(Refusal):
        find_source(unresolved, "x")


def test_the_write_key_is_never_kept():
    line = post("/v1/batch", {"batch": [{**TRACK, "writeKey": KEY}], "writeKey": KEY}).record
    assert KEY.encode() not in line and b"writeKey" not in line
    line = post("/v1/t", {**TRACK, "writeKey": KEY}, headers={}).record
    assert KEY.encode() not in line


# --- content encoding and body ---------------------------------------------------------------------------

def test_gzip_bodies_are_inflated():
    body = gzip.compress(orjson.dumps({"batch": [TRACK] * 3}))
    assert post("/v1/batch", body, headers={**basic(KEY), "content-encoding": "gzip"}).events == 3
    two_members = gzip.compress(b'{"batch": [') + gzip.compress(orjson.dumps(TRACK) + b"]}")
    assert post("/v1/batch", two_members, headers={**basic(KEY), "content-encoding": "GZIP"}).events == 1


def test_many_gzip_members_are_refused_cheaply():
    """Each member costs a copy of the rest of the body: 25,000 empty ones in 500 KB took 0.9 s."""
    empty = gzip.compress(b"")
    body = empty * (SETTINGS.limits.max_request_bytes // len(empty))
    refusal = refused("/v1/batch", body, headers={**basic(KEY), "content-encoding": "gzip"})
    assert (refusal.status, refusal.code) == (400, "malformed_gzip") and "gzip members" in refusal.message
    members = b"".join(gzip.compress(part) for part in (b'{"batch": [', orjson.dumps(TRACK), b"]}"))
    assert post("/v1/batch", members, headers={**basic(KEY), "content-encoding": "gzip"}).events == 1


def test_other_encodings_are_415():
    for encoding in ("br", "deflate", "gzip, gzip"):
        refusal = refused("/v1/batch", {"batch": []}, headers={**basic(KEY), "content-encoding": encoding})
        assert (refusal.status, refusal.code) == (415, "unsupported_encoding")
    assert post("/v1/batch", {"batch": [TRACK]}, headers={**basic(KEY), "content-encoding": "identity"}).events == 1


class _CountingInflater:
    """zlib's decompressobj, counting every byte it hands out."""
    produced = 0
    real = zlib.decompressobj

    def __init__(self, wbits):
        self._inner = _CountingInflater.real(wbits)

    def decompress(self, data, max_length=0):
        assert max_length > 0, "an unbounded inflate"
        out = self._inner.decompress(data, max_length)
        _CountingInflater.produced += len(out)
        return out

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_a_gzip_bomb_is_refused_without_inflating_beyond_the_cap(monkeypatch):
    bomb = gzip.compress(b"0" * (10 * 1024 * 1024), 9)
    assert len(bomb) < 20_000
    monkeypatch.setattr(req.zlib, "decompressobj", _CountingInflater)
    _CountingInflater.produced = 0
    refusal = refused("/v1/batch", bomb, headers={**basic(KEY), "content-encoding": "gzip"})
    assert (refusal.status, refusal.code) == (413, "request_too_large")
    cap = SETTINGS.limits.max_request_bytes
    assert _CountingInflater.produced <= cap + 1


def test_a_body_just_at_the_cap_inflates():
    cap = 1000
    settings = SETTINGS._replace(limits=CollectorLimits(max_event_bytes=1000, max_request_bytes=cap))
    body = orjson.dumps({"batch": [{"p": "x" * 50}]})
    body += b" " * (cap - len(body))
    assert post("/v1/batch", gzip.compress(body), headers={**basic(KEY), "content-encoding": "gzip"},
                settings=settings).events == 1
    refusal = refused("/v1/batch", gzip.compress(body + b" "), headers={**basic(KEY), "content-encoding": "gzip"},
                      settings=settings)
    assert refusal.status == 413


# mtime=0: gzip's header holds the time of compressing, and these bodies are built at import, once in
# each pytest-xdist worker; a body (so a test id) differing between workers fails the collection.
@pytest.mark.parametrize("body, message", [
    pytest.param(gzip.compress(orjson.dumps({"batch": [TRACK]}), mtime=0)[:-10], "truncated", id="cut-near-the-end"),
    pytest.param(gzip.compress(orjson.dumps({"batch": [TRACK]}), mtime=0)[:15], "truncated", id="cut-after-the-header"),
    pytest.param(b"", "truncated", id="empty"),
    pytest.param(b"{\"batch\": []}", "not gzip", id="plain-json"),
    pytest.param(gzip.compress(b'{"batch": []}', mtime=0) + b"trailing", "follow", id="trailing-bytes"),
])
def test_broken_gzip_is_400(body, message):
    refusal = refused("/v1/batch", body, headers={**basic(KEY), "content-encoding": "gzip"})
    assert (refusal.status, refusal.code) == (400, "malformed_gzip") and message in refusal.message


def test_a_plain_body_over_the_limit_is_413():
    big = orjson.dumps({"batch": [{"p": "x" * 1000}] * 600})
    refusal = refused("/v1/batch", big)
    assert (refusal.status, refusal.code) == (413, "request_too_large")


@pytest.mark.parametrize("body, status, code", [
    (b"", 400, "malformed_json"),
    (b"   \n", 400, "malformed_json"),
    (b'{"batch": [{"type": "track"', 400, "malformed_json"),      # truncated
    (b"{'single': 'quotes'}", 400, "malformed_json"),
    (b'{"a": NaN}', 400, "malformed_json"),
    (b'{"event": "caf\xe9"}', 400, "invalid_utf8"),
    (b"\xff\xfe{\x00}\x00", 400, "invalid_utf8"),
    (b"[]", 400, "not_an_object"),
    (b'"track"', 400, "not_an_object"),
    (b"null", 400, "not_an_object"),
])
def test_bodies_that_are_not_a_json_object(body, status, code):
    refusal = refused("/v1/track", body)
    assert (refusal.status, refusal.code) == (status, code)


def test_a_utf8_bom_is_tolerated():
    assert post("/v1/track", b"\xef\xbb\xbf" + orjson.dumps(TRACK)).events == 1


def test_too_deep_to_store_is_400_not_a_crash():
    deep = b'{"type": "track", "properties": {"p": ' + b"[" * 1000 + b"]" * 1000 + b"}}"
    refusal = refused("/v1/track", deep)
    assert (refusal.status, refusal.code) == (400, "too_deeply_nested")


def test_big_integers_stay_exact():
    body = b'{"type": "track", "userId": "u", "properties": {"id": 123456789012345678901234567890}}'
    line = post("/v1/track", body).record
    assert b"123456789012345678901234567890" in line


@pytest.mark.parametrize("body, detail", [
    ({"sentAt": "x"}, "got nothing"), ({"batch": {"type": "track"}}, "got an object"),
    ({"batch": "x"}, "got a string")])
def test_batch_must_be_a_list(body, detail):
    refusal = refused("/v1/batch", body)
    assert (refusal.status, refusal.code) == (400, "invalid_batch") and detail in refusal.message


def test_too_many_events_is_413():
    settings = SETTINGS._replace(limits=CollectorLimits(max_batch_events=3))
    assert post("/v1/batch", {"batch": [TRACK] * 3}, settings=settings).events == 3
    refusal = refused("/v1/batch", {"batch": [TRACK] * 4}, settings=settings)
    assert (refusal.status, refusal.code) == (413, "too_many_events")


def test_an_event_over_the_limit_refuses_the_whole_request_naming_its_index():
    limit = SETTINGS.limits.max_event_bytes
    big = {**TRACK, "properties": {"blob": "x" * limit}}
    refusal = refused("/v1/batch", {"batch": [TRACK, big, TRACK]})
    assert (refusal.status, refusal.code) == (413, "event_too_large") and "event 1 " in refusal.message
    refusal = refused("/v1/track", big)
    assert refusal.code == "event_too_large" and "the event" in refusal.message


def test_the_event_size_counts_the_collectors_additions():
    settings = SETTINGS._replace(limits=CollectorLimits(max_event_bytes=300, max_request_bytes=100_000))
    event = {"type": "track", "userId": "u", "event": "E", "messageId": "m1", "context": {"ip": "1.2.3.4"}}
    size = len(orjson.dumps(event))
    event["properties"] = {"pad": "x" * (300 - size - len(',"properties":{"pad":""}'))}
    assert len(orjson.dumps(event)) == 300
    # as sent it is exactly at the limit; receivedAt makes it larger as stored
    assert refused("/v1/batch", {"batch": [event]}, settings=settings).code == "event_too_large"


def test_an_empty_batch_is_accepted_with_nothing_to_keep():
    assert post("/v1/batch", {"batch": []}) == Accepted(SETTINGS.sources[0], None, 0)


def test_events_the_spec_rejects_are_accepted():
    accepted = post("/v1/batch", {"batch": [{"type": "track"}, {"userId": "u"}, "not an object", None, 7]})
    assert accepted.events == 5
    line = record(accepted)
    assert line["batch"][2:] == ["not an object", None, 7]
    accepted = post("/v1/track", {"properties": {}})
    assert accepted.events == 1


# --- enrichment -------------------------------------------------------------------------------------------

def test_enrichment_of_a_single_event():
    line = record(post("/v1/track", {"event": "E", "userId": "u", "receivedAt": "1999-01-01T00:00:00Z",
                                      "sentAt": "2026-12-02T21:59:59.000Z", "source": "forged"}))
    event = line["batch"][0]
    assert line["source"] == "web" and line["receivedAt"] == STAMP
    assert event["receivedAt"] == STAMP and event["sentAt"] == "2026-12-02T21:59:59.000Z"
    assert len(event["messageId"]) == 36 and event["context"] == {"ip": "203.0.113.9"}
    assert set(line) == {"batch", "source", "receivedAt"}


def test_message_ids_are_assigned_only_when_absent():
    line = record(post("/v1/batch", {"batch": [{**TRACK, "messageId": "keep"}, TRACK, {**TRACK, "messageId": None},
                                                {**TRACK, "messageId": ""}]}))
    ids = [e["messageId"] for e in line["batch"]]
    assert ids[0] == "keep" and len(set(ids[1:])) == 3 and all(len(i) == 36 for i in ids[1:])


def test_context_ip_from_the_client_unless_present():
    line = record(post("/v1/batch", {"batch": [{**TRACK, "context": {"ip": "198.51.100.1"}},
                                                {**TRACK, "context": {"library": {"name": "x"}}},
                                                {**TRACK, "context": None},
                                                {**TRACK, "context": {"ip": None}},
                                                TRACK]}))
    contexts = [e["context"] for e in line["batch"]]
    assert contexts == [{"ip": "198.51.100.1"}, {"library": {"name": "x"}, "ip": "203.0.113.9"},
                        {"ip": "203.0.113.9"}, {"ip": "203.0.113.9"}, {"ip": "203.0.113.9"}]


def test_the_envelope_context_is_kept_and_decode_applies_it():
    line = record(post("/v1/batch", {"batch": [TRACK, {**TRACK, "context": {"x": 1}}],
                                      "context": {"library": {"name": "lib"}}, "integrations": {"All": False},
                                      "type": "batch", "writeKey": KEY}, headers={}))
    assert line["context"] == {"library": {"name": "lib"}, "ip": "203.0.113.9"}
    assert "context" not in line["batch"][0]            # decode gives it the envelope's
    assert line["batch"][1]["context"] == {"x": 1, "ip": "203.0.113.9"}
    assert line["integrations"] == {"All": False} and "type" not in line and "writeKey" not in line
    from transforms.decode import DecodeLimits, decode_message
    from transforms.messages import Event, RawMessage
    decoded = list(decode_message(RawMessage(json.dumps(line).encode(), {}, "file:x"), STAMP, DecodeLimits()))
    assert [type(d) for d in decoded] == [Event, Event]
    assert [d.body["context"]["ip"] for d in decoded] == ["203.0.113.9", "203.0.113.9"]
    assert decoded[0].body["context"]["library"] == {"name": "lib"}


def test_an_envelope_context_ip_is_kept():
    line = record(post("/v1/batch", {"batch": [TRACK], "context": {"ip": "198.51.100.7"}}))
    assert line["context"] == {"ip": "198.51.100.7"} and "context" not in line["batch"][0]


def test_no_client_address_sets_no_ip():
    line = record(post("/v1/track", TRACK, client=""))
    assert "context" not in line["batch"][0]


def test_received_at_is_utc_milliseconds():
    from datetime import timedelta
    assert req.received_at(datetime(2026, 1, 2, 3, 4, 5, 678999)) == "2026-01-02T03:04:05.678Z"
    paris = timezone(timedelta(hours=1))
    assert req.received_at(datetime(2026, 1, 2, 4, 4, 5, 1000, tzinfo=paris)) == "2026-01-02T03:04:05.001Z"


# --- X-Forwarded-For ------------------------------------------------------------------------------------------

PROXIED = SETTINGS._replace(limits=CollectorLimits(trusted_proxies=("10.0.0.0/8", "192.0.2.1", "2001:db8::/32")))


@pytest.mark.parametrize("peer, forwarded, expected", [
    ("203.0.113.9", "198.51.100.1", "203.0.113.9"),                 # peer not trusted: XFF ignored
    ("10.1.2.3", "198.51.100.1", "198.51.100.1"),
    ("10.1.2.3", "6.6.6.6, 198.51.100.1, 10.0.0.5", "198.51.100.1"),  # right-most untrusted; a forged left part ignored
    ("10.1.2.3", "", "10.1.2.3"),
    ("10.1.2.3", "10.0.0.7, 192.0.2.1", "10.0.0.7"),                # every hop trusted: the left-most
    ("10.1.2.3", "garbage, 10.0.0.7", "10.0.0.7"),                  # a hop that is no address stops the walk
    ("10.1.2.3", "198.51.100.1:5123", "198.51.100.1"),
    ("2001:db8::1", "[2001:db8:1::2]:443, 2a00::1", "2a00::1"),
])
def test_x_forwarded_for_only_from_trusted_proxies(peer, forwarded, expected):
    headers = {**basic(KEY), "x-forwarded-for": forwarded}
    line = record(post("/v1/track", TRACK, headers=headers, client=peer, settings=PROXIED))
    assert line["batch"][0]["context"]["ip"] == expected


def test_without_trusted_proxies_the_peer_is_the_client():
    line = record(post("/v1/track", TRACK, headers={**basic(KEY), "x-forwarded-for": "1.1.1.1"}, client="10.1.2.3"))
    assert line["batch"][0]["context"]["ip"] == "10.1.2.3"


# --- the record ------------------------------------------------------------------------------------------------

def test_the_record_is_what_decode_reads():
    from transforms.decode import DecodeLimits, decode_message
    from transforms.messages import RawMessage
    accepted = post("/v1/batch", {"batch": [TRACK, {**TRACK, "userId": "u2"}], "sentAt": "2026-12-02T21:59:59Z"})
    events = list(decode_message(RawMessage(accepted.record, {}, "file:x"), STAMP, DecodeLimits()))
    assert [e.body["userId"] for e in events] == ["u1", "u2"]
    assert all(e.body["sentAt"] == "2026-12-02T21:59:59Z" for e in events)


def test_settings_changes_are_seen():
    other = CollectorSettings((Source("app", "k2"),))
    assert post("/v1/track", TRACK, headers=basic("k2"), settings=other).source.name == "app"
    assert post("/v1/track", TRACK).source.name == "web"


# --- anything at all -----------------------------------------------------------------------------------------

_HEADERS = st.fixed_dictionaries({}, optional={
    "authorization": st.one_of(st.just(basic(KEY)["authorization"]), st.text(max_size=40)),
    "content-encoding": st.sampled_from(["gzip", "br", "identity", " GZIP "]),
    "x-forwarded-for": st.text(max_size=40)})
_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
_JSONISH = st.recursive(_SCALARS, lambda children: st.lists(children, max_size=4)
                        | st.dictionaries(st.text(max_size=8), children, max_size=4), max_leaves=20)
_EVENTISH = st.dictionaries(st.sampled_from(["type", "userId", "event", "context", "messageId", "writeKey",
                                              "properties"]), _JSONISH, max_size=5)
_BODIES = st.one_of(st.binary(max_size=300),
                    _JSONISH.map(lambda v: json.dumps(v).encode()),
                    st.dictionaries(st.sampled_from(["batch", "writeKey", "type", "context", "sentAt", "messageId"]),
                                    _JSONISH, max_size=5).map(lambda v: json.dumps(v).encode()),
                    st.binary(max_size=200).map(gzip.compress),
                    st.lists(_EVENTISH, max_size=4).map(lambda events: json.dumps({"batch": events}).encode()),
                    _EVENTISH.map(lambda event: json.dumps(event).encode()))
_PATHS = st.sampled_from(sorted(req.ROUTES) + ["/nope", ""])
_LIMITS = CollectorLimits(max_event_bytes=200, max_request_bytes=400, max_batch_events=3,
                          trusted_proxies=("10.0.0.0/8",))


@hsettings(max_examples=600, deadline=None)
@given(path=_PATHS, headers=_HEADERS, body=_BODIES, query=st.sampled_from(["", f"writeKey={KEY}", "writeKey=%ff&&="]),
       client=st.sampled_from(["203.0.113.9", "10.0.0.1", "", "::1"]))
def test_any_request_is_accepted_or_refused_with_a_json_4xx(path, headers, body, query, client):
    settings = SETTINGS._replace(limits=_LIMITS)
    try:
        accepted = handle(Request("POST", path, query, headers, body, client), settings, NOW)
    except Refusal as refusal:
        hypothesis_event(f"refused {refusal.code}")
        assert 400 <= refusal.status < 500
        parsed = json.loads(refusal.body())
        assert parsed["success"] is False and parsed["code"] and "\n" not in parsed["message"]
        return
    assert isinstance(accepted, Accepted)
    hypothesis_event("accepted")
    if accepted.record is not None:
        line = json.loads(accepted.record)
        assert len(line["batch"]) == accepted.events and b"\n" not in accepted.record


@hsettings(max_examples=300, deadline=None)
@given(path=st.sampled_from(sorted(p for p, (kind, _) in req.ROUTES.items() if kind != "metrics")),
       body=st.one_of(_EVENTISH, st.fixed_dictionaries({"batch": st.lists(_EVENTISH | _JSONISH, max_size=4)},
                                                        optional={"context": _JSONISH, "sentAt": st.text(max_size=30),
                                                                  "writeKey": st.just(KEY)})),
       compress=st.booleans())
def test_an_accepted_record_is_what_decode_splits_into_its_events(path, body, compress):
    """Conservation starts at the edge: decode makes exactly `events` outcomes of a record, each
    event (an object) carrying the collector's receivedAt and a messageId, none a write key."""
    from transforms.decode import DecodeLimits, decode_message
    from transforms.messages import Event, RawMessage
    data = json.dumps(body).encode()
    headers = {**basic(KEY), **({"content-encoding": "gzip"} if compress else {})}
    try:
        accepted = handle(Request("POST", path, "" if "beacon" not in path else f"writeKey={KEY}", headers,
                                  gzip.compress(data) if compress else data, "203.0.113.9"), SETTINGS, NOW)
    except Refusal as refusal:
        assert refusal.code in ("invalid_batch", "too_deeply_nested", "event_too_large"), refusal
        return
    if accepted.record is None:
        assert accepted.events == 0
        return
    outcomes = list(decode_message(RawMessage(accepted.record, {}, "file:x"), STAMP, DecodeLimits()))
    assert len(outcomes) == accepted.events
    for outcome in outcomes:
        if isinstance(outcome, Event):
            assert outcome.body["receivedAt"] == STAMP and outcome.body["messageId"] not in (None, "")
            assert "writeKey" not in outcome.body and outcome.source == "web"


def test_a_full_request_within_the_limits_makes_a_record_decode_splits():
    """The record is larger than decode.max_batch_bytes (the collector's additions): decode
    still splits it, as a record the collector wrote (decode.max_record_bytes)."""
    from transforms.decode import DecodeLimits, decode_message
    from transforms.messages import Event, RawMessage
    event = {"type": "track", "event": "e", "userId": "u", "properties": {"p": "x" * 120}}
    body = orjson.dumps({"batch": [event] * 2500})
    assert len(body) < SETTINGS.limits.max_request_bytes
    accepted = post("/v1/batch", body)
    assert DecodeLimits().max_batch_bytes < len(accepted.record) <= SETTINGS.limits.largest_record("web")
    outcomes = list(decode_message(RawMessage(accepted.record, {}, "file:x"), STAMP, DecodeLimits()))
    assert len(outcomes) == 2500 and all(isinstance(o, Event) for o in outcomes)
    assert {(o.source, o.body["source"]) for o in outcomes} == {("web", "web")}
