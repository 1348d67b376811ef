"""The dead-letter record (schemas/dead_letter.schema.json) and how stages build it.

A dead letter is the untouched input plus error attributes, so it can be replayed once
the cause is fixed: the payload is the exact bytes of the message when it held one
event, or the event object as it appeared in its batch envelope.
"""
import base64
import hashlib
from datetime import datetime, timezone

from pipeline import __version__
from transforms import jsonutil
from transforms.messages import Event, Rejection
from transforms.timeutil import format_time

STAGES = ("decode", "normalize", "contracts", "consent", "transform", "warehouse", "forwarding")


def encode_payload(data: bytes) -> tuple[str, str]:
    """(text, encoding): UTF-8 text when the bytes are UTF-8, else base64."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), "base64"


def decode_payload(text: str, encoding: str) -> bytes:
    """Inverse of encode_payload: the original bytes, for replay."""
    return base64.b64decode(text) if encoding == "base64" else text.encode("utf-8")


def dead_letter_id(stage: str, error_type: str, payload: bytes, source: str, position) -> str:
    """Stable key: the same message failing the same way is one dead letter however often it is
    read (a re-run, a redelivery), while two identical bad lines stay two dead letters."""
    head = "\x00".join((stage, error_type, source or "", str(position or ""), ""))
    return hashlib.sha256(head.encode("utf-8", "surrogatepass") + payload).hexdigest()[:32]


def make_record(stage: str, rejection: Rejection, payload: bytes, *, attributes: dict, source: str,
                received_at, position=None, message_id=None, destination=None, failed_at=None) -> dict:
    if stage not in STAGES:
        raise ValueError(f"unknown error stage {stage!r}")
    text, encoding = encode_payload(payload)
    index = (rejection.details or {}).get("batch_index")
    return {
        "dead_letter_id": dead_letter_id(stage, rejection.error_type, payload, source,
                                         position if index is None else f"{position}#{index}"),
        "error_stage": stage,
        "error_type": rejection.error_type,
        "error_message": " ".join(rejection.message.split()),  # one line for a person
        "error_details": rejection.details or {},
        "payload": text,
        "payload_encoding": encoding,
        "attributes": attributes or {},
        "message_id": message_id,
        "source": source,
        "received_at": received_at,
        "failed_at": failed_at or format_time(datetime.now(timezone.utc)),
        "pipeline_version": __version__,
        "destination": destination,
    }


def event_payload(event: Event) -> bytes:
    """The event's original input: its message bytes, or its object from the batch envelope."""
    return event.payload if event.payload is not None else jsonutil.dumps(event.original)


def from_event(stage: str, rejection: Rejection, event: Event, message_id=None, destination=None) -> dict:
    details = dict(rejection.details or {})
    if event.batch_index is not None:
        details["batch_index"] = event.batch_index
    return make_record(stage, rejection._replace(details=details), event_payload(event),
                       attributes=event.attributes, source=event.source, received_at=event.received_at,
                       position=event.position, message_id=message_id, destination=destination)
