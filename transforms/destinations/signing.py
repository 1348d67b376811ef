"""Request signing, so a receiver can tell a request came from this pipeline, unchanged and
recently:

    X-Sluice-Signature: t=1764115200,v1=<hex HMAC-SHA256(secret, "1764115200." + body)>

Receivers recompute the HMAC over the timestamp, a dot and the raw body, compare in constant
time, and refuse a timestamp older than their tolerance (replays). `verify` does exactly that.
"""
import hashlib
import hmac
import time

HEADER = "X-Sluice-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode("utf-8"), str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def sign(secret: str, body: bytes, now=time.time) -> str:
    return signature(secret, body, int(now()))


def verify(secret: str, header: str, body: bytes, tolerance: float = DEFAULT_TOLERANCE_SECONDS,
           now=time.time) -> bool:
    """Whether `header` is a valid signature of `body` made within `tolerance` seconds."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
        given = fields["v1"]
    except (ValueError, KeyError, AttributeError):
        return False
    if abs(now() - timestamp) > tolerance:
        return False
    expected = signature(secret, body, timestamp).split("v1=", 1)[1]
    return hmac.compare_digest(expected, given)
