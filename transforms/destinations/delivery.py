"""Delivering one batch with retries.

408, 429 and 5xx answers, timeouts, resets and refused connections are transient: retried
with exponential backoff and full jitter, at most `max_attempts` times and while the batch is
younger than `max_age_seconds`. A `Retry-After` answer (seconds or an HTTP date) sets the next
wait instead, when it fits in the batch's remaining age. Any other answer is permanent: the
batch fails at once. A failed batch becomes one `delivery_failed` dead letter per event.
"""
import random
import time
from email.utils import parsedate_to_datetime
from typing import NamedTuple, Optional

from transforms import deadletter

TRANSIENT_STATUSES = frozenset({408, 429}) | frozenset(range(500, 600))


class RetryPolicy(NamedTuple):
    max_attempts: int = 6
    initial_backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    max_age_seconds: float = 300.0


class Outcome(NamedTuple):
    """One attempt: status (None when no answer came), whether it may be retried, and why."""
    ok: bool
    status: Optional[int]
    transient: bool
    detail: str                     # one line for a person (no secrets)
    retry_after: Optional[float] = None  # seconds the receiver asked us to wait
    internal: Optional[dict] = None  # the sender itself raised (a bug, not the receiver's answer): what and where


class Result(NamedTuple):
    delivered: bool
    attempts: int
    last: Outcome
    latencies: tuple                # seconds per attempt


def classify(status: int) -> bool:
    """Whether an HTTP status is worth retrying."""
    return status in TRANSIENT_STATUSES


def parse_retry_after(value, now=time.time) -> Optional[float]:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError, IndexError):
        return None


def backoff(attempt: int, policy: RetryPolicy, rand=random.random) -> float:
    """Full jitter: a random wait up to initial * 2^(attempt-1), capped."""
    ceiling = min(policy.max_backoff_seconds, policy.initial_backoff_seconds * (2 ** (attempt - 1)))
    return ceiling * rand()


def attempt(send) -> Outcome:
    """One call of send(); an exception it did not anticipate is a permanent, internal failure
    (the batch's events become internal_error dead letters), never a failed bundle."""
    try:
        return send()
    except Exception as exc:  # noqa: BLE001 - see the docstring
        error = deadletter.internal_error("forwarding", exc)
        return Outcome(False, None, False, error.message, internal=error.details)


def next_wait(outcome: Outcome, attempts: int, policy: RetryPolicy, age: float, rand=random.random):
    """Seconds to wait before the next attempt, or None when the batch is settled: delivered,
    failed for good, out of attempts, or the wait would take it past max_age (age: the batch's
    age now, in seconds)."""
    if outcome.ok or not outcome.transient or attempts >= policy.max_attempts:
        return None
    wait = outcome.retry_after if outcome.retry_after is not None else backoff(attempts, policy, rand)
    return None if age + wait > policy.max_age_seconds else wait


def final(outcome: Outcome, attempts: int, policy: RetryPolicy) -> Outcome:
    """The outcome a settled batch is reported with: why retrying stopped, when it did early."""
    if outcome.ok or not outcome.transient or attempts >= policy.max_attempts:
        return outcome
    return outcome._replace(detail=f"{outcome.detail}; gave up: the next try would be past max_age_seconds "
                                   f"({policy.max_age_seconds:g})")


def deliver(send, policy: RetryPolicy, born: float, clock=time.monotonic, sleep=time.sleep,
            rand=random.random, on_retry=lambda outcome: None) -> Result:
    """Call send() -> Outcome until it succeeds, fails permanently, or runs out of attempts or
    age, sleeping between attempts (on the caller's thread: see the forwarding stage for who
    calls this). `born`: clock() when the batch's first event was ready."""
    latencies, attempts = [], 0
    while True:
        attempts += 1
        began = clock()
        outcome = attempt(send)
        latencies.append(clock() - began)
        wait = next_wait(outcome, attempts, policy, clock() - born, rand)
        if wait is None:
            return Result(outcome.ok, attempts, final(outcome, attempts, policy), tuple(latencies))
        on_retry(outcome)
        sleep(wait)
