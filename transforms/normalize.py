"""Normalize: the Segment spec's common fields, identity rules and timestamps.

`normalize_event` is pure: a raw event body in, a new normalized body (or a Rejection)
out; the input dict is never mutated, so the original stays available for dead letters.

Timestamps follow Segment: the client's clock time is `originalTimestamp` (an explicit
`originalTimestamp`, else the client's `timestamp`); when the client also sent `sentAt`,
`timestamp = receivedAt - (sentAt - originalTimestamp)` corrects device clock skew;
otherwise `timestamp` is the client's time, or `receivedAt` when the client sent none.
"""
import hashlib

import apache_beam as beam

from transforms import jsonutil
from transforms.fallible import FallibleFn, apply_fallible
from transforms.messages import Event, Rejection
from transforms.timeutil import format_time, is_canonical_utc, parse_time

EVENT_TYPES = frozenset(("track", "identify", "page", "screen", "group", "alias"))
TIME_FIELDS = ("timestamp", "originalTimestamp", "sentAt", "receivedAt")
# Fields whose value must be an object when present, by the spec.
_OBJECT_FIELDS = ("context", "properties", "traits", "integrations")


def derive_message_id(original: dict) -> str:
    """Deterministic id for an event sent without one: the same event always gets the same id."""
    return "sluice-" + hashlib.sha256(jsonutil.dumps(original, sort_keys=True)).hexdigest()[:32]


def _identifier(value):
    """Segment ids are strings; libraries also send numbers. Anything else is no id."""
    if type(value) is str:
        return value if value and (value[0] > " " or value.strip()) else None
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return str(value)
    return None


def _check_identity(body: dict, kind: str, ids: dict):
    if kind == "alias":
        required = ("userId", "previousId")
        missing = [f for f in required if ids.get(f) is None]
        if missing:
            return Rejection("missing_identity", f"alias needs {' and '.join(required)}; missing {', '.join(missing)}",
                             {"missing": missing})
        return None
    if ids.get("userId") is None and ids.get("anonymousId") is None:
        return Rejection("missing_identity", f"{kind} needs a userId or an anonymousId (a non-empty string)",
                         {"missing": ["userId", "anonymousId"]})
    if kind == "group" and ids.get("groupId") is None:
        return Rejection("missing_identity", "group needs a groupId", {"missing": ["groupId"]})
    return None


def _canonical(value: str, parsed) -> str:
    return value if is_canonical_utc(value) else format_time(parsed)


def _resolve_times(body: dict, transport_received_at: str, trust_event_received_at: bool):
    parsed = {}
    for field in TIME_FIELDS:
        value = body.get(field)
        if value is None:
            continue
        try:
            parsed[field] = (value, parse_time(value))
        except ValueError as exc:
            return Rejection("invalid_timestamp", f"{field} is not an ISO-8601 time: {exc}",
                             {"field": field, "value": str(value)[:100]})
    received = parsed.get("receivedAt") if trust_event_received_at else None
    received = received or (transport_received_at, parse_time(transport_received_at))
    original = parsed.get("originalTimestamp") or parsed.get("timestamp")
    sent = parsed.get("sentAt")
    times = {"receivedAt": _canonical(*received)}
    if original is not None and sent is not None:
        try:
            times["timestamp"] = format_time(received[1] - (sent[1] - original[1]))
        except OverflowError:
            return Rejection("invalid_timestamp", "clock-skew correction leaves the supported time range",
                             {"field": "timestamp"})
    else:
        times["timestamp"] = _canonical(*(original or received))
    if original is not None:
        times["originalTimestamp"] = _canonical(*original)
    if sent is not None:
        times["sentAt"] = _canonical(*sent)
    return times


def _check_shape(body: dict):
    """(type, ids) of a well-formed event, or a Rejection: the checks every event passes,
    whether it arrived so or was changed by a transformation."""
    kind = body.get("type")
    if kind not in EVENT_TYPES:
        kind = kind.lower() if isinstance(kind, str) else kind
    if kind not in EVENT_TYPES:
        return Rejection("unknown_type", f"type must be one of {', '.join(sorted(EVENT_TYPES))}; got {str(kind)[:60]!r}",
                         {"type": kind if isinstance(kind, (str, type(None))) else str(kind)[:60]})
    for field in _OBJECT_FIELDS:
        value = body.get(field)
        if value is not None and not isinstance(value, dict):
            return Rejection("invalid_field", f"{field} must be an object", {"field": field})
    ids = {f: _identifier(body.get(f)) for f in ("userId", "anonymousId", "previousId", "groupId")}
    rejection = _check_identity(body, kind, ids)
    if rejection:
        return rejection
    if kind == "track":
        name = body.get("event")
        if not isinstance(name, str) or not name.strip():
            return Rejection("missing_event_name", "track needs an event name (a non-empty string)")
    return kind, ids


def _with_ids(body: dict, kind: str, ids: dict) -> dict:
    normalized = dict(body)
    normalized["type"] = kind
    for field, value in ids.items():
        if value is not None:
            normalized[field] = value
        else:
            normalized.pop(field, None)
    return normalized


def normalize_event(body: dict, transport_received_at: str, trust_event_received_at: bool = True,
                    original: dict = None):
    """Return the normalized body, or a Rejection.

    trust_event_received_at: keep an event's own `receivedAt` (file backfills of events that
    Segment already received); a live transport (Pub/Sub) sets False so its publish time wins.
    original: the event as found in its message (before batch-envelope defaults were
    merged), from which a missing messageId is derived; defaults to `body`.
    """
    shape = _check_shape(body)
    if isinstance(shape, Rejection):
        return shape
    times = _resolve_times(body, transport_received_at, trust_event_received_at)
    if isinstance(times, Rejection):
        return times
    normalized = _with_ids(body, *shape)
    normalized.update(times)
    message_id = _identifier(body.get("messageId"))
    normalized["messageId"] = message_id or derive_message_id(original if original is not None else body)
    return normalized


def revalidate(body: dict):
    """A normalized event that a transformation (rules, a UDF) changed, checked again: the
    same shape rules; times must still parse (they are canonicalized, not recomputed);
    messageId, timestamp and receivedAt must still be there. The checked body, or a Rejection."""
    shape = _check_shape(body)
    if isinstance(shape, Rejection):
        return shape
    normalized = _with_ids(body, *shape)
    for field in TIME_FIELDS:
        value = body.get(field)
        if value is None:
            if field in ("timestamp", "receivedAt"):
                return Rejection("invalid_timestamp", f"{field} was removed", {"field": field})
            continue
        try:
            normalized[field] = _canonical(value, parse_time(value))
        except ValueError as exc:
            return Rejection("invalid_timestamp", f"{field} is not an ISO-8601 time: {exc}",
                             {"field": field, "value": str(value)[:100]})
    message_id = _identifier(body.get("messageId"))
    if message_id is None:
        return Rejection("invalid_field", "messageId was removed or is not a string", {"field": "messageId"})
    normalized["messageId"] = message_id
    return normalized


class NormalizeEventsFn(FallibleFn):
    STAGE = "normalize"

    def __init__(self, trust_event_received_at: bool = True):
        self._trust = trust_event_received_at

    def attempt(self, event: Event):
        result = normalize_event(event.body, event.received_at, self._trust, event.original)
        if isinstance(result, Rejection):
            message_id = _identifier(event.body.get("messageId")) or derive_message_id(event.original)
            yield self.dead_letter(result, event, message_id)
            return
        yield event._replace(body=result)


class NormalizeEvents(beam.PTransform):
    """Event (raw body) -> Event (normalized body) and dead-letter records."""

    def __init__(self, trust_event_received_at: bool = True):
        super().__init__()
        self._trust = trust_event_received_at

    def expand(self, events):
        return apply_fallible(events, NormalizeEventsFn(self._trust))
