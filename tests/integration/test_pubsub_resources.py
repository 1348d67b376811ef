"""The Pub/Sub resources a run names, against the real Pub/Sub emulator: a missing or misspelt
subscription or topic is one line and exit 2 at launch, before any graph is built, and a
subscription deleted while a streaming run reads it ends the run with exit 3 and the reason,
not an idle process that prints "conservation holds" and exit 0 on Ctrl-C."""
import json
import logging

import pytest

from pipeline import sources
from pipeline.errors import UsageError
from tests.conftest import SAMPLE
from tests.integration.test_streaming_pubsub import start, wait_for_summary
from tests.unit.test_cli import sluice_process

pytestmark = pytest.mark.integration


def test_a_missing_or_misspelt_subscription_or_topic_is_one_line_and_exit_2(tmp_path, pubsub_emulator, make_topic):
    events = make_topic("events")
    project = f"projects/{pubsub_emulator.project}"
    misspelt = events.subscription[:-1] + ("x" if not events.subscription.endswith("x") else "y")
    cases = [  # (arguments, the one line expected)
        (["--input_subscription", f"{project}/subscriptions/nosuch"],
         f"--input_subscription {project}/subscriptions/nosuch: no such subscription"),
        (["--input_subscription", misspelt],
         f"--input_subscription {misspelt}: no such subscription (did you mean {events.subscription}?)"),
        (["--input_topic", events.path + "s"], f"--input_topic {events.path}s: no such topic (did you mean "
                                               f"{events.path}?)"),
        (["--input_files", str(SAMPLE), "--dead_letter_topic", f"{project}/topics/nosuch"],
         f"--dead_letter_topic {project}/topics/nosuch: no such topic"),
    ]
    for args, expected in cases:
        result = sluice_process(*args, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb",
                                env={"PUBSUB_EMULATOR_HOST": pubsub_emulator.host})
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [f"sluice: error: {expected}"], result.stderr
    assert not (tmp_path / "w.duckdb").exists()  # refused before the warehouse was opened


class _Unauthorized:
    """The real SubscriberClient, whose get is refused as Pub/Sub refuses an account without
    pubsub.subscriptions.get (the emulator has no IAM, so it cannot refuse anything)."""
    real = None  # the class it wraps, kept before the test puts this one in its place

    def __init__(self):
        self.client = self.real()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.client.close()

    def get_subscription(self, **kwargs):
        from google.api_core import exceptions
        raise exceptions.PermissionDenied("User not authorized to perform this action.")


def test_permission_denied_is_not_missing_it_is_said_and_the_run_goes_on(make_topic, monkeypatch, caplog):
    from google.cloud import pubsub_v1
    events = make_topic("events")
    sources.check_exists("input_subscription", events.subscription)  # the real client finds it
    with pytest.raises(UsageError, match="no such subscription"):
        sources.check_exists("input_subscription", events.subscription + "-gone")
    monkeypatch.setattr(_Unauthorized, "real", pubsub_v1.SubscriberClient)
    monkeypatch.setattr(pubsub_v1, "SubscriberClient", _Unauthorized)
    with caplog.at_level(logging.WARNING, logger="pipeline.sources"):
        sources.check_exists("input_subscription", events.subscription + "-gone")  # no UsageError
    assert [r.getMessage() for r in caplog.records] == [
        f"--input_subscription {events.subscription}-gone: cannot check that the subscription exists "
        "(permission denied: User not authorized to perform this action.); going on"]


@pytest.mark.slow
def test_a_subscription_deleted_mid_run_ends_the_run_with_exit_3_and_the_reason(tmp_path, pubsub_emulator,
                                                                                make_topic):
    events = make_topic("events")
    process = start(tmp_path, pubsub_emulator, events.subscription, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb")
    try:
        for i in range(3):
            event = {"type": "track", "event": "E", "userId": "u1", "messageId": f"m{i}"}
            events.publisher.publish(events.path, json.dumps(event).encode()).result(timeout=30)
        wait_for_summary(tmp_path, process, lambda s: s["stored"] == 3)
        events.subscriber.delete_subscription(subscription=events.subscription)
        out, err = process.communicate(timeout=120)  # a hang guard: it ends on its own, in seconds
    finally:
        process.kill()
    assert process.returncode == 3, err
    assert err.decode().splitlines()[-1] == ("sluice: error: the run failed and stopped: NotFound: "
                                             "404 Subscription does not exist")
    assert "conservation holds" not in out.decode()
    summary = json.loads((tmp_path / "s.json").read_text())  # what it did before: kept for whoever looks
    assert (summary["events"], summary["stored"]) == (3, 3)
