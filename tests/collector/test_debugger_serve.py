"""The debugger of a real collector (`python -m pipeline serve --warehouse duckdb:///...`, its own
process): events sent show up in /debugger/api/events with the contract result the pipeline
reaches, then the fate the load gave them (stored in which table, dead-lettered with which
error, dropped by which policy, a webhook's failure); refused requests show with their reason
and without the key; the stream tells a page; reset empties it. Access beyond loopback is tested
on the real app in-process (the suite listens on loopback only)."""
import asyncio
import gzip
import json
import re
import socket
import time
from urllib.parse import quote

import orjson
import pytest

from tests.collector.asgi import call
from tests.collector.serving import SOURCES, basic, request
from tests.destinations.receiver import Receiver

pytestmark = pytest.mark.slow

CONTRACT = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "Order Completed", "type": "object",
            "properties": {"properties": {"type": "object", "required": ["total"],
                                          "properties": {"total": {"type": "number"}}}}}


def events(url: str, **filters) -> dict:
    query = "&".join(f"{k}={quote(str(v))}" for k, v in filters.items())
    status, _, body = request(f"{url}/debugger/api/events?{query}")
    assert status == 200, body
    return json.loads(body)


def by_message(url: str) -> dict:
    return {e["message_id"]: e for e in events(url, limit=1000)["events"] if e["message_id"]}


def post(url: str, path: str, body, key: str = "key-server", headers: dict = None) -> int:
    status, _, _ = request(url + path, "POST", json.dumps(body).encode(),
                           {"Content-Type": "application/json", **({"Authorization": basic(key)} if key else {}),
                            **(headers or {})})
    return status


@pytest.fixture
def embedded(start_collector, tmp_path):
    contracts = tmp_path / "contracts" / "track"
    contracts.mkdir(parents=True)
    (contracts / "order_completed.json").write_text(json.dumps(CONTRACT))
    with Receiver(default_status=400) as hook:
        config = tmp_path / "debugged.yaml"
        config.write_text(json.dumps({   # JSON is YAML
            "sources": SOURCES,
            "contracts": {"directory": str(tmp_path / "contracts"), "violations": "block"},
            "transforms": [{"name": "no-pings", "events": ["Internal Ping"], "drop_event": True}],
            "consent": {"warehouse": ["analytics"]},
            "destinations": [{"name": "crm", "type": "webhook", "url": hook.url, "allow_private_network": True,
                              "events": ["Order Completed"], "retry": {"max_attempts": 1}}]}))
        yield start_collector(["--config", str(config), "--warehouse", f"duckdb:///{tmp_path / 'w.duckdb'}"]), hook


def test_each_event_with_its_contract_result_then_its_fate(embedded):
    url, hook = embedded[0].url, embedded[1]
    good = {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "good-1",
            "properties": {"total": 12.5, "note": "<img src=x onerror=alert(1)>"}}
    violating = {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "bad-1",
                 "properties": {"total": "12"}}
    nobody = {"type": "track", "event": "Order Completed", "messageId": "nobody-1", "properties": {"total": 1}}
    ping = {"type": "track", "event": "Internal Ping", "userId": "u1", "messageId": "ping-1"}
    who = {"type": "identify", "userId": "u1", "messageId": "who-1", "traits": {"plan": "pro"}}
    private = {"type": "track", "event": "Private Thing", "userId": "u1", "messageId": "private-1",
               "context": {"consent": {"categoryPreferences": {"analytics": False}}}}
    assert post(url, "/v1/batch", {"batch": [good, violating, nobody, ping, who, private]}) == 200
    assert post(url, "/v1/track", {"type": "track", "event": "Oops", "userId": "u", "writeKey": "not-a-key"},
                key=None) == 401
    assert post(url, "/v1/track", {"event": "Nope", "userId": "u"}, key="key-web",
                headers={"Origin": "https://elsewhere.example"}) == 403

    # at once: the contract result, before any load
    seen = by_message(url)
    assert seen["good-1"]["contract"] == {"planned": True, "violations": [], "result": "passed"}
    assert seen["good-1"]["payload"]["properties"]["note"] == "<img src=x onerror=alert(1)>"   # JSON, as sent
    assert seen["bad-1"]["contract"]["result"] == "blocked"
    assert seen["bad-1"]["contract"]["violations"] == [{
        "contract": "track/order_completed", "pointer": "/properties/total", "keyword": "type",
        "message": "'12' is not of type 'number'", "action": "blocked"}]
    assert seen["ping-1"]["contract"]["planned"] is False and seen["ping-1"]["contract"]["result"] == "allowed"
    assert seen["nobody-1"]["fate"]["status"] == "dead_lettered"   # normalize refuses it: known at once
    assert seen["nobody-1"]["fate"]["error_type"] == "missing_identity"
    assert {e["source"] for e in seen.values()} == {"server"}
    assert seen["good-1"]["http_status"] == 200 and seen["who-1"]["type"] == "identify"

    refused = events(url, status="refused")["events"]
    assert [(e["http_status"], e["source"], e["reason"]["code"]) for e in refused] == [
        (403, "web", "origin_not_allowed"), (401, "(unknown)", "invalid_write_key")]
    assert "not-a-key" not in json.dumps(refused) and '"Oops"' in refused[1]["payload"]
    assert events(url, status="refused", source="web")["count"] == 1

    # then the fate, once the embedded loader has loaded them (a few seconds)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        seen = by_message(url)
        if all(e["fate"]["status"] != "pending" for e in seen.values()):
            break
        time.sleep(0.2)
    fates = {m: e["fate"] for m, e in seen.items()}
    assert fates["good-1"]["status"] == "stored" and fates["good-1"]["table"] == "order_completed"
    crm = fates["good-1"]["destinations"]["crm"]   # the webhook answered 400
    assert crm["status"] == "failed" and "400" in crm["error_message"]
    if crm["http_status"] is not None:   # from _deliveries, where forwarding records its outcomes
        assert (crm["http_status"], crm["attempts"]) == (400, 1) and crm["latency_ms"] >= 0
    assert hook.requests and hook.requests[0].status == 400
    assert fates["who-1"]["status"] == "stored" and fates["who-1"]["table"] == "identifies"
    assert fates["bad-1"]["status"] == "dead_lettered" and fates["bad-1"]["error_type"] == "contract_violation"
    assert "/properties/total" in fates["bad-1"]["error_message"]
    # two policies dropped events in that load: each entry's own is told by its payload, put through them again
    assert fates["ping-1"]["status"] == "dropped" and fates["ping-1"]["policy"] == "filtered:no-pings"
    assert fates["private-1"]["status"] == "dropped" and fates["private-1"]["policy"] == "consent"
    assert [e["message_id"] for e in events(url, status="stored")["events"]] == ["who-1", "good-1"]

    # sent again: the warehouse already holds it, so this send is the duplicate drop of a stored event
    assert post(url, "/v1/track", good) == 200
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        again = events(url, q="onerror", limit=1)["events"][0]
        if again["fate"]["status"] != "pending":
            break
        time.sleep(0.2)
    assert again["id"] > seen["good-1"]["id"] and again["fate"]["status"] == "stored"
    assert again["fate"]["policy"] == "duplicate" and again["fate"]["table"] == "order_completed"

    status, _, body = request(url + "/debugger/api/reset", "POST", b"")
    assert status == 200 and json.loads(body) == {"reset": True}
    assert events(url)["count"] == 0 and events(url)["sampling"]["entries"] == 0


def test_the_stream_tells_a_page_of_each_entry(collector):
    """GET /debugger/stream (server-sent events), read off a raw socket."""
    host, port = collector.url[len("http://"):].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"GET /debugger/stream HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        received = b""
        while b"event: hello" not in received:
            received += sock.recv(65536)
        assert b"text/event-stream" in received.split(b"\r\n\r\n")[0]
        assert post(collector.url, "/v1/track", {"type": "track", "event": "Streamed", "userId": "u",
                                                 "messageId": "s-1"}) == 200
        entry = None
        while entry is None:   # the body is chunked: a message is whole once its blank line came
            received += sock.recv(65536)
            entry = re.search(rb"event: entry\ndata: (.*?)\n\n", received)
    data = json.loads(entry.group(1))
    assert data["message_id"] == "s-1" and data["event"] == "Streamed" and data["fate"]["status"] == "pending"


def test_under_load_the_store_keeps_its_bounds_and_counts_the_rest(collector):
    """20,000 events as fast as one sender goes: at most 500 entries for the source, whatever the
    rate turned out to be; every event counted as received, the ones past the rate as skipped."""
    for number in range(200):
        batch = [{"type": "track", "event": "Load", "userId": "u", "messageId": f"load-{number}-{i}",
                  "properties": {"pad": "x" * 200}} for i in range(100)]
        assert post(collector.url, "/v1/batch", {"batch": batch}) == 200
    answer = events(collector.url, limit=1000)
    server = answer["sampling"]["sources"]["server"]
    assert server["received"] == 20_000
    assert server["entries"] == len(answer["events"]) == min(500, 20_000 - server["skipped"])
    assert answer["sampling"]["payload_bytes"] == sum(e["bytes"] for e in answer["events"]) <= 500 * 16384
    ids = [e["id"] for e in answer["events"]]
    assert ids == sorted(ids, reverse=True)   # newest first
    status, _, metrics = request(collector.url + "/metrics")
    assert status == 200
    assert 'sluice_debugger_events_received_total{source="server"} 20000.0' in metrics.decode()
    assert f'sluice_debugger_events_skipped_total{{source="server"}} {server["skipped"]}.0' in metrics.decode()
    assert 'sluice_debugger_entries{source="server"} 500.0' in metrics.decode()


def test_the_api_refuses_a_host_that_is_not_loopback_and_bad_filters(collector):
    status, _, body = request(collector.url + "/debugger/api/events", headers={"Host": "rebound.example:80"})
    assert status == 403 and json.loads(body)["code"] == "host_not_loopback"
    status, _, body = request(collector.url + "/debugger/api/reset", "POST", b"",
                              headers={"Origin": "https://evil.example"})
    assert status == 403 and json.loads(body)["code"] == "cross_origin"
    assert request(collector.url + "/debugger/api/events?limit=0")[0] == 400
    assert request(collector.url + "/debugger/api/events?status=lost")[0] == 400
    assert request(collector.url + "/debugger/api/reset")[0] == 405


# -- beyond loopback: the real app, in-process --------------------------------------------------

def _call(app, method: str, path: str, **kwargs):
    """A request from beyond loopback: a public peer, a public Host."""
    return call(app, method, path, host="collector.example", client="203.0.113.9", server="10.0.0.2",
                **kwargs)


def _app(debugger_settings, host: str):
    from collector.app import App
    from collector.debugger.service import Debugger
    from collector.settings import CollectorSettings, Source
    from collector.sinks import Sink

    class Kept(Sink):   # what a durable sink is told, kept in memory (nothing else to observe)
        def __init__(self):
            self.records = []

        async def put(self, records, attributes=None):
            self.records += records

    settings = CollectorSettings((Source("server", "key-server"),), debugger=debugger_settings)
    app = App(settings, Kept())
    debugger = Debugger(settings)
    debugger.install(app, (host, 8088))
    return app, debugger


def test_beyond_loopback_the_token_is_needed():
    from collector.debugger.settings import DebuggerSettings

    async def run():
        app, debugger = _app(DebuggerSettings(token="t0k3n-abc"), "0.0.0.0")
        assert debugger.on and debugger.token == "t0k3n-abc"
        event = orjson.dumps({"type": "track", "event": "E", "userId": "u", "messageId": "tok-1"})
        assert (await _call(app, "POST", "/v1/track", headers={"authorization": basic("key-server")},
                            body=event))[0] == 200
        await asyncio.sleep(0)   # the inspection runs just after the answer
        status, body = await _call(app, "GET", "/debugger/api/events")
        assert status == 401 and json.loads(body)["code"] == "missing_debugger_token"
        status, body = await _call(app, "GET", "/debugger/api/events", headers={"authorization": "Bearer nope"})
        assert status == 401 and json.loads(body)["code"] == "invalid_debugger_token"
        status, body = await _call(app, "GET", "/debugger/api/events", headers={"authorization": "Bearer t0k3n-abc"})
        assert status == 200 and [e["message_id"] for e in json.loads(body)["events"]] == ["tok-1"]
        status, body = await _call(app, "GET", "/debugger/api/events", query="token=t0k3n-abc&source=server")
        assert status == 200 and json.loads(body)["count"] == 1
        assert (await _call(app, "POST", "/debugger/api/reset", query="token=t0k3n-abc"))[0] == 200

        app, debugger = _app(DebuggerSettings(), "0.0.0.0")   # no token: off, nothing recorded
        assert not debugger.on and app.sink.__class__.__name__ == "Kept"
        assert (await _call(app, "POST", "/v1/track", headers={"authorization": basic("key-server")},
                            body=event))[0] == 200
        status, body = await _call(app, "GET", "/debugger/api/events", headers={"authorization": "Bearer x"})
        assert status == 403 and "debugger.token is not set" in json.loads(body)["message"]
        assert debugger.store.stats()["entries"] == 0

    asyncio.run(run())



def test_a_refused_requests_preview_holds_no_key_whatever_its_size():
    from collector.debugger.settings import DebuggerSettings

    async def run():
        app, debugger = _app(DebuggerSettings(), "127.0.0.1")
        small = orjson.dumps({"writeKey": "wrong-key-1", "type": "track", "event": "E", "userId": "u"})
        large = orjson.dumps({"writeKey": "wrong-key-2", "type": "track", "event": "E", "userId": "u",
                              "properties": {"pad": "p" * 20_000}, "writeKeyAgain": "x"})
        cut = orjson.dumps({"type": "track", "properties": {"pad": "p" * 8180}, "writeKey": "wrong-key-3"})
        for body in (small, large, cut):
            assert (await _call(app, "POST", "/v1/track", body=body))[0] == 401
        kept = debugger.store.query(source="(unknown)")
        assert len(kept) == 3 and all(e.reason["code"] == "invalid_write_key" for e in kept)
        assert not any("wrong-key" in (e.payload or "") for e in kept)
        assert '"event":"E"' in kept[2].payload and kept[1].payload.endswith("…")

    asyncio.run(run())


def test_with_sink_a_contracts_directory_that_cannot_be_read_leaves_events_unchecked(start_collector, tmp_path):
    """The pipeline job is the one that must refuse broken contracts; the collector keeps collecting."""
    config = tmp_path / "broken.yaml"
    config.write_text(json.dumps({"sources": SOURCES, "contracts": {"directory": str(tmp_path / "missing")}}))
    collector = start_collector(["--config", str(config), "--sink", str(tmp_path / "spool")])
    assert post(collector.url, "/v1/track", {"type": "track", "event": "E", "userId": "u", "messageId": "u-1"}) == 200
    assert by_message(collector.url)["u-1"]["contract"] == {"planned": None, "violations": [], "result": "unchecked"}
    assert "events are not checked against contracts" in collector.log()


def test_each_kind_of_refusal_is_an_entry_with_its_reason(collector):
    """400, 403, 413 and 429 as well as a wrong key's 401 (above): each in the list with the code
    and message the collector answered, under the source its key names, and never the key."""
    url, track = collector.url, {"type": "track", "event": "Refused", "userId": "u"}
    answers = [request(url + "/v1/track", "POST", b'{"type": "track", "event": ',
                       {"Authorization": basic("key-server"), "Content-Type": "application/json"})]
    answers.append(request(url + "/v1/track", "POST", json.dumps(track).encode(), {"Authorization": basic("key-off")}))
    # gzip inflating past 500 KB: sent whole and read (a 600 KB body is refused by its Content-Length
    # while the client is still sending it, a broken pipe for urllib)
    answers.append(request(url + "/v1/track", "POST",
                           gzip.compress(json.dumps({**track, "properties": {"pad": "x" * 600_000}}).encode()),
                           {"Authorization": basic("key-server"), "Content-Encoding": "gzip"}))
    assert post(url, "/v1/batch", {"batch": [track] * 6}, key="key-tight") == 200   # the burst of 5, and one owed
    answers.append(request(url + "/v1/track", "POST", json.dumps(track).encode(),
                           {"Authorization": basic("key-tight")}))
    said = [(status, json.loads(body)) for status, _, body in answers]
    assert [(status, body["code"]) for status, body in said] == [
        (400, "malformed_json"), (403, "source_disabled"), (413, "request_too_large"), (429, "rate_limited")]

    refused = events(url, status="refused")["events"][::-1]   # oldest first, as sent
    assert [(e["http_status"], e["source"], e["reason"]["code"], e["reason"]["message"], e["fate"]["status"])
            for e in refused] == [(status, source, body["code"], body["message"], "refused")
                                  for (status, body), source in zip(said, ("server", "off", "server", "tight"))]
    assert all(e["reason"]["path"] == "/v1/track" for e in refused)
    assert '"event":"Refused"' in refused[2]["payload"].replace(" ", "") and len(refused[2]["payload"]) <= 1025
    assert "key-" not in json.dumps(refused)
    assert [e["reason"]["code"] for e in events(url, status="refused", source="tight")["events"]] == ["rate_limited"]
