"""PubSubSink: one Pub/Sub message per record, `put` returning once every publish is confirmed.

The message's data is the record (the batch envelope the pipeline's streaming job decodes);
its attributes are `source`, `received_at` and `content_type`. The caller passes them (the
request's content type is nowhere else); `source` and `received_at` missing from what it
passes are read from the record's envelope (`source`, `receivedAt`), so a bare put([record])
still names its source.

Publishing goes through google-cloud-pubsub's PublisherClient (PUBSUB_EMULATOR_HOST honoured),
batched for latency: a batch leaves after 5 ms or 500 messages, so concurrent requests share
RPCs without a lone request waiting. Every publish future is awaited on the event loop; a
failure, a timeout (the client's retries included) or a full client-side buffer is
SinkUnavailable. A publish that timed out may still land: the SDK's retry then sends it twice,
and the warehouse keeps one (events are keyed by messageId).
"""
import asyncio
import logging
import re
from typing import Optional

import orjson

from collector.sinks import Sink, SinkUnavailable
from collector.sinks.spool import check_records

log = logging.getLogger(__name__)

TOPIC = re.compile(r"^projects/[^/]+/topics/[^/]+$")
ATTRIBUTES = ("source", "received_at", "content_type")
MAX_ATTRIBUTE_VALUE_BYTES = 1024  # Pub/Sub's limit per attribute value
DEFAULT_TIMEOUT_SECONDS = 8.0     # SDKs time out at 10-15 s: answer 503 before they give up


def topic_path(target: str) -> str:
    """`pubsub://projects/P/topics/T` or `projects/P/topics/T` -> `projects/P/topics/T`."""
    path = target[len("pubsub://"):] if target.startswith("pubsub://") else target
    if not TOPIC.match(path):
        raise ValueError(f"not a Pub/Sub topic (pubsub://projects/P/topics/T): {target!r}")
    return path


def _fit(value) -> str:
    value = str(value)
    data = value.encode("utf-8")
    if len(data) <= MAX_ATTRIBUTE_VALUE_BYTES:
        return value
    return data[:MAX_ATTRIBUTE_VALUE_BYTES].decode("utf-8", "ignore")


def message_attributes(record: bytes, given: Optional[dict]) -> dict:
    """The message's attributes: those given (source, received_at, content_type), the first two
    read from the record's envelope when not given."""
    attributes = {k: _fit(v) for k, v in (given or {}).items() if k in ATTRIBUTES and v is not None}
    if "source" not in attributes or "received_at" not in attributes:
        try:
            envelope = orjson.loads(record)
        except orjson.JSONDecodeError:
            envelope = None
        if isinstance(envelope, dict):
            for name, key in (("source", "source"), ("received_at", "receivedAt")):
                if name not in attributes and isinstance(envelope.get(key), str):
                    attributes[name] = _fit(envelope[key])
    return attributes


class PubSubSink(Sink):
    def __init__(self, topic: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS, max_latency: float = 0.005,
                 max_messages: int = 500, max_bytes: int = 4 * 1000 * 1000,
                 max_outstanding_messages: int = 20_000, max_outstanding_bytes: int = 128 * 1024 * 1024,
                 ready_cache_seconds: float = 5.0):
        self.topic = topic_path(topic)
        self._timeout, self._ready_cache_seconds = timeout, ready_cache_seconds
        self._batch = dict(max_latency=max_latency, max_messages=max_messages, max_bytes=max_bytes)
        self._flow = dict(message_limit=max_outstanding_messages, byte_limit=max_outstanding_bytes)
        self._publisher = None
        self._retry = None
        self._ready = (float("-inf"), False)
        self._in_flight = 0
        self._idle: Optional[asyncio.Event] = None
        self._started = self._closing = False

    async def start(self) -> None:
        self._publisher = await asyncio.to_thread(self._make_publisher)
        self._idle = asyncio.Event()
        self._idle.set()
        self._started = True

    def _make_publisher(self):
        from google.api_core import exceptions, retry
        from google.cloud import pubsub_v1
        from google.cloud.pubsub_v1 import types
        # The publish RPC's own retries give up inside the put's deadline, so a put's 503 means
        # Pub/Sub did not confirm (the default retries for 60 s, longer than any SDK waits).
        self._retry = retry.Retry(
            predicate=retry.if_exception_type(exceptions.Aborted, exceptions.Cancelled, exceptions.DeadlineExceeded,
                                              exceptions.InternalServerError, exceptions.ResourceExhausted,
                                              exceptions.ServiceUnavailable, exceptions.Unknown),
            initial=0.1, maximum=1.0, multiplier=1.5, deadline=max(0.5, self._timeout - 0.5))
        return pubsub_v1.PublisherClient(
            batch_settings=types.BatchSettings(**self._batch),
            publisher_options=types.PublisherOptions(flow_control=types.PublishFlowControl(
                **self._flow, limit_exceeded_behavior=types.LimitExceededBehavior.ERROR)))

    async def put(self, records: list, attributes: Optional[list] = None) -> None:
        check_records(records)
        if attributes is not None and len(attributes) != len(records):
            raise ValueError(f"{len(attributes)} attribute sets for {len(records)} records")
        if not self._started or self._closing:
            raise SinkUnavailable("the Pub/Sub sink is closed" if self._closing else "the Pub/Sub sink is not started")
        if not records:
            return
        from google.cloud.pubsub_v1.publisher import exceptions as publisher_errors
        self._in_flight += 1
        self._idle.clear()
        futures = []
        try:
            try:
                for i, record in enumerate(records):
                    futures.append(asyncio.wrap_future(self._publisher.publish(
                        self.topic, bytes(record), retry=self._retry, timeout=self._timeout,
                        **message_attributes(record, attributes[i] if attributes else None))))
            except publisher_errors.FlowControlLimitError:
                raise SinkUnavailable("Pub/Sub is behind: the publisher's buffer is full", 1) from None
            try:
                async with asyncio.timeout(self._timeout):
                    await asyncio.gather(*futures)
            except TimeoutError:
                raise SinkUnavailable(f"Pub/Sub did not confirm within {self._timeout:g} s", 2) from None
            except Exception as exc:  # noqa: BLE001 - whatever the client raised, the records are not confirmed
                raise SinkUnavailable(f"Pub/Sub did not take the records: {type(exc).__name__}: {exc}") from exc
            self._ready = (asyncio.get_running_loop().time(), True)
        finally:
            for future in futures:  # a failure in one leaves the others' outcomes unretrieved
                future.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def ready(self) -> bool:
        """Whether the topic exists, asked at most every few seconds (a recent publish counts)."""
        if not self._started or self._closing:
            return False
        loop = asyncio.get_running_loop()
        at, answer = self._ready
        if loop.time() - at < self._ready_cache_seconds:
            return answer
        try:
            answer = await asyncio.wait_for(asyncio.to_thread(self._topic_exists), 3.0)
        except Exception:  # noqa: BLE001 - unreachable, whatever the reason
            answer = False
        self._ready = (loop.time(), answer)
        return answer

    def _topic_exists(self) -> bool:
        from google.api_core import exceptions
        try:
            self._publisher.get_topic(request={"topic": self.topic}, timeout=2.0, retry=None)
            return True
        except exceptions.NotFound:
            log.warning("Pub/Sub topic %s does not exist", self.topic)
            return False
        except exceptions.PermissionDenied:
            return True  # it answered: the publisher role may publish without reading the topic

    async def close(self) -> None:
        if self._closing or not self._started:
            self._closing = True
            return
        self._closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), self._timeout + 1)
        except asyncio.TimeoutError:
            log.error("Pub/Sub sink closed with %d puts still unconfirmed", self._in_flight)
        await asyncio.to_thread(self._publisher.stop)
