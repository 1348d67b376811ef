"""The debugger's access rules and what it never shows, against a real collector (its own
process on 127.0.0.1: tests/collector/serving.py) or the real app in-process where the test
needs a configuration the suite's loopback collector cannot have (a token, trusted proxies)."""
import asyncio
import json

import orjson
import pytest

from tests.collector.asgi import call as _call
from tests.collector.serving import basic, request, write_config

pytestmark = pytest.mark.slow


def _app(debugger_settings, host: str = "127.0.0.1", trusted_proxies: tuple = ()):
    from collector.app import App
    from collector.debugger.service import Debugger
    from collector.settings import CollectorLimits, CollectorSettings, Source
    from collector.sinks import Sink

    class Kept(Sink):
        async def put(self, records, attributes=None):
            pass

    settings = CollectorSettings((Source("server", "key-server"),), debugger=debugger_settings,
                                 limits=CollectorLimits(trusted_proxies=trusted_proxies))
    app = App(settings, Kept())
    debugger = Debugger(settings)
    debugger.install(app, (host, 8088))
    return app, debugger


# -- 1. a proxy on the same host ----------------------------------------------------------------

def test_a_configured_token_is_needed_on_loopback_too():
    """nginx on the same host connects from 127.0.0.1 and sends Host: 127.0.0.1:PORT: a token
    that loopback waived would protect nothing."""
    from collector.debugger.settings import DebuggerSettings

    async def run():
        app, debugger = _app(DebuggerSettings(token="t0k3n-abc"), "127.0.0.1")
        status, body = await _call(app, "GET", "/debugger/api/events")
        assert status == 401 and json.loads(body)["code"] == "missing_debugger_token"
        assert (await _call(app, "GET", "/debugger"))[0] == 401
        assert (await _call(app, "GET", "/debugger/api/events", headers={"authorization": "Bearer t0k3n-abc"}))[0] \
            == 200

    asyncio.run(run())


def test_without_a_token_a_forwarded_request_is_refused(collector):
    url = collector.url + "/debugger/api/events"
    assert request(url)[0] == 200
    for header, value in (("X-Forwarded-For", "203.0.113.9"), ("Forwarded", "for=203.0.113.9"),
                          ("X-Real-IP", "203.0.113.9"), ("Via", "1.1 nginx"), ("X-Forwarded-Proto", "https")):
        status, headers, body = request(url, headers={header: value})
        said = json.loads(body)
        assert status == 403 and said["code"] == "proxied_without_token", (header, said)
        assert header.lower() in said["message"] and "debugger.token" in said["message"]
        assert request(collector.url + "/debugger", headers={header: value})[0] == 403


def test_without_a_token_trusted_proxies_close_the_debugger():
    from collector.debugger.settings import DebuggerSettings

    async def run():
        app, _ = _app(DebuggerSettings(), "127.0.0.1", trusted_proxies=("127.0.0.1/32",))
        status, body = await _call(app, "GET", "/debugger/api/events")
        assert status == 403 and "trusted_proxies" in json.loads(body)["message"]
        app, _ = _app(DebuggerSettings(token="t"), "127.0.0.1", trusted_proxies=("127.0.0.1/32",))
        assert (await _call(app, "GET", "/debugger/api/events", headers={"authorization": "Bearer t"}))[0] == 200

    asyncio.run(run())


# -- 2. the write key, in whatever body shape ---------------------------------------------------

def test_no_refused_body_shape_shows_its_write_key(collector):
    """Each body below is refused (400 or 401); its entry's preview, read back through the API,
    holds none of the keys: the ones only a tolerant reading of the body finds, and the ones
    the collector read from the Basic header or ?writeKey= wherever the body repeats them."""
    url = collector.url
    pad = "p" * 9000   # past the 8 KiB read for a preview: the body is not parsed, only scanned
    shapes = [
        ("K-double-1", {}, "", json.dumps(json.dumps({"writeKey": "K-double-1", "type": "track", "event": "E"}))),
        ("K-form-2", {"Content-Type": "application/x-www-form-urlencoded"}, "", "writeKey=K-form-2&type=track"),
        ("K-js-3", {}, "", "{writeKey: 'K-js-3', type: 'track', event: 'E'}"),
        ("K-escaped-4", {}, "", '{"write\\u004bey": "K-escaped-4", "type": "track", "event": "E"}'),
        ("K-escaped-5", {}, "", '{"write\\u004Bey": "K-escaped-5", "type": "track", "properties": {"pad": "%s"}}'
         % pad),
        ("K-case-6", {}, "", '[{"WRITE_KEY": "K-case-6", "type": "track"}]'),
        # a known key (the body is read) pasted into a body refused for its JSON
        ("key-server", {"Authorization": basic("key-server")}, "",
         '{"type": "track", "event": "E", "properties": {"note": "pasted key-server"}'),
        ("K-query-8", {}, "?writeKey=K-query-8",
         json.dumps({"type": "track", "event": "E", "userId": "u", "properties": {"note": "K-query-8 again"}})),
        ("K-truncated-9", {}, "", '{"type": "track", "properties": {"pad": "%s"}, "writeKey": "K-truncated-9"}'
         % ("p" * 8170)),
    ]
    for key, headers, query, body in shapes:
        status, _, answer = request(url + "/v1/track" + query, "POST", body.encode(), headers)
        assert status in (400, 401), (key, status, answer)
    status, _, answer = request(url + "/debugger/api/events?status=refused&limit=100")
    assert status == 200
    found = json.loads(answer)
    assert found["count"] == len(shapes)
    text = answer.decode()
    leaked = [key for key, *_ in shapes if key in text or key.replace("-", "\\u002d") in text]
    assert not leaked, leaked
    assert all(e["payload"] for e in found["events"]), found   # each shown, only without its key


# -- 6. other sites' pages ----------------------------------------------------------------------

def test_requests_from_another_sites_page_are_refused_whatever_the_method(collector):
    """A page elsewhere cannot read the answers (no CORS headers) but could time ?q= searches or
    hold every stream slot with no-cors fetches; browsers name the requester: it is refused."""
    url = collector.url
    host = url[len("http://"):]
    refused = [("GET", "/debugger/api/events?q=secret", {"Sec-Fetch-Site": "cross-site"}),
               ("GET", "/debugger/api/events", {"Sec-Fetch-Site": "same-site"}),
               ("GET", "/debugger/stream", {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}),
               ("GET", "/debugger", {"Sec-Fetch-Site": "cross-site"}),
               ("GET", "/debugger/api/events", {"Origin": "https://evil.example"}),
               ("GET", "/debugger/api/events", {"Origin": "null"}),
               ("POST", "/debugger/api/reset", {"Origin": "https://evil.example"}),
               ("POST", "/debugger/api/reset", {"Sec-Fetch-Site": "cross-site"})]
    for method, path, headers in refused:
        status, answer_headers, body = request(url + path, method, b"" if method == "POST" else None, headers)
        assert status == 403 and json.loads(body)["code"] == "cross_origin", (method, path, headers, status)
    for headers in ({}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"},
                    {"Origin": "http://" + host, "Sec-Fetch-Site": "same-origin"}):
        assert request(url + "/debugger/api/events?q=x", headers=headers)[0] == 200, headers
    assert request(url + "/debugger/api/reset", "POST", b"", {"Origin": "http://" + host})[0] == 200


# -- 7. bad input, failures, and what a JSON answer may become in a browser --------------------

def test_a_limit_int_cannot_read_is_a_400_and_json_answers_are_never_documents(collector):
    url = collector.url
    for limit in ("%C2%B2", "%D9%A3", "1e3", "-1", "0", "9" * 5000):
        status, headers, body = request(f"{url}/debugger/api/events?limit={limit}")
        assert status == 400 and json.loads(body)["code"] == "invalid_limit", (limit, status, body[:200])
    for path, method, headers, expected in (("/debugger/api/events", "GET", {}, 200),
                                            ("/debugger/api/events?status=lost", "GET", {}, 400),
                                            ("/debugger/api/events", "GET", {"Via": "1.1 proxy"}, 403),
                                            ("/debugger/api/reset", "GET", {}, 405),
                                            ("/debugger/nothing", "GET", {}, 404)):
        status, answer_headers, _ = request(url + path, method, None, headers)
        assert status == expected and answer_headers["content-type"] == "application/json", path
        assert answer_headers["x-content-type-options"] == "nosniff", path
        assert answer_headers["content-security-policy"] == "default-src 'none'", path


def test_a_failure_inside_the_debugger_is_a_500_json_answer_without_a_traceback(caplog):
    """The app hands /debugger paths over before its own error handling: the debugger answers its
    own failures. A store whose query fails (the real one, wrapped) stands for any bug."""
    from collector.debugger.settings import DebuggerSettings

    async def run():
        app, debugger = _app(DebuggerSettings(), "127.0.0.1")

        def broken(**filters):
            raise RuntimeError("a bug in the debugger")

        debugger.store.query = broken
        status, body = await _call(app, "GET", "/debugger/api/events")
        said = json.loads(body)
        assert status == 500 and said["code"] == "internal_error" and "in the debugger" not in body.decode()
        assert "Traceback" not in body.decode()
        assert (await _call(app, "GET", "/debugger/api/events", query="status=lost"))[0] == 400   # still answering

    asyncio.run(run())
    assert "a bug in the debugger" in caplog.text


# -- 8. a refused entry's size ------------------------------------------------------------------

def test_a_refused_entrys_bytes_are_the_requests_not_its_previews(collector):
    url, auth = collector.url, {"Authorization": basic("key-server"), "Content-Type": "application/json"}
    broken = b'{"type": "track", "event": "E", "properties": {"pad": "' + b"p" * 20_000   # not JSON: 400
    assert request(url + "/v1/track", "POST", broken, auth)[0] == 400
    wrong = json.dumps({"type": "track", "event": "E", "userId": "u", "properties": {"pad": "q" * 3000}}).encode()
    assert request(url + "/v1/track", "POST", wrong, {"Authorization": basic("no-such-key")})[0] == 401
    found = json.loads(request(url + "/debugger/api/events?status=refused")[2])["events"]
    assert [(e["http_status"], e["bytes"]) for e in found] == [(401, len(wrong)), (400, len(broken))]
    assert len(found[1]["payload"]) <= 1025


# -- 9. a refused request's source, read as the app reads it ------------------------------------

def test_a_refused_requests_source_is_what_the_collector_read(collector):
    """?writeKey= names a source on a beacon path only (collector.requests.key_before_body): on
    /v1/track the collector did not read it, so the refusal is not put under that source."""
    url = collector.url
    event = json.dumps({"type": "track", "event": "E", "userId": "u"}).encode()
    assert request(url + "/v1/track?writeKey=key-server", "POST", event, {"Content-Type": "application/json"})[0] == 401
    assert request(url + "/v1/track", "POST", event, {"Authorization": basic("key-off")})[0] == 403
    found = json.loads(request(url + "/debugger/api/events?status=refused")[2])["events"]
    assert [(e["http_status"], e["source"]) for e in found] == [(403, "off"), (401, "(unknown)")]
    from collector.debugger import fates
    from transforms.warehouse import layout, planner
    assert sorted(fates.PRIMARY.values()) == sorted(layout.PRIMARY_TABLES)
    assert (fates.DEAD_LETTERS, fates.DELIVERIES) == (planner.DEAD_LETTER_TABLE, planner.DELIVERIES_TABLE)
