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


def test_give_back_returns_tokens_never_beyond_burst():
    clock = Clock()
    limiter = RateLimiter(clock)
    limiter.take(SOURCE, 50)
    limiter.give_back(SOURCE, 30)
    assert limiter.tokens(SOURCE) == 30
    limiter.give_back(SOURCE, 100)
    assert limiter.tokens(SOURCE) == 50
    limiter.give_back(Source("other", "k2"), 5)   # a bucket never taken from stays as it is
    assert limiter.tokens(Source("other", "k2")) == Source("other", "k2").rate_limit.burst


class OutageSink:
    """The real spool sink, with an outage switched on by the test (a fault no real spool gives
    on demand): while `down`, put raises SinkUnavailable as the spool does when it cannot write."""

    def __init__(self, directory):
        from collector.sinks.spool import SpoolSink
        self.spool, self.down = SpoolSink(directory), False

    async def put(self, records, attributes=None):
        if self.down:
            from collector.sinks import SinkUnavailable
            raise SinkUnavailable("the disk is full", retry_after=2)
        await self.spool.put(records)


def test_a_request_the_sink_could_not_take_gives_its_tokens_back(tmp_path):
    """An SDK retries a 503 after the outage: it must not then be refused 429 for events that
    were never stored (the bucket refills at one event in 1,000 s here, so only a refund helps)."""
    import asyncio
    import base64

    from collector.app import App
    from collector.settings import CollectorSettings
    source = Source("web", "key-web", rate_limit=RateLimit(events_per_second=0.001, burst=5))
    sink = OutageSink(tmp_path / "spool")
    app = App(CollectorSettings((source,)), sink)
    body = json.dumps({"batch": [{"type": "track", "event": "e", "userId": "u", "messageId": f"m{i}"}
                                 for i in range(5)]}).encode()

    async def post():
        sent, messages = [], [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)
        auth = b"Basic " + base64.b64encode(b"key-web:")
        await app({"type": "http", "method": "POST", "path": "/v1/batch", "query_string": b"",
                   "headers": [(b"authorization", auth), (b"content-type", b"application/json")],
                   "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 80), "scheme": "http"}, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"])

    async def main():
        await sink.spool.start()
        sink.down = True
        status, headers = await post()
        assert (status, headers[b"retry-after"]) == (503, b"2")
        sink.down = False
        assert (await post())[0] == 200      # the SDK's retry: the same 5 events
        assert (await post())[0] == 429      # and now the bucket is spent
        await sink.spool.close()
    asyncio.run(main())
    lines = [line for path in (tmp_path / "spool").glob("*.jsonl") for line in path.read_bytes().splitlines()]
    assert len(lines) == 1 and len(json.loads(lines[0])["batch"]) == 5
