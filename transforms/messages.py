"""The element types that flow between stages.

NamedTuples: cheap to build on the hot path, picklable across shuffles, immutable
so a stage cannot change what an earlier stage (or a dead letter) still refers to.
"""
from typing import NamedTuple, Optional


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
    original: dict            # the event object exactly as found in the message (never mutated)
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
