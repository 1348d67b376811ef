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
