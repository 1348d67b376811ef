"""Where accepted requests go. A record is one accepted request as one JSON line (a batch
envelope: see collector.requests); `put` returns only once its records are durable, so the
collector's 2xx means "in the sink"."""
from typing import Optional


class SinkUnavailable(Exception):
    """The sink cannot take records now; the collector answers 503 with Retry-After so SDKs
    retry. `retry_after` is in seconds."""

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


class Sink:
    """The interface every sink implements (spool, Pub/Sub, embedded)."""

    async def start(self) -> None:
        """Open clients and files; recover what a killed predecessor left."""

    async def put(self, records: list, attributes: Optional[list] = None) -> None:
        """Make `records` (bytes, one JSON object each, no newline) durable, or raise
        SinkUnavailable. Concurrent calls may share one write (group commit).

        `attributes`, when given, holds one dict per record: `source`, `received_at`,
        `content_type` (strings; the request's), which the Pub/Sub sink publishes as the message
        attributes. Sinks that keep only the record (spool, GCS: the envelope already holds
        source and receivedAt) ignore it; every sink accepts it."""
        raise NotImplementedError

    async def ready(self) -> bool:
        """Whether put would succeed now (GET /ready)."""
        return True

    async def close(self) -> None:
        """Stop taking records; make every record already accepted durable and handed off."""
