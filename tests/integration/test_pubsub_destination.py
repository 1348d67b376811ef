"""A Pub/Sub destination on the real emulator: one message per event, the mapped payload as
data, every event once."""
import json
import uuid
from collections import Counter

import pytest
import yaml

from pipeline.main import run
from tests.destinations.test_webhook_delivery import write_events

pytestmark = pytest.mark.integration


def test_events_are_published_once_each_with_the_mapped_payload(tmp_path, pubsub_emulator, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    from google.cloud import pubsub_v1
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    name = uuid.uuid4().hex[:10]
    topic = publisher.topic_path(pubsub_emulator.project, f"forward-{name}")
    subscription = subscriber.subscription_path(pubsub_emulator.project, f"forward-{name}")
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=subscription, topic=topic)
    (tmp_path / "sluice.yaml").write_text(yaml.safe_dump({"destinations": [{
        "name": "audit", "type": "pubsub", "topic": topic, "types": ["track", "identify", "page"],
        "mapping": {"id": {"@path": "$.messageId"}, "user": {"@path": "$.userId"}}}]}))
    path, expected = write_events(tmp_path, "audit")
    summary = run(["--input_files", path, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb",
                   "--config", str(tmp_path / "sluice.yaml")])
    received = []
    while True:
        response = subscriber.pull(subscription=subscription, max_messages=100, timeout=10)
        if not response.received_messages:
            break
        received += [m.message for m in response.received_messages]
        subscriber.acknowledge(subscription=subscription, ack_ids=[m.ack_id for m in response.received_messages])
    subscriber.close()
    assert Counter(json.loads(m.data)["id"] for m in received) == Counter(expected)
    assert {m.attributes["destination"] for m in received} == {"audit"}
    audit = summary["destinations"]["audit"]
    assert (audit["delivered"], audit["failed"], audit["dropped_filter"], audit["dropped_integrations"]) == (45, 0, 5, 1)
    assert summary["conservation"]["holds"]
