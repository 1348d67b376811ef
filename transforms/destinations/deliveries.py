"""A delivery: one event's mapped payload on its way to one destination, and what it becomes.

A delivery carries only what its request and its dead letter need (not the whole event), so
little crosses the batching shuffle or sits in state, and it has an explicit coder: state a
running job holds must stay readable by the next version (Dataflow's --update).
"""
import hashlib
from typing import NamedTuple, Optional

from apache_beam import coders, pvalue

from transforms import deadletter, jsonutil, metrics
from transforms.destinations.delivery import Outcome
from transforms.fallible import DEAD_LETTERS
from transforms.messages import Event, Rejection


class Delivery(NamedTuple):
    destination: str
    payload: bytes            # the mapped payload, as JSON
    message_id: str
    ready_at: float           # wall-clock seconds when selected (a batch's age counts from its oldest)
    original: bytes           # the event's original input: its dead letter's payload
    attributes: dict
    source: str
    received_at: Optional[str] = None
    position: Optional[str] = None
    batch_index: Optional[int] = None


def delivery(name: str, payload: bytes, event: Event, now: float) -> Delivery:
    return Delivery(name, payload, event.body.get("messageId", ""), now, deadletter.event_payload(event),
                    event.attributes, event.source, event.received_at, event.position, event.batch_index)


def shard(message_id: str, shards: int) -> int:
    digest = hashlib.blake2b(message_id.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(digest, "big") % shards


def batch_key(deliveries: list) -> str:
    """The Idempotency-Key of a batch: the same on every attempt at it."""
    ids = "\n".join(d.message_id for d in deliveries)
    return hashlib.sha256(ids.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def dead_letter(item: Delivery, rejection: Rejection) -> dict:
    details = dict(rejection.details or {})
    if item.batch_index is not None:
        details["batch_index"] = item.batch_index
    return deadletter.make_record("forwarding", rejection._replace(details=details), item.original,
                                  attributes=item.attributes, source=item.source, received_at=item.received_at,
                                  position=item.position, message_id=item.message_id,
                                  destination=item.destination)


def count_attempts(name: str, latencies, retried: int = 0) -> None:
    """Requests made (each with its latency) and retries scheduled. Counters are counted on the
    DoFn's own thread: Beam does not count what other threads count."""
    metrics.inc(f"destination.{name}.requests", len(latencies))
    if retried:
        metrics.inc(f"destination.{name}.retried", retried)
    for seconds in latencies:
        metrics.inc(f"destination.{name}.latency_us", int(seconds * 1_000_000))
        metrics.distribution(f"destination.{name}.latency_ms", int(seconds * 1000))


def settle(name: str, deliveries: list, last: Outcome, attempts: int) -> list:
    """A batch's final outcome counted; its dead letters (one per event) when it failed."""
    if last.ok:
        metrics.inc(f"forwarded.{name}", len(deliveries))
        return []
    metrics.inc(f"destination.{name}.failed", len(deliveries))
    details = {"destination": name, "status": last.status, "attempts": attempts, **(last.internal or {})}
    rejection = Rejection("internal_error" if last.internal else "delivery_failed", f"{name}: {last.detail}", details)
    return [pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(d, rejection)) for d in deliveries]


# -- coders ---------------------------------------------------------------------------------

_STR, _BYTES, _FLOAT = coders.StrUtf8Coder(), coders.BytesCoder(), coders.FloatCoder()
_OPT_STR = coders.NullableCoder(_STR)


class DeliveryCoder(coders.Coder):
    _FIELDS = coders.TupleCoder([_STR, _BYTES, _STR, _FLOAT, _BYTES, _BYTES, _STR, _OPT_STR, _OPT_STR,
                                 coders.NullableCoder(coders.VarIntCoder())])

    def encode(self, d: Delivery) -> bytes:
        return self._FIELDS.encode((d.destination, d.payload, d.message_id, d.ready_at, d.original,
                                    jsonutil.dumps(d.attributes or {}), d.source, d.received_at, d.position,
                                    d.batch_index))

    def decode(self, data: bytes) -> Delivery:
        fields = list(self._FIELDS.decode(data))
        fields[5] = jsonutil.loads(fields[5])
        return Delivery(*fields)

    def is_deterministic(self) -> bool:
        return False  # attributes are a JSON object in its own key order

    def to_type_hint(self):
        return Delivery


coders.registry.register_coder(Delivery, DeliveryCoder)


class Pending(NamedTuple):
    """A batch waiting for its next attempt (streaming state)."""
    attempts: int             # attempts made so far
    born: float               # wall-clock seconds: its oldest delivery's ready_at
    next_at: float            # wall-clock seconds of the next attempt
    deliveries: list


class PendingCoder(coders.Coder):
    _FIELDS = coders.TupleCoder([coders.VarIntCoder(), _FLOAT, _FLOAT, coders.IterableCoder(DeliveryCoder())])

    def encode(self, p: Pending) -> bytes:
        return self._FIELDS.encode(tuple(p))

    def decode(self, data: bytes) -> Pending:
        attempts, born, next_at, deliveries = self._FIELDS.decode(data)
        return Pending(attempts, born, next_at, list(deliveries))

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return Pending
