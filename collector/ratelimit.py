"""Rate limits per source: a token bucket counting events, not requests.

Each source's bucket holds at most `burst` tokens and refills at `events_per_second`; a request
takes one token per event it holds. A request that finds too few tokens is refused whole (429,
nothing kept) with `Retry-After` and `X-RateLimit-Reset`: the whole seconds (at least 1) until
the bucket holds enough for it, so a client that waits that long and sends the same request
again is let in (unless others of the same source took the tokens first).

A request holding more events than `burst` could never find enough tokens. It is let in when
the bucket is full, and leaves the bucket in debt (negative) by the difference, so the source's
long-run rate still holds: after a 2,500-event batch at 100 events/s with burst 500, the next
request waits the 20 s the excess took. Its Retry-After is the time until the bucket is full.

Tokens are taken before the sink is handed the request; when the sink cannot take it (503), the
app gives them back (`give_back`), so the SDK's retry after an outage is not refused 429.

Buckets are keyed by source name (names and keys are one to one; the key is not kept) and live
as long as the limiter: one per configured source, so memory is bounded by the config. `take`
does not await, so one event loop needs no lock; a lock makes it safe from threads too.
"""
import math
import threading
import time

from collector.requests import Refusal
from collector.settings import Source


class RateLimiter:
    def __init__(self, clock=time.monotonic):
        self._clock = clock          # seconds, monotonic; tests pass a fake
        self._buckets = {}           # source name -> [tokens, when they were counted]
        self._lock = threading.Lock()

    def take(self, source: Source, events: int) -> None:
        """Take `events` tokens from the source's bucket, or raise Refusal 429 taking none."""
        if events <= 0:
            return
        rate, burst = float(source.rate_limit.events_per_second), source.rate_limit.burst
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(source.name)
            if bucket is None:
                bucket = self._buckets[source.name] = [float(burst), now]
            tokens = min(float(burst), bucket[0] + (now - bucket[1]) * rate)
            bucket[0], bucket[1] = tokens, now
            needed = min(events, burst)   # more than burst: let in when the bucket is full
            if tokens >= needed:
                bucket[0] = tokens - events
                return
        wait = max(1, math.ceil((needed - tokens) / rate))
        raise Refusal(429, "rate_limited",
                      f"source {source.name} is over its rate limit ({rate:g} events/s, burst {burst}): "
                      f"send again in {wait} s",
                      {"retry-after": str(wait), "x-ratelimit-reset": str(wait)})

    def give_back(self, source: Source, events: int) -> None:
        """Return `events` tokens taken for a request that was not kept after all (the sink
        was unavailable): SDKs send it again after the outage, and must not meet a 429 for
        events never stored. The bucket still never holds more than burst."""
        if events <= 0:
            return
        rate, burst = float(source.rate_limit.events_per_second), float(source.rate_limit.burst)
        with self._lock:
            bucket = self._buckets.get(source.name)
            if bucket is None:
                return
            now = self._clock()
            tokens = min(burst, bucket[0] + (now - bucket[1]) * rate)
            bucket[0], bucket[1] = min(burst, tokens + events), now

    def tokens(self, source: Source) -> float:
        """The tokens the source's bucket holds now (for tests and metrics)."""
        with self._lock:
            bucket = self._buckets.get(source.name)
            if bucket is None:
                return float(source.rate_limit.burst)
            return min(float(source.rate_limit.burst),
                       bucket[0] + (self._clock() - bucket[1]) * source.rate_limit.events_per_second)
