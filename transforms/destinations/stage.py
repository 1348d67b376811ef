"""The forwarding branch: events -> deliveries per destination -> batches -> requests.

    SelectDeliveries   which destinations take the event (consent and `integrations` were
                       decided earlier; here: types, name globs, condition) and its payload
    Batch              per (destination, shard) key with state: a batch is sent when it has
                       max_events, would pass max_bytes, or has waited max_wait_seconds
                       (and at the end of a batch run); on the local streaming runner, whose
                       timers do not fire, per bundle instead
    Deliver            one request (or publish) per batch, with retries; a batch that finally
                       fails becomes one `delivery_failed` dead letter per event

Counters per destination `d`: `destination.d.candidates` (events consent let through),
`destination.d.dropped_filter`, `forwarded.d` (delivered), `destination.d.failed`,
`destination.d.requests`, `destination.d.retried`, `destination.d.latency_us` (the sum of
request times; a distribution `destination.d.latency_ms` too).
candidates == dropped_filter + forwarded + failed.
"""
import hashlib
import time
from collections import Counter
from typing import Any, NamedTuple, Tuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.coders import TupleCoder, VarIntCoder
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.utils.windowed_value import WindowedValue

from transforms import deadletter, jsonutil, metrics, parking
from transforms.destinations import mapping
from transforms.destinations.delivery import deliver
from transforms.destinations.model import Matcher
from transforms.destinations.senders import batch_body, open_sender
from transforms.messages import Rejection

SHARDS = 4
ENVELOPE = batch_body([])  # b'{"batch":[]}': the body's bytes besides the payloads and commas


class Delivery(NamedTuple):
    destination: str
    payload: bytes       # the mapped payload, as JSON
    message_id: str
    event: Any           # the Event, body emptied: its original payload makes the dead letter
    ready_at: float      # wall-clock seconds when selected (a batch's age counts from its oldest)


def _shard(message_id: str) -> int:
    return hashlib.blake2b(message_id.encode("utf-8", "surrogatepass"), digest_size=2).digest()[0] % SHARDS


def _slim(event):
    """The event as a delivery carries it: only what its dead letter needs (the original
    payload, attributes, source, times), so less is pickled through the batching shuffle."""
    return event._replace(body={}, original=None if event.payload is not None else event.original,
                          violations=None, destinations=())


class SelectDeliveriesFn(beam.DoFn):
    def __init__(self, destinations: tuple):
        self._destinations = destinations
        self._compiled, self._counts = None, None

    def setup(self):
        self._compiled = [(d.name, Matcher(d), mapping.compile_mapping(d.mapping),
                           f"destination.{d.name}.candidates", f"destination.{d.name}.dropped_filter")
                          for d in self._destinations]

    def start_bundle(self):
        self._counts = Counter()  # summed here, flushed once a bundle (a Beam counter per event costs)

    def finish_bundle(self):
        for name, value in self._counts.items():
            metrics.inc(name, value)

    def process(self, event):
        allowed = event.destinations
        if not allowed:
            return
        now, message_id, slim = time.time(), event.body.get("messageId", ""), None
        for name, matches, build, candidates, filtered in self._compiled:
            if name not in allowed:
                continue
            self._counts[candidates] += 1
            if not matches(event.body):
                self._counts[filtered] += 1
                continue
            slim = slim or _slim(event)
            yield (name, _shard(message_id)), Delivery(name, jsonutil.dumps(build(event.body)), message_id, slim, now)


class _Limits:
    def __init__(self, destinations: tuple):
        self._by_name = {d.name: d.batch for d in destinations}

    def full_after(self, name: str, count: int, size: int, delivery: Delivery) -> bool:
        """Whether a batch of `count` payloads (`size`: their bytes plus one separator each)
        cannot take `delivery`: the request body, {"batch":[...]}, would pass max_bytes. A lone
        delivery always fits."""
        limits = self._by_name[name]
        return count > 0 and (count + 1 > limits.max_events
                              or size + len(delivery.payload) + len(ENVELOPE) > limits.max_bytes)


class BatchWithStateFn(beam.DoFn):
    """Batches per (destination, shard) key in state; see the module docstring."""
    BUFFER = BagStateSpec("buffer", beam.coders.PickleCoder())
    HELD = ReadModifyWriteStateSpec("held", TupleCoder((VarIntCoder(), VarIntCoder())))  # (events, bytes)
    WAITED = TimerSpec("waited", TimeDomain.REAL_TIME)
    END = TimerSpec("end", TimeDomain.WATERMARK)

    def __init__(self, destinations: tuple, streaming: bool, clock=time.time):
        self._streaming, self._clock = streaming, clock
        self._limits = _Limits(destinations)
        self._waits = {d.name: d.batch.max_wait_seconds for d in destinations}

    def process(self, element, w=beam.DoFn.WindowParam, buffer=beam.DoFn.StateParam(BUFFER),
                held=beam.DoFn.StateParam(HELD), waited=beam.DoFn.TimerParam(WAITED),
                end=beam.DoFn.TimerParam(END)):
        (name, _), delivery = element
        count, size = held.read() or (0, 0)
        if self._limits.full_after(name, count, size, delivery):
            yield from self._flush(name, buffer, held)
            count, size = 0, 0
        if count == 0:
            end.set(w.max_timestamp())
            if self._streaming:
                waited.set(self._clock() + self._waits[name])
        buffer.add(delivery)
        held.write((count + 1, size + len(delivery.payload) + 1))

    @on_timer(WAITED)
    def on_waited(self, key=beam.DoFn.KeyParam, buffer=beam.DoFn.StateParam(BUFFER),
                  held=beam.DoFn.StateParam(HELD)):
        yield from self._flush(key[0], buffer, held)

    @on_timer(END)
    def on_end(self, key=beam.DoFn.KeyParam, buffer=beam.DoFn.StateParam(BUFFER), held=beam.DoFn.StateParam(HELD)):
        yield from self._flush(key[0], buffer, held)

    @staticmethod
    def _flush(name, buffer, held):
        batch = list(buffer.read())
        buffer.clear(), held.clear()
        if batch:
            yield name, batch


class BatchPerBundleFn(beam.DoFn):
    """The local streaming runner's batching: per key within a bundle, flushed at its end."""

    def __init__(self, destinations: tuple):
        self._limits = _Limits(destinations)
        self._open = None

    def start_bundle(self):
        self._open = {}  # name -> (deliveries, size)

    def process(self, element):
        (name, _), delivery = element
        batch, size = self._open.get(name, ([], 0))
        if self._limits.full_after(name, len(batch), size, delivery):
            yield name, batch
            batch, size = [], 0
        batch.append(delivery)
        self._open[name] = (batch, size + len(delivery.payload) + 1)

    def finish_bundle(self):
        for name, (batch, _) in self._open.items():
            if batch:
                yield WindowedValue((name, batch), window.GlobalWindow().max_timestamp(), [window.GlobalWindow()])
        self._open = {}


class DeliverBatchesFn(beam.DoFn):
    DEAD_LETTERS = "dead_letters"

    def __init__(self, destinations: tuple, keep_open: bool = False):
        self._destinations, self._keep_open = destinations, keep_open  # keep_open: see transforms.parking
        self._senders, self._by_name = None, None

    def setup(self):
        self._by_name = {d.name: d for d in self._destinations}
        self._senders = {d.name: (self._keep_open and parking.take(repr(d))) or open_sender(d)
                         for d in self._destinations}

    def teardown(self):
        for name, sender in (self._senders or {}).items():
            if self._keep_open:
                parking.park(repr(self._by_name[name]), sender)
            else:
                sender.close()
        self._senders = None

    def process(self, batch):
        name, deliveries = batch
        destination = self._by_name[name]
        key = hashlib.sha256("\n".join(d.message_id for d in deliveries).encode("utf-8", "surrogatepass")).hexdigest()[:32]
        attempt = self._senders[name].attempt([d.payload for d in deliveries], key)
        born = time.monotonic() - max(0.0, time.time() - min(d.ready_at for d in deliveries))
        result = deliver(attempt, destination.retry, born,
                         on_retry=lambda _: metrics.inc(f"destination.{name}.retried"))
        metrics.inc(f"destination.{name}.requests", result.attempts)
        for seconds in result.latencies:
            metrics.inc(f"destination.{name}.latency_us", int(seconds * 1_000_000))
            metrics.distribution(f"destination.{name}.latency_ms", int(seconds * 1000))
        if result.delivered:
            metrics.inc(f"forwarded.{name}", len(deliveries))
            return
        metrics.inc(f"destination.{name}.failed", len(deliveries))
        details = {"destination": name, "status": result.last.status, "attempts": result.attempts}
        rejection = Rejection("delivery_failed", f"{name}: {result.last.detail}", details)
        for delivery in deliveries:
            yield pvalue.TaggedOutput(self.DEAD_LETTERS, deadletter.from_event(
                "forwarding", rejection, delivery.event, delivery.message_id, destination=name))


class ForwardToDestinations(beam.PTransform):
    """Events (with the destinations consent allows) -> delivered; returns the dead letters."""

    def __init__(self, destinations: tuple, streaming: bool = False, local_streaming: bool = False):
        """local_streaming: Beam's local streaming runner, whose timers do not fire and which
        tears DoFns down after every bundle: batches per bundle, clients kept across bundles."""
        super().__init__()
        self._destinations, self._streaming, self._local = destinations, streaming, local_streaming

    def expand(self, events):
        selected = (events | "SelectDeliveries" >> beam.ParDo(SelectDeliveriesFn(self._destinations))
                    .with_output_types(Tuple[Tuple[str, int], Any]))
        batcher = BatchPerBundleFn(self._destinations) if self._local \
            else BatchWithStateFn(self._destinations, self._streaming)
        batches = selected | "Batch" >> beam.ParDo(batcher)
        delivered = batches | "Deliver" >> beam.ParDo(DeliverBatchesFn(self._destinations, self._local)).with_outputs(
            DeliverBatchesFn.DEAD_LETTERS, main="delivered")
        return delivered.dead_letters
