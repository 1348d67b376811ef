"""Decode: message bytes to Segment events; batch envelopes are split.

Outcomes of `decode_message`, one per event unit (so `events` can be conserved):
an Event, a Rejection with the payload it refers to, or a policy drop name.
A message refused before it could be split (not JSON, too large) is one event unit.
A batch envelope's top-level string `source` (the collector writes its source's name there)
becomes the source of its events and of their dead letters, in place of the transport's, and
each event's `source` field (so warehouse rows have a `source` column naming it).

A record the collector wrote (a batch envelope with a string `source` and `receivedAt`) may be
up to `max_record_bytes`, not `max_batch_bytes`: the collector enriches each event (receivedAt,
messageId, context.ip), so a request within Segment's 500 KB can become a record of 900 KB, and
the events of a request the collector acknowledged must not be refused whole for that.
"""
from typing import Iterator, NamedTuple, Union

import apache_beam as beam
from apache_beam import pvalue

from transforms import deadletter, jsonutil, metrics, timeutil
from transforms.fallible import DEAD_LETTERS, FallibleFn, apply_fallible
from transforms.messages import Event, RawMessage, Rejection

DEFAULT_MAX_EVENT_BYTES = 32 * 1024     # Segment's per-event limit
DEFAULT_MAX_BATCH_BYTES = 500 * 1024    # Segment's per-batch-request limit
# A collector record's limit: at least collector.CollectorLimits().largest_record(name) (912,200
# bytes + 6 per byte of the name, for the default limits); pipeline/config.py checks a config's.
DEFAULT_MAX_RECORD_BYTES = 1_000_000
# Objects and arrays nested deeper than this are refused (`too_deep`). Whatever comes later walks
# events recursively: Python's recursion limit (1,000 frames) broke a 1 KB line of 487 levels
# while Beam pickled it, orjson writes 254 levels at most, BigQuery nests 15. Real events use a
# handful; 64 leaves room and stays far from every limit downstream.
DEFAULT_MAX_DEPTH = 64
_BOM = b"\xef\xbb\xbf"
# Envelope fields the Segment batch API applies to every event that lacks its own.
_ENVELOPE_DEFAULTS = ("context", "integrations", "sentAt", "writeKey")


class DecodeLimits(NamedTuple):
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_depth: int = DEFAULT_MAX_DEPTH
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES  # for a record the collector wrote (module docstring)


class Refused(NamedTuple):
    rejection: Rejection
    payload: bytes                 # what the dead letter keeps: the message, or the batch member
    batch_index: Union[int, None] = None
    source: Union[str, None] = None    # for a batch's: its message's source and position, which
    position: Union[str, None] = None  # name the envelope's source when it has one (see decode_message)


class Dropped(NamedTuple):
    policy: str


def _too_large(data: bytes, limits: DecodeLimits) -> Union[Rejection, None]:
    if len(data) <= limits.max_event_bytes:
        return None
    if len(data) > limits.max_batch_bytes:
        kind = "batch_too_large" if b'"batch"' in data[:256] else "payload_too_large"
        limit = limits.max_batch_bytes if kind == "batch_too_large" else limits.max_event_bytes
        return Rejection(kind, f"message is {len(data)} bytes, over the {limit}-byte limit",
                         {"size_bytes": len(data), "limit_bytes": limit})
    return None  # between the two limits: fine for a batch, decided after parsing


def decode_message(message: RawMessage, received_at: str, limits: DecodeLimits) -> Iterator:
    data = message.data
    if data.startswith(_BOM):
        data = data[len(_BOM):]
    if not data.strip():
        yield Dropped("empty_message")
        return
    refused = _too_large(data, limits)
    if refused and len(data) > limits.max_record_bytes:
        yield Refused(refused, message.data)
        return
    # Over max_batch_bytes but within max_record_bytes: parsed, and kept only if the collector
    # wrote it; anything else is refused as before, whatever its content.
    try:
        obj = jsonutil.loads(data)
    except jsonutil.TooDeep:
        yield Refused(refused or _too_deep(limits), message.data)
        return
    except jsonutil.JSONError as exc:
        yield Refused(refused or Rejection("malformed_json", f"not valid JSON: {exc}"), message.data)
        return
    envelope = isinstance(obj, dict) and "batch" in obj and "type" not in obj
    if refused and not (envelope and isinstance(obj.get("source"), str) and isinstance(obj.get("receivedAt"), str)):
        yield Refused(refused, message.data)
        return
    named = obj.get("source") if envelope else None
    if not (isinstance(named, str) and named):
        named = None
    elif named != message.source:
        # the collector's source name: events and dead letters carry it; the transport's
        # moves into the position, so dead-letter ids still tell two files' lines apart
        message = message._replace(source=named, position=f"{message.source}:{message.position or ''}")
    # {"batch": [...]} takes two levels. A too-deep envelope is refused whole, as one event unit
    # keeping the message's bytes: a member that deep could not even be written back as JSON.
    if jsonutil.deeper_than(obj, limits.max_depth + (2 if envelope else 0), data) or (envelope and any(
            jsonutil.deeper_than(obj.get(k), limits.max_depth - 1) for k in _ENVELOPE_DEFAULTS if k in obj)):
        yield Refused(_too_deep(limits), message.data, source=message.source, position=message.position)
        return
    if envelope:
        yield from _split_batch(obj, message, received_at, limits, len(data), named)
        return
    if not isinstance(obj, dict):
        yield Refused(Rejection("not_an_object", f"a message must be a JSON object, got {jsonutil.kind(obj)}"),
                      message.data)
        return
    if len(data) > limits.max_event_bytes:
        yield Refused(Rejection("payload_too_large",
                                f"event is {len(data)} bytes, over the {limits.max_event_bytes}-byte limit",
                                {"size_bytes": len(data), "limit_bytes": limits.max_event_bytes}), message.data)
        return
    yield Event(obj, obj, message.data, message.attributes, message.source, received_at, None, message.position)


def _split_batch(envelope: dict, message: RawMessage, received_at: str, limits: DecodeLimits,
                 size: int, named: Union[str, None]) -> Iterator:
    members = envelope["batch"]
    if not isinstance(members, list):
        yield Refused(Rejection("invalid_batch", f'"batch" must be an array of events, got {jsonutil.kind(members)}'),
                      message.data, None, message.source, message.position)
        return
    if not members:
        yield Dropped("empty_batch")
        return
    defaults = {k: envelope[k] for k in _ENVELOPE_DEFAULTS if k in envelope}
    check_each = size > limits.max_event_bytes  # only then can a single member be over the limit

    for index, member in enumerate(members):
        if not isinstance(member, dict):
            yield Refused(Rejection("not_an_object", f"batch member must be a JSON object, got {jsonutil.kind(member)}",
                                    {"batch_index": index}), jsonutil.dumps(member), index, message.source,
                          message.position)
            continue
        if check_each:
            member_size = len(jsonutil.dumps(member))
            if member_size > limits.max_event_bytes:
                yield Refused(Rejection("payload_too_large",
                                        f"event is {member_size} bytes, over the {limits.max_event_bytes}-byte limit",
                                        {"size_bytes": member_size, "limit_bytes": limits.max_event_bytes,
                                         "batch_index": index}), jsonutil.dumps(member), index, message.source,
                              message.position)
                continue
        # The envelope's source name (the collector's), not the event's own `source`: the
        # collector wrote it from the write key, and a client must not label its events as
        # another source's. `member` itself stays as found (the Event's `original`).
        body = member
        if defaults:
            body = {**{k: v for k, v in defaults.items() if k not in member}, **member}
            if named is not None:
                body["source"] = named
        elif named is not None:
            body = {**member, "source": named}
        yield Event(body, member, None, message.attributes, message.source, received_at, index, message.position)


def _too_deep(limits: DecodeLimits) -> Rejection:
    return Rejection("too_deep", f"objects and arrays nest more than {limits.max_depth} levels deep "
                                 "(decode.max_depth)", {"limit": limits.max_depth})



class DecodeMessagesFn(FallibleFn):
    STAGE = "decode"

    def __init__(self, limits: DecodeLimits):
        self._limits = limits

    def attempt(self, message: RawMessage) -> list:
        received_at = message.received_at or timeutil.now_iso()  # no transport time: the read time
        outcomes = list(decode_message(message, received_at, self._limits))
        outputs, drops = [], []
        for outcome in outcomes:
            if isinstance(outcome, Event):
                outputs.append(outcome)
            elif isinstance(outcome, Refused):
                named = outcome.source is not None
                outputs.append(pvalue.TaggedOutput(DEAD_LETTERS, deadletter.make_record(
                    "decode", outcome.rejection, outcome.payload, attributes=message.attributes,
                    source=outcome.source if named else message.source, received_at=received_at,
                    position=outcome.position if named else message.position)))
            else:
                drops.append(outcome.policy)
        metrics.inc("read")  # counted once nothing can fail any more: see transforms.fallible
        metrics.inc("events", len(outcomes))
        for policy in drops:
            metrics.dropped(policy)
        return outputs

    def internal_errors(self, message: RawMessage, exc: Exception) -> list:
        """A message that broke decoding is one event unit, like one refused before splitting."""
        metrics.inc("read")
        metrics.inc("events")
        return super().internal_errors(message, exc)


class DecodeMessages(beam.PTransform):
    """RawMessage -> Event (main output) and dead-letter records (`dead_letters`)."""

    def __init__(self, limits: DecodeLimits = DecodeLimits()):
        super().__init__()
        self._limits = limits

    def expand(self, messages):
        return apply_fallible(messages, DecodeMessagesFn(self._limits))
