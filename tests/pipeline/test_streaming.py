"""Streaming logic under TestStream on the local streaming runner: batches by count and by
time, messageId dedupe with a time-to-live, and forwarding's batching and retries in state."""
import json

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from tests.destinations.receiver import Receiver
from transforms.dedupe import DropRepeatedMessages
from transforms.destinations.deliveries import Delivery
from transforms.destinations.delivery import RetryPolicy
from transforms.destinations.model import Batching, Destination
from transforms.destinations.retrying import BatchAndRetryFn
from transforms.fallible import DEAD_LETTERS
from transforms.messages import Event
from transforms.warehouse.sink import Batches

NOW = "2026-11-25T10:00:00.000000Z"


class StartOfTestTime:
    """TestStream's processing time starts at 0: timers set from this clock fire when the
    stream advances past them (Beam's own GroupIntoBatches tests do the same)."""

    def __call__(self):
        return 0.0


def streaming_pipeline():
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)


def event(message_id):
    body = {"type": "track", "event": "A", "userId": "u", "messageId": message_id}
    return Event(body, body, None, {}, "test", NOW)


def test_batches_are_cut_by_count_and_by_waiting_time():
    stream = (TestStream()
              .add_elements([TimestampedValue(i, 0) for i in range(7)])  # two full batches, one waits
              .advance_processing_time(10)                               # past max_wait: it is written
              .add_elements([TimestampedValue(i, 0) for i in range(100, 102)])
              .advance_processing_time(10)
              .advance_watermark_to_infinity())
    with streaming_pipeline() as p:
        batches = p | stream | Batches(3, streaming=True, max_wait=5, shards=1, clock=StartOfTestTime())
        assert_that(batches | "Sizes" >> beam.Map(len), equal_to([3, 3, 1, 2]), label="sizes")
        assert_that(batches | "All" >> beam.FlatMap(lambda b: b),
                    equal_to(list(range(7)) + [100, 101]), label="everything once")


def test_a_repeated_message_id_is_dropped_within_the_ttl_and_kept_after_it():
    stream = (TestStream()
              .add_elements([event("a"), event("b"), event("a")])
              .advance_processing_time(5)
              .add_elements([event("b")])          # 5 s later: still within the 60 s TTL
              .advance_processing_time(120)        # the TTL passes: a and b are forgotten
              .add_elements([event("a")])
              .advance_watermark_to_infinity())
    with streaming_pipeline() as p:
        kept = p | stream | DropRepeatedMessages(ttl_seconds=60, clock=StartOfTestTime())
        assert_that(kept | beam.Map(lambda e: e.body["messageId"]), equal_to(["a", "b", "a"]))


class Clock:
    """A processing-time clock standing still at `now` (TestStream's own time moves the timers)."""

    def __init__(self, now: float):
        self.now = now

    def __call__(self):
        return self.now


def delivery(name, i, size=10):
    """A keyed delivery whose payload is a JSON string of `size` bytes."""
    payload = b'"' + f"{name}{i}".encode().ljust(size - 2, b"x") + b'"'
    return TimestampedValue(((name, 0), Delivery(name, payload, f"{name}{i}", 0.0, payload, {}, "test", NOW)), 0)


def webhook(name, receiver, max_events=100, max_bytes=100_000, retry=RetryPolicy(6, 0.5, 8.0, 600)):
    return Destination(name, "webhook", receiver.url, allow_private_network=True,
                       batch=Batching(max_events, max_bytes, 5), retry=retry)


def forward_in_state(stream, destinations, clock=StartOfTestTime(), rows: list = None) -> list:
    """The stateful forwarding DoFn (streaming where timers fire) over `stream`; its dead letters
    (and its `_deliveries` rows appended to `rows`, when given)."""
    dead = []
    with streaming_pipeline() as p:
        outputs = (p | stream | beam.ParDo(BatchAndRetryFn(destinations, clock=clock, rand=lambda: 1.0))
                   .with_outputs(DEAD_LETTERS, main="delivered"))
        outputs.dead_letters | "Letters" >> beam.Map(Collected(dead).add)
        if rows is not None:
            outputs.delivered | "Rows" >> beam.Map(Collected(rows).add)
    return dead


class Collected:
    """Elements appended to a list of the test's (FnApi-free: the local runner shares the process)."""
    _lists = {}

    def __init__(self, target: list):
        self._id = id(target)
        Collected._lists[self._id] = target

    def add(self, element):
        Collected._lists[self._id].append(element)


def batch_sizes(receiver) -> list:
    return [len(json.loads(r.body)["batch"]) for r in receiver.accepted()]


def test_forwarding_in_state_batches_by_count_bytes_and_waiting_time():
    with Receiver() as small, Receiver() as tight:
        stream = (TestStream()
                  .add_elements([delivery("small", i) for i in range(7)]
                                + [delivery("tight", i, 400) for i in range(5)])
                  .advance_processing_time(10)   # past max_wait: the half-full batches go
                  .add_elements([delivery("small", i) for i in range(7, 9)])
                  .advance_processing_time(10)
                  .advance_watermark_to_infinity())
        dead = forward_in_state(stream, (webhook("small", small, max_events=3), webhook("tight", tight, max_bytes=1024)))
        assert dead == []
        # small: 3 + 3, then the waiting 1, then 2; tight: 1 KB holds two 400-byte payloads
        assert batch_sizes(small) == [3, 3, 1, 2]
        assert batch_sizes(tight) == [2, 2, 1]
        assert sorted(small.delivered_payloads()) == sorted(f"small{i}".ljust(8, "x") for i in range(9))


def test_a_destination_that_is_down_waits_in_state_while_another_is_delivered():
    """Three 503s: the batch is retried on timers, never by sleeping, so the healthy
    destination's batch goes out before the failing one's first retry."""
    with Receiver(script=[(503, {})] * 3) as down, Receiver() as up:
        stream = (TestStream().add_elements([delivery("down", 0), delivery("up", 0)]))
        for _ in range(5):
            stream = stream.advance_processing_time(10)   # the wait, then each retry's timer
        stream = stream.advance_watermark_to_infinity()
        rows = []
        dead = forward_in_state(stream, (webhook("down", down), webhook("up", up)), rows=rows)
        assert dead == []
        assert [r.status for r in down.requests] == [503, 503, 503, 200]
        # one `_deliveries` row per batch, its attempts and their time carried through state
        outcomes = {r["destination"]: r for r in rows}
        assert len(rows) == 2 and (outcomes["down"]["status"], outcomes["down"]["attempts"]) == ("delivered", 4)
        assert (outcomes["up"]["status"], outcomes["up"]["attempts"], outcomes["up"]["http_status"]) == (
            "delivered", 1, 200)
        assert outcomes["down"]["message_ids"] == ["down0"] and outcomes["down"]["latency_ms"] > 0
        assert len({r.headers["Idempotency-Key"] for r in down.requests}) == 1  # one batch, retried
        assert down.delivered_payloads() == ["down0".ljust(8, "x")] and up.delivered_payloads() == ["up0".ljust(8, "x")]
        assert up.requests[0].at < down.requests[1].at


def test_a_batch_out_of_attempts_is_dead_lettered_once_per_event():
    with Receiver(default_status=503) as down:
        stream = TestStream().add_elements([delivery("down", 0), delivery("down", 1)])
        for _ in range(4):
            stream = stream.advance_processing_time(10)
        rows = []
        dead = forward_in_state(stream.advance_watermark_to_infinity(),
                                (webhook("down", down, retry=RetryPolicy(3, 0.5, 8.0, 600)),), rows=rows)
        assert len(down.requests) == 3
        assert [(r["status"], r["http_status"], r["attempts"], sorted(r["message_ids"])) for r in rows] == [
            ("failed", 503, 3, ["down0", "down1"])]
        assert sorted((d["message_id"], d["error_type"], d["error_details"]["attempts"]) for d in dead) == [
            ("down0", "delivery_failed", 3), ("down1", "delivery_failed", 3)]


def test_a_drain_gives_waiting_batches_one_last_attempt_then_dead_letters_them():
    """The window ends (a drain) while one batch waits for its retry and another is open."""
    with Receiver(default_status=503) as down:
        stream = (TestStream().add_elements([delivery("down", 0), delivery("down", 1)])
                  .advance_watermark_to_infinity())
        # max_events 1: the second delivery cuts the first batch, which fails and waits (its
        # retry is due after the stream has ended, at clock 100 + backoff); the second is open.
        dead = forward_in_state(stream, (webhook("down", down, max_events=1),), clock=Clock(100.0))
        assert len(down.requests) == 3  # the first batch twice (its try, its last chance), the second once
        assert sorted(d["message_id"] for d in dead) == ["down0", "down1"]
        assert all("gave up: the window ended" in d["error_message"] for d in dead)
