"""What each real SDK puts on the wire, pinned: the collector must accept exactly this, and an SDK
upgrade that changes it fails here first. The SDKs are unmodified (segment-analytics-python and
rudder-sdk-python from .venv, @segment/analytics-node and analytics.js from node_modules, the
latter in Debian's chromium) and send to a capture server on 127.0.0.1 (capture.py) that records
every request and answers as scripted. docs/collector.md says what the collector does about them.
"""
import base64
import datetime
import gzip
import socket
import subprocess
import sys
import time

import pytest

from tests.collector import sdks
from tests.collector.capture import CaptureServer

KEY = "wk_test_Abc123"
BASIC = "Basic " + base64.b64encode(f"{KEY}:".encode()).decode()

EVENTS = [
    {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 12.5}},
    {"type": "identify", "userId": "u1", "traits": {"plan": "pro"}},
    {"type": "page", "userId": "u1", "name": "Home", "properties": {"path": "/"}},
    {"type": "screen", "userId": "u1", "name": "Settings"},
    {"type": "group", "userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}},
    {"type": "alias", "userId": "u1", "previousId": "anon-1"},
]
TRACK = EVENTS[:1]


@pytest.fixture
def capture():
    servers = []

    def start(script=(), **options):
        server = CaptureServer(script, **options).__enter__()
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.__exit__(None, None, None)


def parse_time(text: str) -> datetime.datetime:
    parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None, text
    return parsed


def batch_ids(request) -> list:
    return [event["messageId"] for event in request.events()]


def gaps(requests) -> list:
    return [round(b.at - a.at, 3) for a, b in zip(requests, requests[1:])]


# --- segment-analytics-python 2.4.0 -----------------------------------------------------------

def test_segment_python_posts_v1_batch_with_basic_auth_and_the_key_in_the_body_too(capture):
    server = capture()
    ids = sdks.send_segment_python(server.base_url, KEY, EVENTS)
    [post] = server.posts()
    assert (post.method, post.path, post.query) == ("POST", "/v1/batch", {})
    assert post.headers["content-type"] == "application/json"
    assert post.headers["authorization"] == BASIC
    assert post.headers["user-agent"] == "analytics-python/2.4.0"
    assert "content-encoding" not in post.headers and "x-retry-count" not in post.headers
    body = post.json()
    assert set(body) == {"batch", "sentAt", "writeKey"} and body["writeKey"] == KEY
    assert abs(parse_time(body["sentAt"]) - datetime.datetime.now(datetime.timezone.utc)).total_seconds() < 30
    assert batch_ids(post) == ids
    assert [e["type"] for e in body["batch"]] == [e["type"] for e in EVENTS]
    for event in body["batch"]:
        assert event["context"]["library"] == {"name": "analytics-python", "version": "2.4.0"}
        assert event["timestamp"].endswith("+00:00")
    assert body["batch"][5]["previousId"] == "anon-1" and body["batch"][4]["groupId"] == "g1"


def test_segment_python_gzip_is_content_encoding_gzip(capture):
    server = capture()
    ids = sdks.send_segment_python(server.base_url, KEY, EVENTS, gzip=True)
    [post] = server.posts()
    assert post.headers["content-encoding"] == "gzip" and post.raw[:2] == b"\x1f\x8b"
    assert gzip.decompress(post.raw) == post.body and post.headers["content-type"] == "application/json"
    assert post.json()["writeKey"] == KEY and batch_ids(post) == ids


def test_segment_python_waits_out_retry_after_on_a_429_and_counts_the_retry(capture):
    server = capture([(429, {"Retry-After": "1"})])
    ids = sdks.send_segment_python(server.base_url, KEY, TRACK)
    first, second = server.posts()
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.95, gaps([first, second])
    # A batch answered with a Retry-After is re-queued and sent afresh, not counted as a retry:
    # X-Retry-Count appears only on counted (backoff) retries.
    assert "x-retry-count" not in first.headers and "x-retry-count" not in second.headers
    assert batch_ids(first) == batch_ids(second) == ids


def test_segment_python_retries_a_503_at_once_then_backs_off_with_x_retry_count(capture):
    server = capture([(503, {}), (503, {})])
    ids = sdks.send_segment_python(server.base_url, KEY, TRACK)
    posts = server.posts()
    assert [p.status for p in posts] == [503, 503, 200]
    first_gap, second_gap = gaps(posts)
    assert first_gap < 0.4 and 0.45 <= second_gap < 2, gaps(posts)  # at once, then 0.5 s (+10%)
    assert [p.headers.get("x-retry-count") for p in posts] == [None, "1", "2"]
    assert all(batch_ids(p) == ids for p in posts)


def test_segment_python_honours_retry_after_on_a_503_too(capture):
    server = capture([(503, {"Retry-After": "1"})])
    sdks.send_segment_python(server.base_url, KEY, TRACK)
    first, second = server.posts()
    assert second.at - first.at >= 0.95, gaps([first, second])


def test_segment_python_drops_a_batch_answered_400(capture):
    server = capture([(400, {})])
    with pytest.raises(sdks.SdkDeliveryError) as raised:
        sdks.send_segment_python(server.base_url, KEY, TRACK, timeout=10)
    assert len(server.posts()) == 1
    assert raised.value.message_ids == batch_ids(server.posts()[0])


# --- rudder-sdk-python 2.1.9 ------------------------------------------------------------------

def test_rudder_python_posts_gzip_with_basic_auth_only(capture):
    server = capture()
    ids = sdks.send_rudder_python(server.base_url, KEY, EVENTS)
    [post] = server.posts()
    assert (post.method, post.path, post.query) == ("POST", "/v1/batch", {})
    assert post.headers["content-encoding"] == "gzip" and post.raw[:2] == b"\x1f\x8b"
    assert post.headers["content-type"] == "application/json"
    assert post.headers["authorization"] == BASIC
    assert post.headers["user-agent"] == "analytics-python/2.1.9"  # the same name as Segment's
    body = post.json()
    assert set(body) == {"batch", "sentAt"}  # no writeKey in the body
    parse_time(body["sentAt"])
    assert batch_ids(post) == ids
    for event in body["batch"]:
        assert event["channel"] == "server" and event["integrations"] == {"All": True}
        assert event["context"]["library"] == {"name": "analytics-python", "version": "2.1.9"}
    assert body["batch"][1]["context"]["traits"] == {"plan": "pro"}  # identify's traits go to context too


def test_rudder_python_without_gzip(capture):
    server = capture()
    sdks.send_rudder_python(server.base_url, KEY, TRACK, gzip=False)
    [post] = server.posts()
    assert "content-encoding" not in post.headers and post.raw == post.body


def test_rudder_python_takes_only_200_as_success_and_sends_again_after_a_202(capture):
    """rudder-sdk-python checks `status_code == 200`: a 202 is an error it retries, so a
    collector answering 202 would store every batch twice."""
    server = capture([(202, {})])
    ids = sdks.send_rudder_python(server.base_url, KEY, TRACK)
    first, second = server.posts()
    assert (first.status, second.status) == (202, 200)
    assert batch_ids(first) == batch_ids(second) == ids


def test_rudder_python_ignores_retry_after_and_sends_no_retry_count(capture):
    server = capture([(429, {"Retry-After": "30"}), (503, {"Retry-After": "30"})])
    sdks.send_rudder_python(server.base_url, KEY, TRACK)
    posts = server.posts()
    assert [p.status for p in posts] == [429, 503, 200]
    assert all(gap < 5 for gap in gaps(posts)), gaps(posts)  # backoff.expo full jitter: up to 1 s, 2 s
    assert all("x-retry-count" not in p.headers for p in posts)


def test_rudder_python_batches_past_segments_500_kb_limit(capture):
    """rudder-sdk-python caps events and batches at 4 MB, not Segment's 32 KB and 500 KB: 60
    events of 10 KB go in one request of over 600 KB once inflated (a collector with Segment's
    limits answers 413, and rudder drops the batch)."""
    server = capture()
    big = [{"type": "track", "userId": f"u{i}", "event": "Big", "properties": {"blob": "x" * 10_000}}
           for i in range(60)]
    sdks.send_rudder_python(server.base_url, KEY, big, upload_interval=1.5)  # all 60 queued by then
    [post] = server.posts()
    assert len(post.events()) == 60 and len(post.body) > 600_000 and len(post.raw) < 100_000


def test_rudder_python_drops_a_batch_answered_400(capture):
    server = capture([(400, {})])
    with pytest.raises(sdks.SdkDeliveryError):
        sdks.send_rudder_python(server.base_url, KEY, TRACK, timeout=10)
    assert len(server.posts()) == 1


# --- @segment/analytics-node 3.1.0 ------------------------------------------------------------

@pytest.mark.node
def test_analytics_node_posts_v1_batch_with_basic_auth_and_the_key_in_the_body_too(capture):
    server = capture()
    ids = sdks.send_analytics_node(server.base_url, KEY, EVENTS)
    [post] = server.posts()
    assert (post.method, post.path, post.query) == ("POST", "/v1/batch", {})
    assert post.headers["content-type"] == "application/json"
    assert post.headers["authorization"] == BASIC
    assert post.headers["user-agent"] == "analytics-node-next/latest"
    assert "content-encoding" not in post.headers and "x-retry-count" not in post.headers
    body = post.json()
    assert set(body) == {"batch", "writeKey", "sentAt"} and body["writeKey"] == KEY
    assert body["sentAt"].endswith("Z")
    parse_time(body["sentAt"])
    assert batch_ids(post) == ids
    for event in body["batch"]:
        assert event["context"]["library"] == {"name": "@segment/analytics-node", "version": "3.1.0"}
        assert event["_metadata"]["jsRuntime"] == "node" and event["timestamp"].endswith("Z")


@pytest.mark.node
def test_analytics_node_sends_batches_of_flush_at_events(capture):
    server = capture()
    many = [{"type": "track", "userId": f"u{i}", "event": "Viewed"} for i in range(40)]
    ids = sdks.send_analytics_node(server.base_url, KEY, many)  # flushAt: 15 by default
    posts = server.posts()  # sent concurrently: they may arrive in any order
    assert sorted(len(p.events()) for p in posts) == [10, 15, 15]
    assert sorted(i for p in posts for i in batch_ids(p)) == sorted(ids)


@pytest.mark.node
def test_analytics_node_waits_out_retry_after_on_a_429(capture):
    server = capture([(429, {"Retry-After": "1"})])
    ids = sdks.send_analytics_node(server.base_url, KEY, TRACK)
    first, second = server.posts()
    assert second.at - first.at >= 0.95, gaps([first, second])
    assert "x-retry-count" not in first.headers and second.headers["x-retry-count"] == "1"
    assert batch_ids(first) == batch_ids(second) == ids


@pytest.mark.node
def test_analytics_node_backs_off_a_503_ignoring_its_retry_after(capture):
    server = capture([(503, {"Retry-After": "30"})])
    sdks.send_analytics_node(server.base_url, KEY, TRACK)
    first, second = server.posts()
    assert 0.9 <= second.at - first.at < 5, gaps([first, second])  # (1..2) * 500 ms * 2^1
    assert second.headers["x-retry-count"] == "1"


@pytest.mark.node
def test_analytics_node_counts_a_redirect_as_delivered(capture):
    """Any status below 400 is success to analytics-node (and analytics.js): a collector that
    redirected (say /v1/batch to /v1/batch/) would lose every event."""
    server = capture([(302, {})])
    sdks.send_analytics_node(server.base_url, KEY, TRACK)
    assert [p.status for p in server.posts()] == [302]


@pytest.mark.node
def test_analytics_node_drops_a_batch_answered_400(capture):
    server = capture([(400, {})])
    with pytest.raises(sdks.SdkDeliveryError):
        sdks.send_analytics_node(server.base_url, KEY, TRACK, timeout=10)
    assert len(server.posts()) == 1


# --- analytics.js (@segment/analytics-next 1.84.3, standalone) in chromium ---------------------

AJS_PATHS = {"track": "/v1/t", "identify": "/v1/i", "page": "/v1/p", "screen": "/v1/s", "group": "/v1/g",
             "alias": "/v1/a"}


@pytest.mark.browser
def test_analytics_js_loads_settings_then_posts_each_event_to_its_one_letter_path(capture):
    server = capture()
    log = []
    ids = sdks.send_analytics_js(server.base_url, KEY, EVENTS, log=log)
    settings = server.requests[0]
    assert (settings.method, settings.path, settings.query) == ("GET", f"/v1/projects/{KEY}/settings", {})
    assert "authorization" not in settings.headers and settings.headers["origin"].startswith("http://127.0.0.1:")
    posts = server.posts()
    assert sorted(p.path for p in posts) == sorted(AJS_PATHS.values())
    by_id = {p.json()["messageId"]: p for p in posts}
    assert set(by_id) == set(ids)
    for event, message_id in zip(EVENTS, ids):
        post = by_id[message_id]
        assert post.path == AJS_PATHS[event["type"]]
        assert post.headers["content-type"] == "text/plain"
        assert post.headers["authorization"] == BASIC
        assert "content-encoding" not in post.headers and "x-retry-count" not in post.headers
        body = post.json()
        assert body["type"] == event["type"] and body["writeKey"] == KEY
        assert body["context"]["library"] == {"name": "analytics.js", "version": "next-1.84.3"}
        assert body["_metadata"] == {"bundled": ["Segment.io"], "unbundled": [], "bundledIds": []}
        parse_time(body["sentAt"])
        assert body["anonymousId"]
    # Basic auth makes each POST preflighted (text/plain alone would not be); once per path.
    preflights = [r for r in server.requests if r.method == "OPTIONS"]
    assert sorted(r.path for r in preflights) == sorted(AJS_PATHS.values())
    for preflight in preflights:
        assert preflight.headers["access-control-request-method"] == "POST"
        assert preflight.headers["access-control-request-headers"] == "authorization"
    # Nothing else: no lazily loaded chunk from the collector, no metrics to /v1/m.
    assert {r.path for r in server.requests} == {settings.path, *AJS_PATHS.values()}, log


@pytest.mark.browser
def test_analytics_js_sends_the_key_the_settings_name_not_the_one_in_the_url(capture):
    server = capture(settings_extra={"apiKey": "wk_from_settings"})
    sdks.send_analytics_js(server.base_url, KEY, TRACK)
    [post] = server.posts()
    assert post.json()["writeKey"] == "wk_from_settings"
    assert post.headers["authorization"] == "Basic " + base64.b64encode(b"wk_from_settings:").decode()


@pytest.mark.browser
def test_analytics_js_waits_out_a_429s_retry_after_when_cors_exposes_it(capture):
    server = capture([(429, {"Retry-After": "1"})])
    ids = sdks.send_analytics_js(server.base_url, KEY, TRACK)
    first, second = server.posts()
    assert second.at - first.at >= 0.95, gaps([first, second])
    assert second.headers["x-retry-count"] == "1" and second.json()["messageId"] == ids[0]
    retry_preflight = [r for r in server.requests if r.method == "OPTIONS"][-1]
    assert retry_preflight.headers["access-control-request-headers"] == "authorization,x-retry-count"


@pytest.mark.browser
def test_analytics_js_cannot_see_retry_after_unless_cors_exposes_it(capture):
    """Retry-After is not a CORS-safelisted response header: without Access-Control-Expose-Headers
    the browser hides it and analytics.js retries on its backoff, well before the 3 s asked."""
    server = capture([(429, {"Retry-After": "3"})], expose_headers=False)
    sdks.send_analytics_js(server.base_url, KEY, TRACK)
    first, second = server.posts()
    assert second.at - first.at < 2.5, gaps([first, second])
    assert second.headers["x-retry-count"] == "1"


@pytest.mark.browser
@pytest.mark.parametrize("refusal", ["401", "no CORS"])
def test_analytics_js_without_its_settings_sends_nothing_but_an_error_metric_to_segment(capture, refusal):
    """A settings answer that is not 2xx, or that the browser may not read (no
    Access-Control-Allow-Origin), ends analytics.js on that page, and it then posts an
    `analytics_js.invoke.error` counter to https://api.segment.io/v1/m (here: to the dead proxy)."""
    server = capture(allow_origin=refusal != "no CORS", settings_status=401 if refusal == "401" else 200)
    with pytest.raises(sdks.SdkDeliveryError) as raised:
        sdks.send_analytics_js(server.base_url, KEY, TRACK, timeout=15)
    assert "did not load" in str(raised.value)
    assert [(r.method, r.path) for r in server.requests] == [("GET", f"/v1/projects/{KEY}/settings")]
    assert "beyond 127.0.0.1: CONNECT api.segment.io:443 HTTP/1.1" in raised.value.details


@pytest.mark.browser
def test_analytics_js_retries_a_503(capture):
    server = capture([(503, {})])
    ids = sdks.send_analytics_js(server.base_url, KEY, TRACK)
    first, second = server.posts()
    assert second.headers["x-retry-count"] == "1" and second.json()["messageId"] == ids[0]
    assert second.at - first.at < 5, gaps([first, second])


@pytest.mark.browser
def test_analytics_js_drops_an_event_answered_400(capture):
    server = capture([(400, {})])
    with pytest.raises(sdks.SdkDeliveryError):
        sdks.send_analytics_js(server.base_url, KEY, TRACK, timeout=10)
    assert len(server.posts()) == 1


BATCHING = {"deliveryStrategy": {"strategy": "batching", "config": {"size": 3, "timeout": 100}}}


@pytest.mark.browser
@pytest.mark.parametrize("where", ["settings", "load options"])
def test_analytics_js_batching_posts_v1_b_with_an_envelope(capture, where):
    """Batching is chosen by the collector's settings or by the site (analytics.load's options)."""
    server = capture(settings_extra=BATCHING if where == "settings" else {})
    load_options = {"integrations": {"Segment.io": BATCHING}} if where == "load options" else None
    ids = sdks.send_analytics_js(server.base_url, KEY, EVENTS[:3], load_options=load_options)
    posts = server.posts()
    assert {p.path for p in posts} == {"/v1/b"}
    assert sorted(i for p in posts for i in batch_ids(p)) == sorted(ids)
    for post in posts:
        body = post.json()
        assert set(body) == {"writeKey", "batch", "sentAt"} and body["writeKey"] == KEY
        assert post.headers["content-type"] == "text/plain" and post.headers["authorization"] == BASIC
        assert all("sentAt" not in event and event["writeKey"] == KEY for event in body["batch"])


# --- the drivers themselves -------------------------------------------------------------------

@pytest.mark.parametrize("send", [
    sdks.send_segment_python, sdks.send_rudder_python,
    pytest.param(sdks.send_analytics_node, marks=pytest.mark.node),
    pytest.param(sdks.send_analytics_js, marks=pytest.mark.browser)], ids=lambda send: send.__name__)
def test_a_driver_raises_within_its_timeout_when_nothing_answers(send):
    dead = socket.socket()  # bound, never listening: every connection refused
    dead.bind(("127.0.0.1", 0))
    try:
        # 1 s for the Python and Node drivers; analytics.js's budget covers loading a browser page too
        timeout = 3 if send is sdks.send_analytics_js else 1
        started = time.monotonic()
        with pytest.raises(sdks.SdkDeliveryError) as raised:
            send(f"http://127.0.0.1:{dead.getsockname()[1]}", KEY, TRACK, timeout=timeout)
        assert time.monotonic() - started < timeout + 5
        assert len(raised.value.message_ids) == 1
    finally:
        dead.close()


def test_a_python_driver_that_gave_up_does_not_hold_the_interpreter_at_exit():
    """The SDK clients register a join with atexit; after a failed send, rudder's consumer sleeps
    in its backoff for minutes, and the interpreter (pytest) waited for it at exit."""
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    code = ("from tests.collector import sdks\n"
            "for send in (sdks.send_rudder_python, sdks.send_segment_python):\n"
            "    try:\n"
            f"        send('http://127.0.0.1:{dead.getsockname()[1]}', 'k', [{{'type': 'track', 'userId': 'u', 'event': 'E'}}],"
            " timeout=1)\n"
            "    except sdks.SdkDeliveryError:\n"
            "        pass\n")
    try:
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", code], cwd=sdks.ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 20
    finally:
        dead.close()
