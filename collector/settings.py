"""What the collector is configured with: the `sources:` and `collector:` config sections,
typed (pipeline/config.py reads and checks them; defaults are Segment's limits and the
SignalSmith plans table's rate)."""
from typing import NamedTuple


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


class CollectorLimits(NamedTuple):
    max_event_bytes: int = 32 * 1024      # Segment's limit per event
    max_request_bytes: int = 500 * 1024   # per request, after gzip decompression
    max_batch_events: int = 2500
    trusted_proxies: tuple = ()           # X-Forwarded-For is believed only from these


class CollectorSettings(NamedTuple):
    sources: tuple = ()
    limits: CollectorLimits = CollectorLimits()
