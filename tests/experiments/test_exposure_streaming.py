"""Exposures in a streaming run: the real Pub/Sub emulator, `python -m pipeline --input_subscription`
on the local streaming runner, into the BigQuery emulator (insertAll, the streaming write path).
A late-arriving exposure (a mobile SDK's queue sent hours after the user saw the variation) lands
with its own time, not the time it arrived; a redelivered exposure is one row; an invalid one is
a dead letter; nothing is left in flight and the final summary accounts for every event."""
import json
from datetime import datetime, timedelta, timezone

import pytest

from tests.integration.test_bigquery_warehouse import query
from tests.integration.test_streaming_pubsub import start, stop, subscription, wait_for_summary  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_exposures_stream_into_bigquery_late_ones_with_their_own_time(tmp_path, pubsub_emulator, subscription,
                                                                     bigquery_emulator, bigquery_client,
                                                                     dataset_name):
    publisher, topic, path = subscription
    now = datetime.now(timezone.utc)
    seen = now - timedelta(hours=6)
    exposures = [{"type": "track", "event": "Experiment Viewed", "userId": f"u{i}", "messageId": f"e{i}",
                  "properties": {"experimentId": "onboarding", "variationId": i % 2}} for i in range(8)]
    # the SDK stamped it when the user saw the variation, and sent it six hours later (Segment's
    # clock-skew rule keeps that gap: timestamp = receivedAt - (sentAt - originalTimestamp))
    late = {"type": "track", "event": "Experiment Viewed", "userId": "u-late", "messageId": "late",
            "originalTimestamp": iso(seen), "sentAt": iso(now),
            "properties": {"experimentId": "onboarding", "variationId": 1}}
    invalid = {"type": "track", "event": "Experiment Viewed", "userId": "u-bad", "messageId": "bad",
               "properties": {"variationId": 1}}
    process = start(tmp_path, pubsub_emulator, path, "--warehouse",
                    f"bigquery://{bigquery_emulator.project}/{dataset_name}",
                    "--bigquery_endpoint", bigquery_emulator.endpoint,
                    config="experiments: {}\n")  # the section present: an invalid exposure is a dead letter
    for event in exposures + [late, invalid, exposures[0]]:  # e0 redelivered
        publisher.publish(topic, json.dumps(event).encode()).result(timeout=30)
    summary = wait_for_summary(tmp_path, process, lambda s: s["events"] >= 11 and s["conservation"]["in_flight"] == 0)
    _, code, _, err = stop(process)
    assert code == 0, err
    final = json.loads((tmp_path / "s.json").read_text())
    assert (final["stored"], final["dead_lettered"], final["dropped"]) == (9, {"invalid_exposure": 1},
                                                                          {"duplicate": 1}), summary
    found = query(bigquery_client, f"SELECT message_id, unit_id, variation_id, timestamp, loaded_at "
                                   f"FROM `{dataset_name}.experiment_exposures` ORDER BY message_id")
    assert [(r["message_id"], r["unit_id"], r["variation_id"]) for r in found] == (
        [(f"e{i}", f"u{i}", str(i % 2)) for i in range(8)] + [("late", "u-late", "1")])
    late_row = found[-1]
    # its own time: within the publish delay of when it was seen, hours before it was loaded
    assert abs(late_row["timestamp"] - seen) < timedelta(minutes=2)
    assert late_row["loaded_at"] - late_row["timestamp"] > timedelta(hours=5)
    letters = query(bigquery_client, f"SELECT message_id, error_type FROM `{dataset_name}._dead_letters`")
    assert letters == [{"message_id": "bad", "error_type": "invalid_exposure"}]
