"""The dead-letter record (schemas/dead_letter.schema.json) and how stages build it.

A dead letter is the untouched input plus error attributes, so it can be replayed once
the cause is fixed: the payload is the exact bytes of the message when it held one
event, or the event object as it appeared in its batch envelope.
"""
import base64
import hashlib
import os
import sys
import traceback
from datetime import datetime, timezone

from transforms import __version__
from transforms import jsonutil
from transforms.messages import Event, RawMessage, Rejection
from transforms.timeutil import format_time

STAGES = ("decode", "normalize", "contracts", "consent", "transform", "experiments", "warehouse", "forwarding")
# Every error_type a stage writes (the stable codes of docs/warehouse.md#dead-letters): replay's
# --error_type is checked against them, and a test keeps them in step with the code.
ERROR_TYPES = ("internal_error", "malformed_json", "not_an_object", "invalid_batch", "unknown_type", "invalid_field",
               "missing_identity", "missing_event_name", "invalid_timestamp", "payload_too_large",
               "batch_too_large", "too_deep", "unplanned_event", "contract_violation", "invalid_consent",
               "transform_failed", "invalid_exposure", "insert_failed", "delivery_failed")


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


def last_line(exc: BaseException) -> str:
    """The traceback's last line: `ValueError: bad value`."""
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def raised_at(exc: BaseException) -> str:
    """Where it was raised, `transforms/normalize.py:12 in _resolve_times`: the innermost frame,
    its file as the import system finds it (without the worker's install path)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    return f"{_importable_path(frame.filename)}:{frame.lineno} in {frame.name}"


def _importable_path(filename: str) -> str:
    roots = sorted((p for p in sys.path if p and filename.startswith(p.rstrip(os.sep) + os.sep)), key=len)
    return os.path.relpath(filename, roots[-1]) if roots else os.path.basename(filename)


def internal_error(stage: str, exc: Exception) -> Rejection:
    """What an unanticipated exception becomes: `internal_error`, with its type, message and line."""
    where = raised_at(exc)
    return Rejection("internal_error", f"unexpected error in {stage}: {last_line(exc)[:500]} (at {where})",
                     {"exception_type": type(exc).__name__, "exception_message": str(exc)[:2000], "raised_at": where})


def for_input(stage: str, rejection: Rejection, item) -> dict:
    """The dead letter of one stage input: a RawMessage (before decoding) or an Event."""
    if isinstance(item, RawMessage):
        received_at = item.received_at or format_time(datetime.now(timezone.utc))  # as Decode stamps it
        return make_record(stage, rejection, item.data, attributes=item.attributes, source=item.source,
                           received_at=received_at, position=item.position)
    message_id = item.body.get("messageId") if isinstance(item.body, dict) else None
    return from_event(stage, rejection, item, message_id if isinstance(message_id, str) else None)
