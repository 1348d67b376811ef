"""CORS on the wire, against a real collector: what a browser's preflight is answered, and that
a source's allowed_origins hold for the requests a page can send without a preflight (a
sendBeacon, a text/plain POST with the key in the body), which reach the collector whatever the
CORS answers say. tests/collector/test_browser_sdks.py has the same seen from chromium."""
import json

from tests.collector.serving import request, spool_lines

RUDDERSTACK_HEADERS = "anonymousid,authorization,content-type,rsa-retry-attempt,rsa-since-last-attempt,sentat"


def test_a_preflight_allows_the_headers_it_asks_for(collector):
    """The RudderStack JS SDK sends AnonymousId, SentAt and Rsa-* headers: a preflight refusing
    any of them blocked every event it sent from a browser."""
    status, headers, _ = request(collector.url + "/v1/track", "OPTIONS", headers={
        "Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": RUDDERSTACK_HEADERS})
    assert status == 204 and headers["access-control-allow-headers"] == RUDDERSTACK_HEADERS
    assert "Access-Control-Request-Headers" in headers["vary"]
    status, headers, _ = request(collector.url + "/v1/track", "OPTIONS", headers={
        "Origin": "https://shop.example.com", "Access-Control-Request-Method": "POST"})
    assert status == 204 and "Authorization" in headers["access-control-allow-headers"]


def test_requests_without_a_preflight_from_another_origin_are_refused_and_not_kept(collector):
    """`web` allows only https://shop.example.com. A sendBeacon (key in the query) or a text/plain
    POST (key in the body) needs no preflight: the browser sends it and only hides the answer, so
    the collector itself must refuse it."""
    event = {"type": "track", "event": "Order Completed", "userId": "u1"}
    beacon = json.dumps({"batch": [dict(event, messageId="beacon-1")]}).encode()
    plain = json.dumps(dict(event, writeKey="key-web", messageId="plain-1")).encode()
    for origin in ("https://evil.example", "http://shop.example.com", "https://shop.example.com:8443"):
        status, headers, body = request(collector.url + "/beacon/v1/batch?writeKey=key-web", "POST", beacon,
                                        {"Origin": origin, "Content-Type": "text/plain;charset=UTF-8"})
        assert (status, json.loads(body)["code"]) == (403, "origin_not_allowed")
        # Readable by the page (its own origin echoed), so an SDK sees a 403 and drops the event
        # instead of retrying what it takes for a network failure.
        assert headers["access-control-allow-origin"] == origin
        status, _, body = request(collector.url + "/v1/track", "POST", plain,
                                  {"Origin": origin, "Content-Type": "text/plain"})
        assert (status, json.loads(body)["code"]) == (403, "origin_not_allowed")
    status, headers, _ = request(collector.url + "/beacon/v1/batch?writeKey=key-web", "POST", beacon,
                                 {"Origin": "https://shop.example.com", "Content-Type": "text/plain;charset=UTF-8"})
    assert status == 200 and headers["access-control-allow-origin"] == "https://shop.example.com"
    assert collector.stop() == 0
    assert [e["messageId"] for r in spool_lines(collector.spool) for e in r["batch"]] == ["beacon-1"]
