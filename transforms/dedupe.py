"""Streaming dedupe: an event whose messageId was seen within a time-to-live is dropped.

Pub/Sub delivers at least once and clients retry, so the same event can arrive twice
seconds or minutes apart. Keyed state remembers each messageId for `ttl_seconds` of
processing time, then a timer forgets it, so state stays bounded. The warehouse's own
dedupe (DuckDB's keys, BigQuery's insertIds, load-path lookups and views) still applies.
"""
import time
from typing import Tuple

import apache_beam as beam
from apache_beam.coders import BooleanCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec, TimerSpec, on_timer

from transforms import metrics
from transforms.messages import Event

DEFAULT_TTL_SECONDS = 3600


class DropSeenFn(beam.DoFn):
    SEEN = ReadModifyWriteStateSpec("seen", BooleanCoder())
    FORGET = TimerSpec("forget", TimeDomain.REAL_TIME)

    def __init__(self, ttl_seconds: float, clock=time.time):
        self._ttl, self._clock = ttl_seconds, clock  # clock: processing time; tests pass TestStream's

    def process(self, keyed, seen=beam.DoFn.StateParam(SEEN), forget=beam.DoFn.TimerParam(FORGET)):
        _, event = keyed
        if seen.read():
            metrics.dropped("duplicate")
            return
        seen.write(True)
        forget.set(self._clock() + self._ttl)
        yield event

    @on_timer(FORGET)
    def expire(self, seen=beam.DoFn.StateParam(SEEN)):
        seen.clear()


def _by_message_id(event):
    return event.body["messageId"], event


class DropRepeatedMessages(beam.PTransform):
    """Event -> Event, each messageId once per time-to-live (counted as `duplicate` drops)."""

    def __init__(self, ttl_seconds: float = DEFAULT_TTL_SECONDS, clock=time.time):
        super().__init__()
        self._ttl, self._clock = ttl_seconds, clock

    def expand(self, events):
        return (events
                | "ByMessageId" >> beam.Map(_by_message_id).with_output_types(Tuple[str, Event])
                | "DropSeen" >> beam.ParDo(DropSeenFn(self._ttl, self._clock)))
