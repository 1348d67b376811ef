"""The collector's Prometheus metrics (GET /metrics), in a registry of their own (one per app, so
tests can run several apps in one process).

The hot path only adds to plain dicts and a list (one event loop, no locks needed); the
registry reads them when scraped. prometheus_client's own Counter and Histogram take a lock and
a label lookup for every increment: five of them a request cost more than the rate limiter.

Labels are bounded: `source` is a configured source's name or "-" (the request named no known
source: refused before, or instead of, authenticating), `status` an HTTP status, `code` one of
the refusal codes of collector.requests. A write key is never a label.
"""
from bisect import bisect_left
from collections import Counter

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
UNKNOWN_SOURCE = "-"
# Hand-off latency: a spool group commit is an fsync (about a millisecond on a local disk, tens
# on a network disk); a Pub/Sub publish is a round trip (tens of milliseconds).
HANDOFF_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self):
        self.requests = Counter()   # (source, status) -> requests answered
        self.events = Counter()     # source -> events accepted
        self.bytes = Counter()      # source -> request body bytes as sent
        self.refused = Counter()    # (status, code) -> refusals
        self.errors = 0             # answered 500
        self.handoff_counts = [0] * (len(HANDOFF_BUCKETS) + 1)   # the last: above every bucket
        self.handoff_sum = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Exposition(self))

    def observe_handoff(self, seconds: float) -> None:
        self.handoff_counts[bisect_left(HANDOFF_BUCKETS, seconds)] += 1
        self.handoff_sum += seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Exposition:
    """The registry's view of a Metrics' counts."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):
        m = self.metrics
        requests = CounterMetricFamily("sluice_collector_requests", "HTTP requests answered, by source and status",
                                       labels=["source", "status"])
        for (source, status), value in sorted(m.requests.items()):
            requests.add_metric([source, str(status)], value)
        yield requests
        events = CounterMetricFamily("sluice_collector_events_accepted",
                                     "Events accepted (handed to the sink and acknowledged)", labels=["source"])
        for source, value in sorted(m.events.items()):
            events.add_metric([source], value)
        yield events
        received = CounterMetricFamily("sluice_collector_request_bytes",
                                       "Request body bytes received, as sent (before gzip inflation)",
                                       labels=["source"])
        for source, value in sorted(m.bytes.items()):
            received.add_metric([source], value)
        yield received
        refused = CounterMetricFamily("sluice_collector_refused",
                                      "Requests refused, by status and code (401 unknown key, 413 too large, "
                                      "429 rate limited, 503 sink unavailable, ...)", labels=["status", "code"])
        for (status, code), value in sorted(m.refused.items()):
            refused.add_metric([str(status), code], value)
        yield refused
        yield CounterMetricFamily("sluice_collector_internal_errors",
                                  "Requests answered 500 (an unexpected exception, logged)", value=m.errors)
        cumulative, buckets = 0, []
        for bound, count in zip(HANDOFF_BUCKETS + (float("inf"),), m.handoff_counts):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily("sluice_collector_handoff_seconds",
                                    "Time for the sink to make a record durable (sink.put)",
                                    buckets=buckets, sum_value=m.handoff_sum)
