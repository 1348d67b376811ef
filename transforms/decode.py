"""Decode: message bytes to Segment events; batch envelopes are split.

Outcomes of `decode_message`, one per event unit (so `events` can be conserved):
an Event, a Rejection with the payload it refers to, or a policy drop name.
A message refused before it could be split (not JSON, too large) is one event unit.
A batch envelope's top-level string `source` (the collector writes its source's name there)
becomes the source of its events and of their dead letters, in place of the transport's.
"""
from typing import Iterator, NamedTuple, Union

import apache_beam as beam
from apache_beam import pvalue

from transforms import deadletter, jsonutil, metrics, timeutil
from transforms.fallible import DEAD_LETTERS, FallibleFn, apply_fallible
from transforms.messages import Event, RawMessage, Rejection

DEFAULT_MAX_EVENT_BYTES = 32 * 1024     # Segment's per-event limit
DEFAULT_MAX_BATCH_BYTES = 500 * 1024    # Segment's per-batch-request limit
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


class Refused(NamedTuple):
    rejection: Rejection
    payload: bytes                 # what the dead letter keeps: the message, or the batch member
    batch_index: Union[int, None] = None
    source: Union[str, None] = None  # the envelope's source, when it names one (else the message's)


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
    if refused:
        yield Refused(refused, message.data)
        return
    try:
        obj = jsonutil.loads(data)
    except jsonutil.TooDeep:
        yield Refused(_too_deep(limits), message.data)
        return
    except jsonutil.JSONError as exc:
        yield Refused(Rejection("malformed_json", f"not valid JSON: {exc}"), message.data)
        return
    envelope = isinstance(obj, dict) and "batch" in obj and "type" not in obj
    if envelope:
        named = obj.get("source")
        if isinstance(named, str) and named:  # the collector's source name: events and dead letters carry it
            message = message._replace(source=named)
    # {"batch": [...]} takes two levels. A too-deep envelope is refused whole, as one event unit
    # keeping the message's bytes: a member that deep could not even be written back as JSON.
    if jsonutil.deeper_than(obj, limits.max_depth + (2 if envelope else 0), data) or (envelope and any(
            jsonutil.deeper_than(obj.get(k), limits.max_depth - 1) for k in _ENVELOPE_DEFAULTS if k in obj)):
        yield Refused(_too_deep(limits), message.data, source=message.source)
        return
    if envelope:
        yield from _split_batch(obj, message, received_at, limits, len(data))
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
                 size: int) -> Iterator:
    members = envelope["batch"]
    if not isinstance(members, list):
        yield Refused(Rejection("invalid_batch", f'"batch" must be an array of events, got {jsonutil.kind(members)}'),
                      message.data, source=message.source)
        return
    if not members:
        yield Dropped("empty_batch")
        return
    defaults = {k: envelope[k] for k in _ENVELOPE_DEFAULTS if k in envelope}
    check_each = size > limits.max_event_bytes  # only then can a single member be over the limit

    for index, member in enumerate(members):
        if not isinstance(member, dict):
            yield Refused(Rejection("not_an_object", f"batch member must be a JSON object, got {jsonutil.kind(member)}",
                                    {"batch_index": index}), jsonutil.dumps(member), index, message.source)
            continue
        if check_each:
            member_size = len(jsonutil.dumps(member))
            if member_size > limits.max_event_bytes:
                yield Refused(Rejection("payload_too_large",
                                        f"event is {member_size} bytes, over the {limits.max_event_bytes}-byte limit",
                                        {"size_bytes": member_size, "limit_bytes": limits.max_event_bytes,
                                         "batch_index": index}), jsonutil.dumps(member), index, message.source)
                continue
        body = member
        if defaults:
            body = {**{k: v for k, v in defaults.items() if k not in member}, **member}
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
                outputs.append(pvalue.TaggedOutput(DEAD_LETTERS, deadletter.make_record(
                    "decode", outcome.rejection, outcome.payload, attributes=message.attributes,
                    source=outcome.source or message.source, received_at=received_at, position=message.position)))
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
