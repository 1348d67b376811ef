"""What the collector is configured with: the `sources:` and `collector:` config sections,
typed (pipeline/config.py reads and checks them; defaults are Segment's limits and the
SignalSmith plans table's rate)."""
from typing import NamedTuple

from collector.debugger.settings import DebuggerSettings


class RateLimit(NamedTuple):
    """A token bucket counting events, not requests: refilled at events_per_second, holding
    at most burst."""
    events_per_second: float = 100.0
    burst: int = 500


class Source(NamedTuple):
    name: str                      # becomes the events' `source`
    write_key: str                 # resolved: the secret itself, never logged or stored
    enabled: bool = True           # a disabled source's key answers 403
    rate_limit: RateLimit = RateLimit()
    allowed_origins: tuple = ("*",)  # CORS: Access-Control-Allow-Origin per source


# What the collector may add to a request to make its record (docs/collector.md, "What is kept"):
# per event `receivedAt` (40 bytes), a `messageId` (51) and `context.ip` (65 for the longest IPv6
# text); per record `{"batch":[...]}` around a single event (11), `source` (12 + the name),
# `receivedAt` (40) and the envelope's `context.ip` (53). Rounded up: a record that still grows
# past largest_record (numbers rewritten longer, `1e9` as `1000000000.0`) is refused with a 413.
RECORD_BYTES_PER_EVENT = 160
RECORD_BYTES_PER_RECORD = 200


class CollectorLimits(NamedTuple):
    max_event_bytes: int = 32 * 1024      # Segment's limit per event
    max_request_bytes: int = 500 * 1024   # per request, after gzip decompression
    max_batch_events: int = 2500
    trusted_proxies: tuple = ()           # X-Forwarded-For is believed only from these

    def largest_record(self, source_name: str) -> int:
        """The most bytes a record of `source_name` can be: the collector refuses a larger one,
        and the pipeline's decode must accept this many (decode.max_record_bytes), or events
        the collector acknowledged would be dead letters `batch_too_large`."""
        return (self.max_request_bytes + self.max_batch_events * RECORD_BYTES_PER_EVENT
                + RECORD_BYTES_PER_RECORD + len(source_name.encode()) * 6)  # a name's JSON: \uXXXX at worst


class CollectorSettings(NamedTuple):
    sources: tuple = ()
    limits: CollectorLimits = CollectorLimits()
    # Where browsers reach the collector (collector.public_url, no trailing '/'): analytics.js's
    # settings point there. "" answers with the request's own Host and scheme.
    public_url: str = ""
    debugger: DebuggerSettings = DebuggerSettings()   # the `debugger:` section (docs/debugger.md)
