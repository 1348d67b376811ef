"""PubSubSink on the real Pub/Sub emulator: one message per record with its attributes, every
put confirmed, the emulator gone -> SinkUnavailable, and back again once it returns."""
import asyncio
import json
import time

import pytest

from collector.sinks import SinkUnavailable
from collector.sinks.pubsub import PubSubSink, message_attributes, topic_path
from tests.integration.emulators import PubSubEmulator


def record(task: int, seq: int) -> bytes:
    return json.dumps({"batch": [{"type": "track", "event": "E", "userId": f"u{task}", "messageId": f"{task}-{seq}"}],
                       "source": "web", "receivedAt": f"2026-12-02T10:00:{seq:02d}.000Z"},
                      separators=(",", ":")).encode()


def test_attributes_are_given_or_read_from_the_envelope():
    data = record(0, 5)
    assert message_attributes(data, None) == {"source": "web", "received_at": "2026-12-02T10:00:05.000Z"}
    given = {"source": "app", "received_at": "x", "content_type": "text/plain", "other": "dropped"}
    assert message_attributes(data, given) == {"source": "app", "received_at": "x", "content_type": "text/plain"}
    assert message_attributes(data, {"content_type": "application/json"}) == {
        "source": "web", "received_at": "2026-12-02T10:00:05.000Z", "content_type": "application/json"}
    long = message_attributes(data, {"content_type": "é" * 1000})["content_type"]
    assert len(long.encode()) <= 1024 and long == "é" * 512  # cut to Pub/Sub's limit, on a character
    assert message_attributes(b'{"batch":[]}', None) == {}
    assert topic_path("pubsub://projects/p/topics/t") == topic_path("projects/p/topics/t") == "projects/p/topics/t"
    with pytest.raises(ValueError):
        topic_path("pubsub://topics/t")


def test_one_message_per_record_with_its_attributes(make_topic, pubsub_emulator):
    topic = make_topic("collector")
    sink = PubSubSink(f"pubsub://{topic.path}")
    sent = {}

    async def client(task):
        for seq in range(5):
            data = record(task, seq)
            if task % 2:  # the server passes what the request said
                await sink.put([data], [{"source": "web", "received_at": f"r{seq}", "content_type": "text/plain"}])
                sent[data] = {"source": "web", "received_at": f"r{seq}", "content_type": "text/plain"}
            else:         # a bare put: source and received_at from the envelope
                await sink.put([data])
                sent[data] = {"source": "web", "received_at": f"2026-12-02T10:00:{seq:02d}.000Z"}

    async def main():
        await sink.start()
        assert await sink.ready()
        began = time.monotonic()
        await asyncio.gather(*(client(t) for t in range(100)))
        elapsed = time.monotonic() - began
        with pytest.raises(ValueError):
            await sink.put([b'{"a":\n1}'])
        await sink.close()
        return elapsed
    elapsed = asyncio.run(main())
    received = topic.pull_all(wait=2)
    assert len(received) == len(sent) == 500
    assert {m.data: dict(m.attributes) for m in received} == sent
    assert elapsed < 20, elapsed


def test_a_missing_topic_is_not_ready_and_refuses(pubsub_emulator, monkeypatch):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator.host)
    sink = PubSubSink(f"projects/{pubsub_emulator.project}/topics/never-made", timeout=2.0)

    async def main():
        await sink.start()
        assert not await sink.ready()
        with pytest.raises(SinkUnavailable, match="NotFound"):
            await sink.put([record(0, 0)])
        await sink.close()
    asyncio.run(main())


def test_the_emulator_stopped_answers_unavailable_then_the_sink_recovers(pubsub_emulator, tmp_path, monkeypatch):
    """An emulator of the test's own (the session's is shared), stopped and started again on the
    same port: puts fail with SinkUnavailable within the timeout, then the same sink publishes."""
    from google.cloud import pubsub_v1
    own = PubSubEmulator(tmp_path / "first").start()
    try:
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", own.host)
        path = f"projects/{own.project}/topics/outage"
        pubsub_v1.PublisherClient().create_topic(name=path)
        sink = PubSubSink(path, timeout=2.0, ready_cache_seconds=0)

        async def main():
            nonlocal own
            await sink.start()
            await sink.put([record(0, 0)])
            own.stop()
            began = time.monotonic()
            with pytest.raises(SinkUnavailable):
                await sink.put([record(1, 0)])
            assert time.monotonic() - began < 4  # within the timeout, not the SDK's 60 s
            assert not await sink.ready()
            again = PubSubEmulator(tmp_path / "second")
            again.port, again.host = own.port, own.host
            own = await asyncio.to_thread(again.start)
            subscriber = pubsub_v1.SubscriberClient()
            pubsub_v1.PublisherClient().create_topic(name=path)  # the emulator kept nothing
            subscription = f"projects/{own.project}/subscriptions/outage"
            subscriber.create_subscription(name=subscription, topic=path)
            deadline = time.monotonic() + 30
            while True:  # the channel reconnects after its backoff
                try:
                    await sink.put([record(2, 0)])
                    break
                except SinkUnavailable:
                    assert time.monotonic() < deadline
            assert await sink.ready()
            await sink.close()
            response = subscriber.pull(subscription=subscription, max_messages=10, timeout=10)
            subscriber.close()
            return [m.message.data for m in response.received_messages]
        assert asyncio.run(main()) == [record(2, 0)]
    finally:
        own.stop()


@pytest.mark.slow
def test_published_records_read_by_the_streaming_job_name_their_source(tmp_path, pubsub_emulator, make_topic):
    """PubSubSink -> the emulator -> `python -m pipeline --input_subscription` into DuckDB:
    every event stored or dead-lettered under the source the collector named, not pubsub:..."""
    import duckdb

    from tests.conftest import rows
    from tests.integration.test_streaming_pubsub import start, stop, wait_for_summary
    topic = make_topic("collected")
    good = [{"type": "track", "event": "E", "userId": "u", "messageId": f"m{i}", "source": "web"} for i in range(5)]
    records = [json.dumps({"batch": good[:3], "source": "web", "receivedAt": "2026-12-02T10:00:00.000Z"}).encode(),
               json.dumps({"batch": good[3:] + [{"type": "track", "event": "E", "messageId": "anon"}, 7],
                           "source": "web", "receivedAt": "2026-12-02T10:00:01.000Z"}).encode()]
    sink = PubSubSink(topic.path)

    async def send():
        await sink.start()
        await sink.put(records, [{"content_type": "application/json"}] * 2)
        await sink.close()
    asyncio.run(send())
    process = start(tmp_path, pubsub_emulator, topic.subscription, "--warehouse", f"duckdb:///{tmp_path}/w.duckdb")
    wait_for_summary(tmp_path, process, lambda s: s["events"] >= 7 and s["conservation"]["in_flight"] == 0)
    took, code, out, err = stop(process)
    assert code == 0, err
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        tracks = rows(conn, "SELECT message_id, source, _metadata FROM tracks ORDER BY 1")
        letters = rows(conn, "SELECT error_type, source FROM _dead_letters ORDER BY 1")
    assert [(t["message_id"], t["source"]) for t in tracks] == [(f"m{i}", "web") for i in range(5)]
    assert json.loads(tracks[0]["_metadata"])["attributes"] == {
        "source": "web", "received_at": "2026-12-02T10:00:00.000Z", "content_type": "application/json"}
    assert letters == [{"error_type": "missing_identity", "source": "web"},
                       {"error_type": "not_an_object", "source": "web"}]
