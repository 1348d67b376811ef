"""Streaming end to end: the real Pub/Sub emulator, `python -m pipeline --input_subscription`
on the local streaming runner, into DuckDB and into the BigQuery emulator; stopped with
SIGTERM, which must flush, exit within seconds and leave every event accounted for."""
import json
import os
from collections import Counter
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import duckdb
import pytest

from tests.conftest import ROOT, rows
from tests.integration.test_bigquery_warehouse import query
from tests.integration.test_users_rule import IDENTIFIES, USERS, USERS_SQL

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GOOD = [{"type": "track", "event": "Order Completed", "userId": "u1", "messageId": f"m{i}",
         "properties": {"total": i}} for i in range(1, 51)]  # several pulls: several bundles
MESSAGES = ([(json.dumps(e).encode(), {"origin": "web"} if e["messageId"] == "m2" else {}) for e in GOOD]
            + [(json.dumps(GOOD[0]).encode(), {"redelivered": "yes"}),          # the same messageId again
               (b"not json", {"origin": "test"}),
               (json.dumps({"batch": [{"type": "identify", "userId": "u2", "messageId": "b1", "traits": {"plan": "pro"}},
                                      {"type": "page", "userId": "u2", "messageId": "b2", "name": "Home"}]}).encode(), {}),
               (json.dumps({"type": "track", "event": "X", "messageId": "anon"}).encode(), {})]
            + [(json.dumps(e).encode(), {}) for e in IDENTIFIES])  # the users rule, streaming
EXPECTED = {"events": 60, "stored": 57, "dead_lettered": {"malformed_json": 1, "missing_identity": 1},
            "dropped": {"duplicate": 1}}


@pytest.fixture
def subscription(make_topic):
    """(publisher, topic, subscription) the pipeline reads."""
    events = make_topic("events")
    return events.publisher, events.path, events.subscription


@pytest.fixture
def dead_letter_topic(make_topic):
    """(topic, pull): a dead-letter topic with a subscription; pull() returns its messages."""
    letters = make_topic("dead-letters")
    return letters.path, letters.pull_all


def start(tmp_path, pubsub_emulator, subscription_path, *warehouse, source_option="--input_subscription",
          config: str = ""):
    (tmp_path / "sluice.yaml").write_text("streaming:\n  max_buffering_seconds: 1\n" + config)
    env = {**os.environ, "PUBSUB_EMULATOR_HOST": pubsub_emulator.host}
    return subprocess.Popen([sys.executable, "-m", "pipeline", source_option, subscription_path,
                             "--config", str(tmp_path / "sluice.yaml"), "--summary_path", str(tmp_path / "s.json"),
                             *warehouse], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_summary(tmp_path, process, done, timeout=120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        try:
            summary = json.loads((tmp_path / "s.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            summary = None
        if summary and done(summary):
            return summary
        time.sleep(0.5)
    process.kill()
    raise AssertionError(f"the run did not get there in {timeout} s: {process.communicate()}")


def stop(process, within=20.0) -> tuple:
    began = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=within + 10)
    return time.monotonic() - began, process.returncode, out.decode(), err.decode()


def publish(publisher, topic):
    for data, attributes in MESSAGES:
        publisher.publish(topic, data, **attributes).result(timeout=30)


def accounted(summary) -> bool:
    """A live summary with every event read and none in flight (mid-run it never says whether
    conservation holds: only the run's end does)."""
    assert "holds" not in summary["conservation"], summary
    return summary["events"] >= EXPECTED["events"] and summary["conservation"]["in_flight"] == 0


def test_pubsub_to_duckdb_stops_cleanly_with_everything_accounted_for(tmp_path, pubsub_emulator, subscription,
                                                                     dead_letter_topic):
    publisher, topic, path = subscription
    letters_topic, pull_letters = dead_letter_topic
    process = start(tmp_path, pubsub_emulator, path, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb",
                    "--dead_letter_topic", letters_topic)
    publish(publisher, topic)
    wait_for_summary(tmp_path, process, accounted)
    took, code, out, err = stop(process)
    assert code == 0, err
    assert took < 15, f"stopping took {took:.1f} s"
    final = json.loads((tmp_path / "s.json").read_text())
    assert {k: final[k] for k in EXPECTED} == EXPECTED and "conservation holds" in out
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:  # complete on its own
        tracks = rows(conn, "SELECT message_id, received_at, _metadata FROM tracks ORDER BY 1")
        letters = rows(conn, "SELECT error_type, attributes, source FROM _dead_letters ORDER BY 1")
        users = rows(conn, USERS_SQL.format("users"))
    # the same users as the batch runs of test_users_rule (u2 is MESSAGES' own identify)
    assert final["tables"]["users"] == 5 and [u for u in users if u["id"] != "u2"] == USERS
    assert sorted(t["message_id"] for t in tracks) == sorted(f"m{i}" for i in range(1, 51))
    today = datetime.now(timezone.utc).date()
    assert {t["received_at"].astimezone(timezone.utc).date() for t in tracks} == {today}  # publish time
    assert json.loads(letters[0]["attributes"]) == {"origin": "test"}
    assert letters[0]["source"] == f"pubsub:{path}"
    metadata = {t["message_id"]: t["_metadata"] and json.loads(t["_metadata"]) for t in tracks}
    assert metadata["m2"] == {"attributes": {"origin": "web"}} and metadata["m1"] is None
    published = {m.attributes["error_type"]: m for m in pull_letters()}
    assert sorted(published) == ["malformed_json", "missing_identity"]
    assert published["malformed_json"].data == b"not json"
    assert json.loads(published["malformed_json"].attributes["attributes"]) == {"origin": "test"}
    assert json.loads(published["missing_identity"].data) == {"type": "track", "event": "X", "messageId": "anon"}
    assert {k: published["missing_identity"].attributes[k] for k in ("error_stage", "source")} == \
        {"error_stage": "normalize", "source": f"pubsub:{path}"}
    assert final["published"] == {"dead_letters": 2}


def test_pubsub_to_bigquery_rows_arrive_while_it_runs(tmp_path, pubsub_emulator, subscription, bigquery_emulator,
                                                     bigquery_client, dataset_name):
    publisher, topic, path = subscription
    process = start(tmp_path, pubsub_emulator, path, "--warehouse",
                    f"bigquery://{bigquery_emulator.project}/{dataset_name}",
                    "--bigquery_endpoint", bigquery_emulator.endpoint)
    publish(publisher, topic)
    wait_for_summary(tmp_path, process, accounted)
    live = query(bigquery_client, f"SELECT count(*) AS n FROM `{dataset_name}.tracks`")[0]["n"]
    took, code, out, err = stop(process)
    assert code == 0, err
    assert live == 50 and took < 15
    final = json.loads((tmp_path / "s.json").read_text())
    assert {k: final[k] for k in EXPECTED} == EXPECTED
    assert final["api_calls"].get("tabledata.insertAll", 0) > 0 and "jobs.load" not in final["api_calls"]
    assert "BigQuery API calls" in out and "tabledata.insertAll" in out
    # the same users as the batch runs of test_users_rule (u2 is MESSAGES' own identify)
    assert final["tables"]["users"] == 5
    users = query(bigquery_client, USERS_SQL.format(f"`{dataset_name}.users_view`"))
    assert [u for u in users if u["id"] != "u2"] == USERS


def test_a_topic_is_read_through_a_temporary_subscription(tmp_path, pubsub_emulator, subscription):
    publisher, topic, _ = subscription
    process = start(tmp_path, pubsub_emulator, topic, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb",
                    source_option="--input_topic")
    # A topic delivers only what is published after the subscription exists: wait for it.
    deadline = time.monotonic() + 60
    while len(list(publisher.list_topic_subscriptions(topic=topic))) < 2:
        assert time.monotonic() < deadline and process.poll() is None, "no temporary subscription appeared"
        time.sleep(0.2)
    publish(publisher, topic)
    wait_for_summary(tmp_path, process, accounted)
    _, code, _, err = stop(process)
    assert code == 0, err
    final = json.loads((tmp_path / "s.json").read_text())
    assert {k: final[k] for k in EXPECTED} == EXPECTED


def test_streaming_forwards_each_event_once_to_a_webhook_through_failures(tmp_path, pubsub_emulator, subscription):
    from tests.destinations.receiver import Receiver
    publisher, topic, path = subscription
    with Receiver([(503, {}), (429, {"Retry-After": "1"})]) as receiver:
        destination = (f"destinations:\n  - {{name: crm, type: webhook, url: '{receiver.url}', "
                       "allow_private_network: true, batch: {max_events: 4},"
                       " retry: {initial_backoff_seconds: 0.05}, mapping: {id: {'@path': '$.messageId'}}}\n")
        process = start(tmp_path, pubsub_emulator, path, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb",
                        config=destination)
        publish(publisher, topic)
        summary = wait_for_summary(tmp_path, process, lambda s: accounted(s) and s["destinations"].get(
            "crm", {}).get("delivered", 0) >= 57)
        _, code, _, err = stop(process)
    assert code == 0, err
    delivered = Counter(p["id"] for p in receiver.delivered_payloads())
    # each once (the users rule's identifies too); the dupe is not
    assert delivered == Counter([f"m{i}" for i in range(1, 51)] + ["b1", "b2"] + [e["messageId"] for e in IDENTIFIES])
    assert all(len(json.loads(r.body)["batch"]) <= 4 for r in receiver.requests)
    crm = summary["destinations"]["crm"]
    assert (crm["delivered"], crm["failed"], crm["retried"]) == (57, 0, 2)
    # each batch is one `_deliveries` row, its attempts counting the 503 and the 429 it went through
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        outcomes = rows(conn, "SELECT status, http_status, attempts, message_ids FROM _deliveries")
    assert {(o["status"], o["http_status"]) for o in outcomes} == {("delivered", 200)}
    assert sum(o["attempts"] for o in outcomes) == len(receiver.requests) and len(outcomes) == len(receiver.accepted())
    assert Counter(i for o in outcomes for i in o["message_ids"]) == delivered
