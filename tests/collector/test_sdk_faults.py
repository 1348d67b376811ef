"""The real @segment/analytics-node (pinned in package.json, unmodified, its default settings)
through the faults a collector answers with 429 and 503: every event it sent is in the warehouse
exactly once, none dead-lettered.

- A 429 storm: a source limited to 20 events/s (burst 20) and 120 events sent at once.
  The collector refuses each request over the limit whole (nothing kept) with Retry-After;
  analytics-node waits that long and sends the same batch again. 429s with Retry-After do not
  count against its maxRetries (10); it gives a batch up after maxRetries + 20 attempts in all.
- A sink outage: the Pub/Sub sink on an emulator of the test's own, frozen (SIGSTOP: a Pub/Sub
  that takes the connection and never answers, as in a network partition) while analytics-node
  sends, thawed once the collector has answered 503. analytics-node retries 5xx with its own
  backoff (0.5-1 s, doubling; Retry-After is read only on 429), counted against maxRetries. A
  publish the collector gave up on can still land when Pub/Sub comes back, so the topic may
  hold an event twice (at least once at the edge); the streaming job drops repeated messageIds.

Both run the collector as users do (`python -m pipeline serve`, tests/collector/serving.py) and
read its /metrics to show the fault happened: a test whose fault never fired proves nothing.
"""
import json
import os
import signal
import sys
import threading
import time
import urllib.request
from collections import Counter

import duckdb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.collector import sdks
from tests.collector.serving import write_config
from tests.integration.emulators import PubSubEmulator

pytestmark = [pytest.mark.node, pytest.mark.slow]

EVENT_TYPES = ("track", "identify", "page")
PUBLISH_DEADLINE = 2.0   # the Pub/Sub sink's, for the outage test (8 s by default)


@pytest.fixture(autouse=True)
def need_node():
    if not sdks.node_available():
        pytest.skip("node_modules/@segment/analytics-node is not installed (make test installs it)")


def events(prefix: str, count: int) -> list:
    """Track, identify and page calls in turn; messageIds are set by the driver (uuid4)."""
    made = []
    for n in range(count):
        kind = EVENT_TYPES[n % len(EVENT_TYPES)]
        event = {"type": kind, "userId": f"{prefix}-user-{n % 7}"}
        if kind == "track":
            event.update(event="Fault Tested", properties={"n": n, "wave": prefix})
        elif kind == "identify":
            event["traits"] = {"n": n}
        else:
            event.update(name="Home", properties={"n": n})
        made.append(event)
    return made


def metrics(url: str) -> dict:
    """The collector's /metrics as {(name, sorted label items): value}."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def refused(found: dict, status: int, code: str) -> int:
    return int(found.get(("sluice_collector_refused_total", (("code", code), ("status", str(status)))), 0))


def requests_answered(found: dict, source: str, status: int) -> int:
    return int(found.get(("sluice_collector_requests_total", (("source", source), ("status", str(status)))), 0))


def stored_ids(warehouse: str) -> Counter:
    """messageId -> rows, over the three event tables; and the dead letters' count."""
    with duckdb.connect(warehouse, read_only=True) as conn:
        ids = Counter()
        for table in ("tracks", "identifies", "pages"):
            ids.update(row[0] for row in conn.execute(f"SELECT message_id FROM {table}").fetchall())
        dead = conn.execute("SELECT count(*) FROM _dead_letters").fetchone()[0]
    return ids, dead


# --- a 429 storm ------------------------------------------------------------------------------

def test_a_429_storm_every_event_stored_once(start_collector, tmp_path):
    sources = [{"name": "stormy", "write_key": "key-stormy", "rate_limit": {"events_per_second": 20, "burst": 20}}]
    warehouse = str(tmp_path / "w.duckdb")
    collector = start_collector(["--config", str(write_config(tmp_path, sources)),
                                 "--warehouse", f"duckdb:///{warehouse}"])
    sent = events("storm", 120)

    # 8 batches of 15 (analytics-node's flushAt) sent at once against 20 tokens a second: most
    # are refused, several times each; the SDK's retries bring them all in within ~6 s.
    began = time.monotonic()
    ids = sdks.send_analytics_node(collector.url, "key-stormy", sent, timeout=60)
    took = time.monotonic() - began

    found = metrics(collector.url)
    limited = refused(found, 429, "rate_limited")
    accepted = requests_answered(found, "stormy", 200)
    assert limited >= 8, f"the storm hardly stormed: {limited} answers 429"
    # A 429 keeps nothing, and every batch was let in once: no event twice at the edge.
    assert found[("sluice_collector_events_accepted_total", (("source", "stormy"),))] == len(sent)
    assert accepted == 8
    assert collector.stop() == 0           # loads everything accepted before it exits
    stored, dead = stored_ids(warehouse)
    assert len(ids) == len(set(ids)) == len(sent)
    assert stored == Counter(ids) and dead == 0
    print(f"\n429 storm: {len(sent)} events in {accepted} requests accepted after {limited} answers 429, "
          f"sent in {took:.1f} s")


# --- a sink outage (503) ----------------------------------------------------------------------

def _freeze(emulator: PubSubEmulator, sig: int) -> None:
    """SIGSTOP or SIGCONT the emulator's whole session (a script and the JVM it started)."""
    os.killpg(emulator._process.pid, sig)


@pytest.mark.integration
@pytest.mark.pubsub_emulator
def test_pubsub_frozen_while_sending_every_event_stored_once(start_collector, tmp_path, monkeypatch):
    """An emulator of the test's own: freezing the session's would stall every other test using it."""
    from google.cloud import pubsub_v1

    from tests.integration.test_streaming_pubsub import start as start_job, stop as stop_job, wait_for_summary
    emulator = PubSubEmulator(tmp_path / "pubsub").start()
    frozen = False
    job = None
    try:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator.host)
        topic = f"projects/{emulator.project}/topics/events"
        publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
        publisher.create_topic(name=topic)
        watched = f"projects/{emulator.project}/subscriptions/watched"   # what reached the topic
        pipeline = f"projects/{emulator.project}/subscriptions/pipeline"  # what the streaming job reads
        for subscription in (watched, pipeline):
            subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=60)

        sources = [{"name": "server", "write_key": "key-server"}]
        # The collector as `python -m pipeline serve`, its publish deadline 2 s instead of 8 (the
        # 503 comes sooner; the same path: a publish that never returns, given up on).
        script = ("import sys\nfrom collector.sinks.pubsub import PubSubSink\n"
                  f"PubSubSink.__init__.__kwdefaults__['timeout'] = {PUBLISH_DEADLINE}\n"
                  "from pipeline.main import main\nsys.exit(main(sys.argv[1:]))\n")
        collector = start_collector(["serve", "--config", str(write_config(tmp_path, sources)),
                                     "--sink", f"pubsub://{topic}"],
                                    env={"PUBSUB_EMULATOR_HOST": emulator.host}, command=[sys.executable, "-c", script])
        job_dir = tmp_path / "job"
        job_dir.mkdir()
        warehouse = str(job_dir / "w.duckdb")
        job = start_job(job_dir, emulator, pipeline, "--warehouse", f"duckdb:///{warehouse}")

        before = sdks.send_analytics_node(collector.url, "key-server", events("before", 30))

        _freeze(emulator, signal.SIGSTOP)
        frozen, began = True, time.monotonic()
        during, failure = [], []

        def send():
            try:
                during.extend(sdks.send_analytics_node(collector.url, "key-server", events("during", 150), timeout=60))
            except BaseException as exc:  # noqa: BLE001 - reported by the test's thread
                failure.append(exc)
        sender = threading.Thread(target=send)
        sender.start()
        # Thawed once the collector has answered 503 (its publish deadline, 2 s here, passed): the
        # SDK's next attempts then find Pub/Sub back.
        deadline = time.monotonic() + 40   # a hang guard only
        while refused(metrics(collector.url), 503, "sink_unavailable") == 0:
            assert time.monotonic() < deadline, f"no 503 while Pub/Sub was frozen:\n{collector.log()}"
            assert sender.is_alive() or failure, "analytics-node finished while Pub/Sub was frozen"
            time.sleep(0.1)
        _freeze(emulator, signal.SIGCONT)
        frozen, thawed = False, time.monotonic() - began
        sender.join(90)
        sent_in = time.monotonic() - began
        assert not sender.is_alive() and not failure, failure
        unavailable = refused(metrics(collector.url), 503, "sink_unavailable")

        sent = before + during
        summary = wait_for_summary(job_dir, job, lambda s: s["stored"] >= len(sent), timeout=60)
        _, code, _, err = stop_job(job)
        job = None
        assert code == 0, err
        assert collector.stop() == 0

        on_topic = Counter()
        while True:   # every message the topic got, acknowledged
            # (all published before the collector stopped: once some came, an empty pull of 1 s
            # is the end; the last pull waits its whole timeout)
            response = subscriber.pull(subscription=watched, max_messages=100, timeout=1 if on_topic else 5)
            if not response.received_messages:
                break
            for received in response.received_messages:
                on_topic.update(e["messageId"] for e in json.loads(received.message.data)["batch"])
            subscriber.acknowledge(subscription=watched, ack_ids=[m.ack_id for m in response.received_messages])
        subscriber.close()

        assert len(sent) == len(set(sent)) == 180
        assert set(on_topic) == set(sent)      # at least once at the edge ...
        stored, dead = stored_ids(warehouse)
        assert stored == Counter(sent) and dead == 0   # ... exactly once in the warehouse
        repeated = sum(on_topic.values()) - len(on_topic)
        assert summary["dead_lettered"] == {}
        print(f"\nPub/Sub frozen {thawed:.1f} s, the 150 events sent in {sent_in:.1f} s: {unavailable} answers 503; "
              f"{repeated} events twice on the topic; the job dropped {summary['dropped'].get('duplicate', 0)} "
              f"as duplicates; {len(sent)} rows")
    finally:
        if frozen:
            _freeze(emulator, signal.SIGCONT)
        if job is not None:
            job.kill()
            job.wait()
        emulator.stop()
