"""The element types that flow between stages.

NamedTuples: cheap to build on the hot path, picklable across shuffles, immutable
so a stage cannot change what an earlier stage (or a dead letter) still refers to.
"""
from typing import NamedTuple, Optional

from apache_beam import coders


class RawMessage(NamedTuple):
    """One message as a source delivers it, before anything is parsed."""
    data: bytes
    attributes: dict          # transport attributes (Pub/Sub), {} for files
    source: str               # where it came from: "file:<path>", "pubsub:<subscription>"
    received_at: Optional[str] = None  # the transport's receive time (Pub/Sub publish time), ISO-8601
    position: Optional[str] = None     # where in the source: a file's line number, a Pub/Sub message id


class Event(NamedTuple):
    """One Segment event; `body` is raw after Decode and normalized after Normalize."""
    body: dict
    original: dict            # the event object exactly as found in the message (never mutated);
                              # after a shuffle only kept when payload is None (see EventCoder)
    payload: Optional[bytes]  # the message bytes when the message was this one event
    attributes: dict
    source: str
    received_at: str          # transport receive time (publish time; a file's modification time), else the read time
    batch_index: Optional[int] = None  # position in a batch envelope
    position: Optional[str] = None     # the message's position in its source (RawMessage.position)
    violations: Optional[list] = None  # contract violations stored with the event (allow / omit)
    store: bool = True                 # consent lets the warehouse store it
    destinations: tuple = ()           # destinations consent and `integrations` let it go to


class Rejection(NamedTuple):
    """Why a pure stage function refused its input (becomes a dead letter)."""
    error_type: str
    message: str
    details: Optional[dict] = None


# Explicit coders for the element types that cross a shuffle or sit in state. Beam would pickle
# a NamedTuple, and a pickle is tied to the class's module and fields: a new version could not
# read what a running job holds, so Dataflow's --update would refuse it (or worse, misread it).
# These encodings are fixed: changing one means a new job, not an update.

def _json(value) -> bytes:
    from transforms import jsonutil  # jsonutil keeps integers of any size exact
    return jsonutil.dumps(value)


def _unjson(data: bytes):
    from transforms import jsonutil
    return jsonutil.loads(data)


_STR, _BYTES = coders.StrUtf8Coder(), coders.BytesCoder()
_OPT_STR, _OPT_BYTES = coders.NullableCoder(_STR), coders.NullableCoder(_BYTES)
_OPT_INT = coders.NullableCoder(coders.VarIntCoder())


class RawMessageCoder(coders.Coder):
    """RawMessage: data, attributes (JSON), source, received_at, position."""
    _FIELDS = coders.TupleCoder([_BYTES, _BYTES, _STR, _OPT_STR, _OPT_STR])

    def encode(self, m: RawMessage) -> bytes:
        return self._FIELDS.encode((m.data, _json(m.attributes or {}), m.source, m.received_at, m.position))

    def decode(self, data: bytes) -> RawMessage:
        raw, attributes, source, received_at, position = self._FIELDS.decode(data)
        return RawMessage(raw, _unjson(attributes), source, received_at, position)

    def is_deterministic(self) -> bool:
        return True

    def to_type_hint(self):
        return RawMessage


class EventCoder(coders.Coder):
    """Event: its JSON parts as JSON, the rest field by field. `original` travels only for a
    batch member: an event that arrived alone has its bytes in `payload`, which is what its dead
    letter keeps, and nothing after Normalize reads `original` (it comes back as None)."""
    _FIELDS = coders.TupleCoder([_BYTES, _OPT_BYTES, _OPT_BYTES, _BYTES, _STR, _STR, _OPT_INT, _OPT_STR,
                                 _OPT_BYTES, coders.BooleanCoder(), coders.IterableCoder(_STR)])

    def encode(self, e: Event) -> bytes:
        original = None if e.payload is not None or e.original is None else _json(e.original)
        return self._FIELDS.encode((
            _json(e.body), original, e.payload, _json(e.attributes or {}), e.source, e.received_at, e.batch_index,
            e.position, None if e.violations is None else _json(e.violations), e.store, list(e.destinations)))

    def decode(self, data: bytes) -> Event:
        (body, original, payload, attributes, source, received_at, batch_index, position, violations, store,
         destinations) = self._FIELDS.decode(data)
        return Event(_unjson(body), None if original is None else _unjson(original), payload, _unjson(attributes), source,
                     received_at, batch_index, position, None if violations is None else _unjson(violations),
                     store, tuple(destinations))

    def is_deterministic(self) -> bool:
        return False  # JSON objects keep their key order, which equal events need not share

    def to_type_hint(self):
        return Event


class JsonCoder(coders.Coder):
    """A JSON value (a dead-letter record) as compact JSON."""

    def encode(self, value) -> bytes:
        return _json(value)

    def decode(self, data: bytes):
        return _unjson(data)

    def is_deterministic(self) -> bool:
        return False


coders.registry.register_coder(RawMessage, RawMessageCoder)
coders.registry.register_coder(Event, EventCoder)
