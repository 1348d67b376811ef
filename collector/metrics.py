"""The collector's Prometheus metrics (GET /metrics), in a registry of their own (one per app, so
tests can run several apps in one process).

Labels are bounded: `source` is a configured source's name or "-" (the request named no known
source: refused before, or instead of, authenticating), `status` an HTTP status, `code` one of
the refusal codes of collector.requests. A write key is never a label.
"""
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
disable_created_metrics()   # the *_created series: noise for a collector's counters
UNKNOWN_SOURCE = "-"
# Hand-off latency: a spool group commit is an fsync (about a millisecond on a local disk, tens
# on a network disk); a Pub/Sub publish is a round trip (tens of milliseconds).
HANDOFF_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "sluice_collector_requests", "HTTP requests answered, by source and status",
            ["source", "status"], registry=self.registry)
        self.events = Counter(
            "sluice_collector_events_accepted", "Events accepted (handed to the sink and acknowledged)",
            ["source"], registry=self.registry)
        self.bytes = Counter(
            "sluice_collector_request_bytes", "Request body bytes received, as sent (before gzip inflation)",
            ["source"], registry=self.registry)
        self.refused = Counter(
            "sluice_collector_refused", "Requests refused, by status and code (401 unknown key, 413 too "
                                        "large, 429 rate limited, 503 sink unavailable, ...)",
            ["status", "code"], registry=self.registry)
        self.handoff = Histogram(
            "sluice_collector_handoff_seconds", "Time for the sink to make a record durable (sink.put)",
            registry=self.registry, buckets=HANDOFF_BUCKETS)
        self.errors = Counter(
            "sluice_collector_internal_errors", "Requests answered 500 (an unexpected exception, logged)",
            registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
