"""Which warehouse API failures are worth retrying, and how: bounded exponential backoff
with full jitter (google-api-core's Retry), the same policy for every call.

Transient: 408, 429 and 5xx answers, BigQuery's retryable error reasons, timeouts and
connection resets. Everything else (400 invalid, 403, 404) is permanent: retrying would
only delay the dead letter.
"""
import requests
from google.api_core import exceptions
from google.api_core.retry import Retry

TRANSIENT_STATUS = frozenset((408, 429, 500, 502, 503, 504))
TRANSIENT_REASONS = frozenset(("rateLimitExceeded", "backendError", "internalError", "badGateway"))


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, exceptions.GoogleAPICallError):
        if exc.code in TRANSIENT_STATUS:
            return True
        reasons = {e.get("reason") for e in (exc.errors or []) if isinstance(e, dict)}
        return bool(reasons & TRANSIENT_REASONS)
    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                            ConnectionError, TimeoutError))


def policy(deadline: float, initial: float = 0.25, maximum: float = 8.0) -> Retry:
    """Retry transient failures with delays drawn uniformly from [0, d], d doubling from
    `initial` up to `maximum`, until `deadline` seconds have passed; then the last error
    is raised."""
    return Retry(predicate=is_transient, initial=initial, maximum=maximum, multiplier=2.0, timeout=deadline)
