"""Publishing to a Pub/Sub topic from any runner: dead letters now, destinations later.

Beam's WriteToPubSub is native only on Dataflow streaming; a DoFn with the client library
works in batch and streaming, on every runner. The client is made in setup() (never pickled)
and honours PUBSUB_EMULATOR_HOST. finish_bundle waits for every publish of the bundle and
raises if one failed, so the runner retries the bundle: delivery is at least once.
"""
import apache_beam as beam
import orjson

from transforms import deadletter, metrics, parking

# Pub/Sub's limits on attributes (https://cloud.google.com/pubsub/quotas#resource_limits).
MAX_ATTRIBUTE_VALUE_BYTES = 1024
# Dead-letter fields published as attributes; the payload is the message data.
DEAD_LETTER_ATTRIBUTES = ("dead_letter_id", "error_stage", "error_type", "error_message", "message_id",
                          "source", "received_at", "failed_at", "pipeline_version", "destination")


def _fit(value: str) -> tuple:
    """(value cut to Pub/Sub's attribute limit on a character boundary, whether it was cut)."""
    data = value.encode("utf-8")
    if len(data) <= MAX_ATTRIBUTE_VALUE_BYTES:
        return value, False
    return data[:MAX_ATTRIBUTE_VALUE_BYTES].decode("utf-8", "ignore"), True


def dead_letter_message(record: dict) -> tuple:
    """(data, attributes) for one dead-letter record: the original payload bytes as data;
    the error fields, the error details and the original attributes (both as JSON) as
    attributes. A value past Pub/Sub's 1 KB limit is cut and named in `truncated`."""
    data = deadletter.decode_payload(record["payload"], record["payload_encoding"])
    attributes, truncated = {}, []
    fields = [(name, record.get(name)) for name in DEAD_LETTER_ATTRIBUTES]
    fields.append(("error_details", orjson.dumps(record.get("error_details") or {}).decode()))
    fields.append(("attributes", orjson.dumps(record.get("attributes") or {}).decode()))
    for name, value in fields:
        if value is None:
            continue
        attributes[name], cut = _fit(str(value))
        if cut:
            truncated.append(name)
    if truncated:
        attributes["truncated"] = ",".join(truncated)
    return data, attributes


class PublishFn(beam.DoFn):
    """Publishes (data, attributes) pairs to one topic; counts `published.<counter>`.
    keep_open: the client is parked between bundles (local streaming; see transforms.parking)."""

    def __init__(self, topic: str, counter: str, keep_open: bool = False):
        self._topic, self._counter_name, self._keep_open = topic, counter, keep_open
        self._client, self._futures = None, []

    def setup(self):
        self._client = (self._keep_open and parking.take("publisher")) or _Publisher()

    def start_bundle(self):
        self._futures = []

    def process(self, message):
        data, attributes = message
        self._futures.append(self._client.publish(self._topic, data, **attributes))

    def finish_bundle(self):
        futures, self._futures = self._futures, []
        for future in futures:
            future.result(timeout=120)  # raises: the runner retries the bundle
        if futures:
            metrics.inc("published." + self._counter_name, len(futures))

    def teardown(self):
        if self._client is not None:
            if self._keep_open:
                parking.park("publisher", self._client)
            else:
                self._client.close()
            self._client = None


class _Publisher:
    """google-cloud-pubsub's PublisherClient (it honours PUBSUB_EMULATOR_HOST), with close()."""

    def __init__(self):
        from google.cloud import pubsub_v1
        self._client = pubsub_v1.PublisherClient()

    def publish(self, topic: str, data: bytes, **attributes):
        return self._client.publish(topic, data, **attributes)

    def close(self) -> None:
        self._client.stop()


class PublishDeadLetters(beam.PTransform):
    """Dead-letter records -> the topic, one message each (see dead_letter_message)."""

    def __init__(self, topic: str, keep_open: bool = False):
        super().__init__()
        self._topic, self._keep_open = topic, keep_open

    def expand(self, records):
        return (records
                | "AsMessages" >> beam.Map(dead_letter_message)
                | "Publish" >> beam.ParDo(PublishFn(self._topic, "dead_letters", self._keep_open)))
