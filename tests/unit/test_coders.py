"""The explicit coders of what crosses a shuffle or sits in state (transforms.messages,
transforms.destinations.deliveries): they round-trip, their bytes stay the same from release to
release (a running job's state must be readable by the next version: Dataflow's --update), and
the stateful steps of the Dataflow graph use them rather than pickles."""
import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners import pipeline_context

from pipeline import runners
from pipeline.config import validate
from pipeline.graph import build_warehouse_graph
from pipeline.sources import ReadPubSubMessages
from transforms.destinations.deliveries import Delivery, DeliveryCoder, Pending, PendingCoder
from transforms.messages import Event, EventCoder, JsonCoder, RawMessage, RawMessageCoder
from transforms.warehouse.sink import _ShardKey

NOW = "2026-11-23T10:00:00.000000Z"
BIG = 123456789012345678901234567890  # wider than 64 bits: JSON keeps it exact, a float would not
BODY = {"type": "track", "event": "Bestellung abgeschlossen ✓", "userId": "u", "messageId": "m1",
        "properties": {"total": BIG, "items": [1, 2.5, None, True], "nested": {"é": "ü"}}, "timestamp": NOW}


def round_trip(coder, value):
    return coder.decode(coder.encode(value))


@pytest.mark.parametrize("message", [
    RawMessage(b"\xff\x00not utf-8", {"k": "v"}, "pubsub:projects/p/subscriptions/s", NOW, "1234"),
    RawMessage(b"{}", {}, "file:/x.jsonl"),
])
def test_raw_messages_round_trip(message):
    assert round_trip(RawMessageCoder(), message) == message


def test_a_batch_member_round_trips_whole():
    member = Event(BODY, {**BODY, "messageId": "raw"}, None, {"a": "1"}, "file:/x", NOW, 3, "7",
                   [{"pointer": "/properties/total", "keyword": "type"}], False, ("crm", "audit"))
    decoded = round_trip(EventCoder(), member)
    assert decoded == member and decoded.body["properties"]["total"] == BIG


def test_an_event_that_arrived_alone_keeps_its_bytes_not_a_second_copy_of_its_object():
    """Its dead letter keeps `payload`; `original` is only read before any shuffle (Normalize)."""
    alone = Event(BODY, dict(BODY), b'{"type":"track"}', {}, "file:/x", NOW, None, "1")
    assert round_trip(EventCoder(), alone) == alone._replace(original=None)


def test_deliveries_and_waiting_batches_round_trip():
    item = Delivery("crm", b'{"id":"m1"}', "m1", 1764590400.25, b'{"type":"track"}', {"k": "v"}, "file:/x",
                    NOW, "12", 4)
    assert round_trip(DeliveryCoder(), item) == item
    waiting = Pending(3, 1764590400.25, 1764590460.5, [item, item._replace(message_id="m2", batch_index=None)])
    assert round_trip(PendingCoder(), waiting) == waiting


def test_a_waiting_batch_keeps_its_first_request_time_and_latency_so_far():
    item = Delivery("crm", b'{"id":"m1"}', "m1", 1.5, b"{}", {}, "file:/x", NOW, "12", 4)
    waiting = Pending(2, 1.5, 9.25, [item], requested_at=1764590400.125, latency=0.75)
    assert round_trip(PendingCoder(), waiting) == waiting


def test_a_batch_waiting_in_the_state_of_a_job_started_before_deliveries_were_recorded_still_decodes():
    """The first release wrote (attempts, born, next_at, deliveries) alone: such state, taken
    over with --update, decodes with no first request time and no latency counted yet."""
    item = Delivery("crm", b'{"id":"m1"}', "m1", 1.5, b"{}", {}, "file:/x", NOW, "12", 4)
    first_release = beam.coders.TupleCoder([beam.coders.VarIntCoder(), beam.coders.FloatCoder(),
                                            beam.coders.FloatCoder(), beam.coders.IterableCoder(DeliveryCoder())])
    old = first_release.encode((3, 1.5, 9.25, [item, item]))
    assert PendingCoder().decode(old) == Pending(3, 1.5, 9.25, [item, item], None, 0.0)
    # and what this release writes starts with those same bytes
    assert PendingCoder().encode(Pending(3, 1.5, 9.25, [item, item], 2.0, 0.5)).startswith(old)


def test_dead_letter_records_round_trip_as_json():
    record = {"dead_letter_id": "x", "error_details": {"violations": [{"pointer": "/a"}]}, "message_id": None}
    assert round_trip(JsonCoder(), record) == record


# The bytes of one value of each kind, as this release (0.1.0) writes them: if one of these
# changes, state a running job holds could no longer be read by the new version, so the change
# needs a new job, not --update. (Beam's own coders: a length-prefixed UTF-8 or byte string,
# 01 + value for a present nullable, a big-endian IEEE double, a varint.)
PINNED = [
    (DeliveryCoder(), Delivery("crm", b'{"id":"m1"}', "m1", 1.5, b"{}", {}, "file:/x", NOW, "12", 4),
     "0363726d0b7b226964223a226d31227d026d313ff8000000000000027b7d027b7d0766696c653a2f78"
     "011b323032362d31312d32335431303a30303a30302e3030303030305a010231320104"),
    (RawMessageCoder(), RawMessage(b"{}", {}, "file:/x", NOW, "1"),
     "027b7d027b7d0766696c653a2f78011b323032362d31312d32335431303a30303a30302e3030303030305a0131"),
]


@pytest.mark.parametrize("coder, value, encoded", PINNED)
def test_encodings_do_not_change_between_releases(coder, value, encoded):
    assert coder.encode(value).hex() == encoded


def test_the_stateful_steps_of_a_dataflow_job_keep_explicit_encodings():
    """Forwarding's state uses its coders; GroupIntoBatches (warehouse, dead letters) would pickle
    what it buffers, so what it buffers is already bytes of Sluice's coders."""
    config = validate({"destinations": [{"name": "crm", "type": "webhook", "url": "https://hooks.example.com/x"}]})
    p = beam.Pipeline(options=PipelineOptions(["--streaming"]))
    build_warehouse_graph(p, ReadPubSubMessages("projects/demo-project/subscriptions/s"), config,
                          "bigquery://demo-project/ds", streaming=True,
                          runner=runners.resolve(PipelineOptions(["--streaming", "--runner", "DataflowRunner"])))
    proto = p.to_runner_api()
    context = pipeline_context.PipelineContext(proto.components)
    bags = {}
    for transform in proto.components.transforms.values():
        if transform.spec.urn == "beam:transform:pardo:v1":
            payload = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload)
            for name, spec in payload.state_specs.items():
                if spec.WhichOneof("spec") == "bag_spec":
                    bags[(transform.unique_name.split("/")[0], name)] = type(
                        context.coders.get_by_id(spec.bag_spec.element_coder_id)).__name__
    assert bags[("Forward", "buffer")] == "DeliveryCoder" and bags[("Forward", "pending")] == "PendingCoder"
    assert {bags[("Warehouse", "values")], bags[("DeadLetters", "values")]} == {"FastPrimitivesCoder"}
    event = Event(BODY, BODY, None, {}, "file:/x", NOW)
    shard, encoded = _ShardKey(4, EventCoder().encode)(event)
    assert isinstance(shard, int) and isinstance(encoded, bytes) and EventCoder().decode(encoded) == event
