"""collector.ratelimit: a token bucket per source counting events, on a fake clock."""
import json
import threading

import pytest

from collector.ratelimit import RateLimiter
from collector.requests import Refusal
from collector.settings import RateLimit, Source


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def limited(limiter, source, events) -> Refusal:
    with pytest.raises(Refusal) as info:
        limiter.take(source, events)
    return info.value


SOURCE = Source("web", "k", rate_limit=RateLimit(events_per_second=10, burst=50))


def test_burst_then_refill_at_the_rate():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.take(SOURCE, 30)
    limiter.take(SOURCE, 20)
    refusal = limited(limiter, SOURCE, 1)
    assert (refusal.status, refusal.code) == (429, "rate_limited")
    assert refusal.headers == {"retry-after": "1", "x-ratelimit-reset": "1"}
    assert json.loads(refusal.body())["code"] == "rate_limited"
    clock.now += 0.5                      # 5 tokens back
    limiter.take(SOURCE, 5)
    refusal = limited(limiter, SOURCE, 25)
    assert refusal.headers["retry-after"] == "3"      # 25 tokens at 10/s: 2.5 s, whole seconds up
    clock.now += 2.5
    limiter.take(SOURCE, 25)


def test_a_refused_request_takes_nothing():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.take(SOURCE, 45)
    limited(limiter, SOURCE, 10)
    limiter.take(SOURCE, 5)               # the 5 left are still there


def test_the_bucket_never_holds_more_than_burst():
    clock = Clock()
    limiter = RateLimiter(clock)
    clock.now += 3600
    assert limiter.tokens(SOURCE) == 50
    limiter.take(SOURCE, 50)
    limited(limiter, SOURCE, 1)


def test_more_events_than_burst_pass_when_the_bucket_is_full_and_leave_a_debt():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.take(SOURCE, 10)
    refusal = limited(limiter, SOURCE, 200)    # never more than burst available: wait until full
    assert refusal.headers["retry-after"] == "1"
    clock.now += 1
    limiter.take(SOURCE, 200)                  # full: let in
    assert limiter.tokens(SOURCE) == -150
    refusal = limited(limiter, SOURCE, 1)
    assert refusal.headers["retry-after"] == "16"   # 151 tokens at 10/s
    clock.now += 15.1
    limiter.take(SOURCE, 1)


def test_sources_have_their_own_buckets():
    limiter = RateLimiter(Clock())
    other = Source("app", "k2", rate_limit=RateLimit(events_per_second=1, burst=1))
    limiter.take(SOURCE, 50)
    limiter.take(other, 1)
    limited(limiter, other, 1)
    limited(limiter, SOURCE, 1)


def test_zero_events_are_free():
    limiter = RateLimiter(Clock())
    limiter.take(SOURCE, 50)
    limiter.take(SOURCE, 0)


def test_retry_after_is_at_least_one_second():
    clock = Clock()
    fast = Source("fast", "k", rate_limit=RateLimit(events_per_second=10_000, burst=10))
    limiter = RateLimiter(clock)
    limiter.take(fast, 10)
    assert limited(limiter, fast, 1).headers["retry-after"] == "1"


def test_threads_never_take_more_than_the_bucket_holds():
    limiter = RateLimiter(Clock())       # the clock stands still: exactly burst events pass
    source = Source("t", "k", rate_limit=RateLimit(events_per_second=1, burst=1000))
    passed = []

    def worker():
        for _ in range(500):
            try:
                limiter.take(source, 1)
                passed.append(1)
            except Refusal:
                pass

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(passed) == 1000
