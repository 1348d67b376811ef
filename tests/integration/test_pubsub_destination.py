"""A Pub/Sub destination on the real emulator: one message per event, the mapped payload as
data, every event once."""
import json
from collections import Counter

import pytest
import yaml

from pipeline.main import run
from tests.destinations.test_webhook_delivery import write_events

pytestmark = pytest.mark.integration


def test_events_are_published_once_each_with_the_mapped_payload(tmp_path, make_topic):
    forward = make_topic("forward")
    topic = forward.path
    (tmp_path / "sluice.yaml").write_text(yaml.safe_dump({"destinations": [{
        "name": "audit", "type": "pubsub", "topic": topic, "types": ["track", "identify", "page"],
        "mapping": {"id": {"@path": "$.messageId"}, "user": {"@path": "$.userId"}}}]}))
    path, expected = write_events(tmp_path, "audit")
    summary = run(["--input_files", path, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb",
                   "--config", str(tmp_path / "sluice.yaml")])
    received = forward.pull_all()
    assert Counter(json.loads(m.data)["id"] for m in received) == Counter(expected)
    assert {m.attributes["destination"] for m in received} == {"audit"}
    audit = summary["destinations"]["audit"]
    assert (audit["delivered"], audit["failed"], audit["dropped_filter"], audit["dropped_integrations"]) == (45, 0, 5, 1)
    assert summary["conservation"]["holds"]


def test_a_retry_republishes_only_the_messages_that_failed(make_topic):
    """Publish failures the emulator cannot produce, injected by wrapping the real client: the
    second attempt sends only what the first did not get through, so nothing arrives twice."""
    from concurrent.futures import Future

    from transforms.destinations.model import Destination
    from transforms.destinations.senders import PubSubSender
    topic = make_topic("retry")
    sender = PubSubSender(Destination("audit", "pubsub", topic=topic.path)).open()
    real, calls = sender._client.publish, []

    def flaky_publish(path, data, **attributes):
        calls.append(data)
        if len(calls) in (2, 4):  # the second and fourth message of the first attempt fail
            failed = Future()
            failed.set_exception(RuntimeError("injected: unavailable"))
            return failed
        return real(path, data, **attributes)
    sender._client.publish = flaky_publish
    attempt = sender.attempt([json.dumps({"id": i}).encode() for i in range(5)], "batch-1")
    first = attempt()
    assert not first.ok and first.transient and "2 of 5 publishes failed" in first.detail
    assert attempt().ok and len(calls) == 7  # 5, then only the 2 that failed
    sender.close()
    assert sorted(json.loads(m.data)["id"] for m in topic.pull_all()) == [0, 1, 2, 3, 4]
