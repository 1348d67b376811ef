"""Streaming logic under TestStream on the local streaming runner: batches by count and by
time, and messageId dedupe with a time-to-live."""
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue

from transforms.dedupe import DropRepeatedMessages
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


def test_forwarding_batches_per_destination_by_count_bytes_and_waiting_time():
    from transforms.destinations.model import Batching, Destination
    from transforms.destinations.stage import BatchWithStateFn, Delivery
    destinations = (Destination("small", "webhook", "http://x", batch=Batching(3, 100_000, 5)),
                    Destination("tight", "webhook", "http://x", batch=Batching(100, 1024, 5)))

    def delivery(name, i, size=10):
        return (name, 0), Delivery(name, b"x" * size, f"{name}{i}", None, 0.0)
    stream = (TestStream()
              .add_elements([TimestampedValue(delivery("small", i), 0) for i in range(7)]
                            + [TimestampedValue(delivery("tight", i, 400), 0) for i in range(5)])
              .advance_processing_time(10)   # past max_wait: the half-full batches go
              .add_elements([TimestampedValue(delivery("small", i), 0) for i in range(7, 9)])
              .advance_processing_time(10)
              .advance_watermark_to_infinity())
    with streaming_pipeline() as p:
        batches = (p | stream | beam.ParDo(BatchWithStateFn(destinations, streaming=True, clock=StartOfTestTime()))
                   | beam.MapTuple(lambda name, batch: (name, len(batch))))
        # small: 3 + 3, then the waiting 1, then 2; tight: 1 KB holds two 401-byte payloads
        assert_that(batches, equal_to([("small", 3), ("small", 3), ("small", 1), ("small", 2),
                                       ("tight", 2), ("tight", 2), ("tight", 1)]))
