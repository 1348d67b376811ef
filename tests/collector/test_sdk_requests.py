"""Every request the real SDKs send (captured on 127.0.0.1 by tests/collector/capture.py, exactly
as it arrived) is accepted by collector.requests.handle, whole: every event is in the record,
with its own messageId, the source's name, the collector's receivedAt and no write key."""
import json
import urllib.parse
from datetime import datetime, timezone

import pytest

from collector.requests import Request, handle
from collector.settings import CollectorSettings, Source
from tests.collector import sdks
from tests.collector.capture import CaptureServer

KEY = "wk_test_Abc123"
SETTINGS = CollectorSettings((Source("web", KEY),))
NOW = datetime(2026, 12, 2, 22, 0, 0, 123000, tzinfo=timezone.utc)
EVENTS = [
    {"type": "track", "userId": "u1", "event": "Order Completed", "properties": {"revenue": 12.5}},
    {"type": "identify", "userId": "u1", "traits": {"plan": "pro", "email": "a@example.com"}},
    {"type": "page", "userId": "u1", "name": "Home", "properties": {"path": "/"}},
    {"type": "screen", "userId": "u1", "name": "Settings"},
    {"type": "group", "userId": "u1", "groupId": "g1", "traits": {"name": "Acme"}},
    {"type": "alias", "userId": "u1", "previousId": "anon-1"},
]


@pytest.fixture
def server():
    with CaptureServer() as capture:
        yield capture


def accepted_ids(server, expected_posts=None) -> list:
    """Each captured POST through handle(); the messageIds of the records, in order."""
    posts = server.posts()
    if expected_posts is not None:
        assert len(posts) == expected_posts
    ids = []
    for post in posts:
        query = urllib.parse.urlencode(post.query, doseq=True)
        request = Request(post.method, post.path, query, dict(post.headers), post.raw, "127.0.0.1")
        accepted = handle(request, SETTINGS, NOW)
        assert accepted.source.name == "web"
        assert KEY.encode() not in accepted.record and b"writeKey" not in accepted.record
        record = json.loads(accepted.record)
        assert record["source"] == "web" and record["receivedAt"] == "2026-12-02T22:00:00.123Z"
        assert accepted.events == len(record["batch"]) == len(post.events())
        for sent, kept in zip(post.events(), record["batch"]):
            assert kept["messageId"] == sent["messageId"] and kept["type"] == sent["type"]
            assert kept["receivedAt"] == "2026-12-02T22:00:00.123Z"
            assert kept.get("context", record.get("context", {}))["ip"] == "127.0.0.1"
        ids += [event["messageId"] for event in record["batch"]]
    return ids


@pytest.mark.parametrize("gzip", [False, True])
def test_segment_python(server, gzip):
    ids = sdks.send_segment_python(server.base_url, KEY, EVENTS, gzip=gzip)
    assert accepted_ids(server, 1) == ids


@pytest.mark.parametrize("gzip", [True, False])
def test_rudder_python(server, gzip):
    ids = sdks.send_rudder_python(server.base_url, KEY, EVENTS, gzip=gzip)
    assert accepted_ids(server, 1) == ids


@pytest.mark.node
def test_analytics_node(server):
    if not sdks.node_available():
        pytest.skip("node_modules/@segment/analytics-node is not installed (make test installs it)")
    ids = sdks.send_analytics_node(server.base_url, KEY, EVENTS)
    assert accepted_ids(server, 1) == ids


@pytest.mark.browser
def test_analytics_js(server):
    if not sdks.chromium_available():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    ids = sdks.send_analytics_js(server.base_url, KEY, EVENTS)
    assert sorted(accepted_ids(server, len(EVENTS))) == sorted(ids)


@pytest.mark.browser
def test_analytics_js_batching(server):
    if not sdks.chromium_available():
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    server.settings_extra = {"deliveryStrategy": {"strategy": "batching", "config": {"size": 3, "timeout": 100}}}
    ids = sdks.send_analytics_js(server.base_url, KEY, EVENTS[:3])
    assert {p.path for p in server.posts()} == {"/v1/b"}
    assert sorted(accepted_ids(server)) == sorted(ids)
