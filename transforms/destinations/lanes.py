"""Forwarding in bounded runs and on the local streaming runner: batches cut within a bundle,
each destination's requests on a lane of threads of its own.

Neither runs processing-time timers (Beam's FnApiRunner fires them at once or not at all;
its local streaming runner never), so a retry cannot wait on a timer there. Instead the
delivering DoFn hands each batch to its destination's lane (`shards` threads, each with its own
connection) and goes on at once: a destination that is down backs off and retries on its own
threads while the others' batches go out as they are cut. The DoFn collects finished batches as
it goes and waits for the rest at the end of the bundle, so every outcome (counters, the batch's
`_deliveries` row, a dead letter per event when it failed) is emitted within the bundle that took
the events in.
"""
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from transforms import deadletter, metrics, parking
from transforms.destinations.deliveries import (Delivery, batch_key, count_attempts, dead_letter, outcome_record,
                                                settle)
from transforms.destinations.delivery import deliver
from transforms.destinations.senders import batch_body, open_sender
from transforms.fallible import DEAD_LETTERS

ENVELOPE = batch_body([])  # b'{"batch":[]}': the body's bytes besides the payloads and commas


class Limits:
    """When a batch of a destination is full (max_events, max_bytes)."""

    def __init__(self, destinations: tuple):
        self._by_name = {d.name: d.batch for d in destinations}

    def full_after(self, name: str, count: int, size: int, item: Delivery) -> bool:
        """Whether a batch of `count` payloads (`size`: their bytes plus one separator each)
        cannot take `item`: the request body, {"batch":[...]}, would pass max_bytes. A lone
        delivery always fits."""
        limits = self._by_name[name]
        return count > 0 and (count + 1 > limits.max_events
                              or size + len(item.payload) + len(ENVELOPE) > limits.max_bytes)


class BatchPerBundleFn(beam.DoFn):
    """Batches per destination within a bundle: sent when full, the rest at the bundle's end."""

    def __init__(self, destinations: tuple):
        self._limits = Limits(destinations)
        self._open = None

    def start_bundle(self):
        self._open = {}  # name -> (deliveries, size)

    def process(self, element):
        (name, _), item = element
        batch, size = self._open.get(name, ([], 0))
        if self._limits.full_after(name, len(batch), size, item):
            yield name, batch
            batch, size = [], 0
        batch.append(item)
        self._open[name] = (batch, size + len(item.payload) + 1)

    def finish_bundle(self):
        for name, (batch, _) in self._open.items():
            if batch:
                yield _in_global_window((name, batch))
        self._open = {}


class Lane:
    """One destination's senders: up to `shards` batches in flight, each on its own thread
    with its own connection (a kept-alive HTTP connection serves one request at a time)."""

    def __init__(self, destination):
        self._destination = destination
        self._pool = ThreadPoolExecutor(max_workers=destination.batch.shards,
                                        thread_name_prefix=f"sluice-{destination.name}")
        self._local, self._senders, self._lock = threading.local(), [], threading.Lock()

    def submit(self, deliveries: list):
        """A future of (wall-clock seconds of the batch's first request, its delivery Result)."""
        return self._pool.submit(self._deliver, deliveries)

    def _deliver(self, deliveries: list) -> tuple:
        sender = getattr(self._local, "sender", None)
        if sender is None:
            sender = self._local.sender = open_sender(self._destination)
            with self._lock:
                self._senders.append(sender)
        requested_at = time.time()
        age = max(0.0, requested_at - min(d.ready_at for d in deliveries))
        return requested_at, deliver(sender.attempt([d.payload for d in deliveries], batch_key(deliveries)),
                                     self._destination.retry, time.monotonic() - age)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        for sender in self._senders:
            sender.close()
        self._senders = []


class _InFlight(NamedTuple):
    name: str
    deliveries: list
    submitted_at: float  # wall-clock seconds
    future: object


class DeliverOnLanesFn(beam.DoFn):
    """(destination, batch) -> each batch delivered on its destination's lane; the main output:
    its `_deliveries` row; `dead_letters`: one per event of a batch that finally failed.
    keep_open: lanes are parked between bundles (the local streaming runner tears DoFns down
    after each; see transforms.parking)."""

    def __init__(self, destinations: tuple, keep_open: bool = False):
        self._destinations, self._keep_open = destinations, keep_open
        self._lanes, self._in_flight = None, None

    def setup(self):
        self._lanes = {d.name: (self._keep_open and parking.take(_lane_key(d))) or Lane(d)
                       for d in self._destinations}

    def teardown(self):
        for destination in self._destinations:
            lane = (self._lanes or {}).get(destination.name)
            if lane is not None and self._keep_open:
                parking.park(_lane_key(destination), lane)
            elif lane is not None:
                lane.close()
        self._lanes = None

    def start_bundle(self):
        self._in_flight = []

    def process(self, element):
        name, deliveries = element
        self._in_flight.append(_InFlight(name, deliveries, time.time(), self._lanes[name].submit(deliveries)))
        yield from self._collect(wait=False)

    def finish_bundle(self):
        for output in self._collect(wait=True):
            if isinstance(output, pvalue.TaggedOutput):
                yield pvalue.TaggedOutput(output.tag, _in_global_window(output.value))
            else:
                yield _in_global_window(output)

    def _collect(self, wait: bool) -> list:
        """The outputs of the batches that are done (all of them, waiting, when `wait`)."""
        done, still = [], []
        for flight in self._in_flight:
            (done if wait or flight.future.done() else still).append(flight)
        self._in_flight = still
        outputs = []
        for name, deliveries, submitted_at, future in done:
            error = future.exception()
            if error is None:
                requested_at, result = future.result()
                count_attempts(name, result.latencies, retried=result.attempts - 1)
                outputs += settle(name, deliveries, result.last, result.attempts, requested_at, sum(result.latencies))
            else:  # delivery itself broke (a bug): the events are kept, as internal errors
                outputs += _internal_errors(name, deliveries, error, submitted_at)
        return outputs


def _internal_errors(name: str, deliveries: list, error: Exception, submitted_at: float) -> list:
    """Dead letters, and a failed row whose attempts and latency are not known (NULL): the lane
    broke before or while it made its requests. Its time is when the batch was handed over."""
    metrics.inc(f"destination.{name}.failed", len(deliveries))
    rejection = deadletter.internal_error("forwarding", error)
    rejection = rejection._replace(details={**rejection.details, "destination": name})
    record = outcome_record(name, deliveries, submitted_at, None, None, False, None, rejection.message)
    return [record] + [pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(d, rejection)) for d in deliveries]


def _lane_key(destination) -> str:
    return "lane:" + repr(destination)


def _in_global_window(value) -> WindowedValue:
    return WindowedValue(value, window.GlobalWindow().max_timestamp(), [window.GlobalWindow()])
