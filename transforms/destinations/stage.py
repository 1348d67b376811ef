"""The forwarding branch: forwardable events -> deliveries per destination -> batches -> requests.

    Forwardable  SelectDeliveries   which destinations take the event (consent and `integrations`
                                    were decided earlier; here: types, name globs, condition) and
                                    its mapped payload, keyed by (destination, shard)
    Forward      bounded runs and the local streaming runner (no processing-time timers there):
                   Batch            per destination within a bundle (transforms.destinations.lanes)
                   Deliver          each destination on its own lane of threads, retries included
                 streaming where timers fire (Dataflow):
                   BatchAndRetry    batches and retries in keyed state, on timers
                                    (transforms.destinations.retrying)

Either way one destination that is down never holds up another, every settled batch is one
`_deliveries` row (its outcome: transforms.destinations.deliveries), and a batch that finally
fails becomes one `delivery_failed` dead letter per event as well. The branch reads the
Transform stage's `forwardable` output, every event some destination may take, so nothing is
merged before selection: a Flatten of all events would make Beam's local runner keep every
event in memory.

Counters per destination `d`: `destination.d.candidates` (events consent let through),
`destination.d.dropped_filter`, `forwarded.d` (delivered), `destination.d.failed`,
`destination.d.requests`, `destination.d.retried`, `destination.d.latency_us` (the sum of
request times; a distribution `destination.d.latency_ms` too).
candidates == dropped_filter + forwarded + failed.
"""
import time
from collections import Counter
from typing import Tuple

import apache_beam as beam
from apache_beam import pvalue

from transforms import deadletter, jsonutil, metrics
from transforms.destinations import mapping
from transforms.destinations.deliveries import Delivery, dead_letter, delivery, shard
from transforms.destinations.lanes import BatchPerBundleFn, DeliverOnLanesFn
from transforms.destinations.model import Matcher
from transforms.destinations.retrying import BatchAndRetryFn
from transforms.fallible import DEAD_LETTERS, apply_fallible


class SelectDeliveriesFn(beam.DoFn):
    def __init__(self, destinations: tuple):
        self._destinations = destinations
        self._compiled, self._counts = None, None

    def setup(self):
        self._compiled = [(d.name, Matcher(d), mapping.compile_mapping(d.mapping), d.batch.shards,
                           f"destination.{d.name}.candidates", f"destination.{d.name}.dropped_filter",
                           f"destination.{d.name}.failed")
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
        now = time.time()
        for name, matches, build, shards, candidates, filtered, failed in self._compiled:
            if name not in allowed:
                continue
            self._counts[candidates] += 1
            try:
                if not matches(event.body):
                    self._counts[filtered] += 1
                    continue
                payload = jsonutil.dumps(build(event.body))
            except Exception as exc:  # noqa: BLE001 - this destination's copy is a dead letter, never a failed bundle
                self._counts[failed] += 1
                rejection = deadletter.internal_error("forwarding", exc)
                yield pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(
                    delivery(name, b"", event, now), rejection._replace(details={**rejection.details,
                                                                                  "destination": name})))
                continue
            item = delivery(name, payload, event, now)
            yield (name, shard(item.message_id, shards)), item


class SelectDeliveries(beam.PTransform):
    """Forwardable events -> ((destination, shard), Delivery) as `deliveries`, and `dead_letters`."""

    def __init__(self, destinations: tuple):
        super().__init__()
        self._destinations = destinations

    def expand(self, events):
        fn = beam.ParDo(SelectDeliveriesFn(self._destinations)).with_output_types(Tuple[Tuple[str, int], Delivery])
        return events | "SelectDeliveries" >> fn.with_outputs(DEAD_LETTERS, main="deliveries")


class ForwardToDestinations(beam.PTransform):
    """Keyed deliveries -> delivered; returns its outputs: `deliveries` (a `_deliveries` row per
    settled batch) and `dead_letters` (of what finally failed)."""

    def __init__(self, destinations: tuple, timers: bool = False, keep_open: bool = False):
        """timers: the runner fires processing-time timers (streaming on Dataflow): batches wait
        and retry in keyed state. Otherwise (bounded runs, the local streaming runner) batches
        are cut per bundle and retried on each destination's own threads. keep_open: DoFns are
        torn down after every bundle (the local streaming runner): clients are kept across."""
        super().__init__()
        self._destinations, self._timers, self._keep_open = destinations, timers, keep_open

    def expand(self, deliveries):
        if self._timers:
            return (deliveries | "BatchAndRetry" >> beam.ParDo(BatchAndRetryFn(self._destinations))
                    .with_outputs(DEAD_LETTERS, main="deliveries"))
        batches = deliveries | "Batch" >> beam.ParDo(BatchPerBundleFn(self._destinations))
        return apply_fallible(batches, DeliverOnLanesFn(self._destinations, self._keep_open), main="deliveries",
                              label="Deliver")
