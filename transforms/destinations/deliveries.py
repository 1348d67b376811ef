"""A delivery: one event's mapped payload on its way to one destination, and what it becomes.

A delivery carries only what its request and its dead letter need (not the whole event), so
little crosses the batching shuffle or sits in state, and it has an explicit coder: state a
running job holds must stay readable by the next version (Dataflow's --update).

A settled batch is also one outcome row for the warehouse's `_deliveries` table
(transforms.warehouse.planner.DELIVERY_COLUMNS): delivered or failed, the last answer's status,
the attempts, their summed request time and the batch's message ids, so "did event X reach
destination Y" is one query. Its `delivery_id` is a hash of the destination, the batch's
Idempotency-Key (its message ids) and the time of its first request: the same outcome written
twice (a write retried) is one row, while a batch requested again is a row of its own: a replay,
or a bundle retried after its requests went out (the receiver saw the batch twice, under the same
Idempotency-Key; the first row is there when that bundle got as far as writing it). Rows are
never merged across requests: each stands for requests that were made.
"""
import hashlib
from datetime import datetime, timezone
from typing import NamedTuple, Optional

from apache_beam import coders, pvalue
from apache_beam.coders.coder_impl import create_InputStream

from transforms import deadletter, jsonutil, metrics
from transforms.destinations.delivery import Outcome
from transforms.fallible import DEAD_LETTERS
from transforms.messages import Event, Rejection
from transforms.timeutil import format_time


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


def settle(name: str, deliveries: list, last: Outcome, attempts: int, requested_at: float,
           latency: float) -> list:
    """A batch's final outcome counted, and its outputs: its `_deliveries` row (the main output)
    and, when it failed, its dead letters (one per event). requested_at: wall-clock seconds of
    its first request; latency: seconds its requests took, summed."""
    record = outcome_record(name, deliveries, requested_at, attempts, latency, last.ok, last.status,
                            None if last.ok else last.detail)
    if last.ok:
        metrics.inc(f"forwarded.{name}", len(deliveries))
        return [record]
    metrics.inc(f"destination.{name}.failed", len(deliveries))
    details = {"destination": name, "status": last.status, "attempts": attempts, **(last.internal or {})}
    rejection = Rejection("internal_error" if last.internal else "delivery_failed", f"{name}: {last.detail}", details)
    return [record] + [pvalue.TaggedOutput(DEAD_LETTERS, dead_letter(d, rejection)) for d in deliveries]


def outcome_record(name: str, deliveries: list, requested_at: float, attempts: Optional[int],
                   latency: Optional[float], delivered: bool, http_status: Optional[int],
                   error: Optional[str]) -> dict:
    """A `_deliveries` row (a JSON-ready dict). attempts and latency are None when not known (the
    forwarding code itself broke); http_status None when no HTTP answer came (or Pub/Sub)."""
    key = batch_key(deliveries)
    requested = format_time(datetime.fromtimestamp(requested_at, timezone.utc))
    row_id = hashlib.sha256(f"{name}\n{key}\n{requested}".encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return {"delivery_id": row_id, "destination": name, "requested_at": requested,
            "status": "delivered" if delivered else "failed", "http_status": http_status, "attempts": attempts,
            "latency_ms": None if latency is None else round(latency * 1000, 3),
            "message_ids": [d.message_id for d in deliveries], "idempotency_key": key, "error_message": error}


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
    requested_at: Optional[float] = None  # wall-clock seconds of its first request (None: none made yet)
    latency: float = 0.0      # seconds its requests have taken so far


class PendingCoder(coders.Coder):
    """The first four fields as the first release wrote them, then the two added for
    `_deliveries` (requested_at, latency). A batch that waited in the state of a job started
    before them decodes with none: no first request time known, no latency counted so far."""
    _FIELDS = coders.TupleCoder([coders.VarIntCoder(), _FLOAT, _FLOAT, coders.IterableCoder(DeliveryCoder())])
    _ADDED = coders.TupleCoder([coders.NullableCoder(_FLOAT), _FLOAT])

    def encode(self, p: Pending) -> bytes:
        return self._FIELDS.encode(tuple(p[:4])) + self._ADDED.encode((p.requested_at, p.latency))

    def decode(self, data: bytes) -> Pending:
        stream = create_InputStream(data)  # the first release's bytes are self-delimiting: read them, then the rest
        attempts, born, next_at, deliveries = self._FIELDS.get_impl().decode_from_stream(stream, True)
        requested_at, latency = self._ADDED.get_impl().decode_from_stream(stream, False) if stream.size() \
            else (None, 0.0)
        return Pending(attempts, born, next_at, list(deliveries), requested_at, latency)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return Pending
