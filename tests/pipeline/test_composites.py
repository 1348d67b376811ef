"""The composite transforms under TestPipeline (FnApiRunner), asserted with assert_that."""
import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.config import Config
from pipeline.graph import build_graph
from tests.pipeline import untouched
from transforms.consent import ApplyConsent, ConsentSettings
from transforms.decode import DecodeMessages
from transforms.messages import Event, RawMessage
from transforms.normalize import NormalizeEvents
from transforms.rules.stage import ApplyTransforms, TransformSettings

NOW = "2026-11-23T10:00:00.000000Z"
LINES = [b'{"type":"track","event":"A","userId":"u","messageId":"m1"}',
         b'{"batch":[{"type":"identify","userId":"u","messageId":"m2"},{"type":"track","userId":"u"}]}',
         b"not json", b"", b'{"type":"page"}']


def messages(p):
    return p | beam.Create([RawMessage(line, {}, "test", NOW, str(i)) for i, line in enumerate(LINES)])


def error_types(records, label):
    return records | label >> beam.Map(lambda r: (r["error_stage"], r["error_type"]))


def test_decode_and_normalize_route_every_event():
    with TestPipeline(runner=FnApiRunner()) as p:
        decoded = messages(p) | DecodeMessages()
        normalized = decoded.events | NormalizeEvents()
        assert_that(normalized.events | beam.Map(lambda e: e.body["messageId"]), equal_to(["m1", "m2"]),
                    label="stored")
        assert_that(error_types(decoded.dead_letters, "DecodeErrors"), equal_to([("decode", "malformed_json")]), label="decode")
        assert_that(error_types(normalized.dead_letters, "NormalizeErrors"),
                    equal_to([("normalize", "missing_event_name"), ("normalize", "missing_identity")]),
                    label="normalize")


class CaptureEvents(beam.PTransform):
    """A test event sink: returns no dead letters, so only the upstream stages' remain."""

    def expand(self, events):
        return events | beam.Filter(lambda e: False)


def test_graph_builder_takes_any_source_and_sinks():
    with TestPipeline(runner=FnApiRunner()) as p:
        graph = build_graph(p, beam.Create([RawMessage(line, {}, "test", NOW, str(i)) for i, line in enumerate(LINES)]),
                            Config(), event_sink=CaptureEvents(), dead_letter_sink=beam.Map(lambda r: r))
        assert_that(graph.events | beam.Map(lambda e: e.body["type"]), equal_to(["track", "identify"]), label="ev")
        assert_that(graph.dead_letters | beam.Map(lambda r: r["error_type"]),
                    equal_to(["malformed_json", "missing_event_name", "missing_identity"]), label="dl")


CONSENTED = {"type": "track", "event": "A", "userId": "u", "messageId": "yes",
             "context": {"consent": {"categoryPreferences": {"analytics": True}}}}
REFUSED = {**CONSENTED, "messageId": "no", "context": {"consent": {"categoryPreferences": {"analytics": False}}}}
MALFORMED = {**CONSENTED, "messageId": "bad", "context": {"consent": {"categoryPreferences": {"analytics": 1}}}}
FOR_CRM = {**CONSENTED, "messageId": "crm",
           "context": {"consent": {"categoryPreferences": {"analytics": False, "marketing": True}}}}


def events_of(p, bodies):
    return p | beam.Create([Event(b, b, None, {}, "test", NOW) for b in bodies])


def test_apply_consent_marks_routes_and_dead_letters_malformed_consent():
    settings = ConsentSettings(warehouse=("analytics",), destinations=(("crm", ("marketing",)),))
    with TestPipeline(runner=FnApiRunner()) as p:
        routed = events_of(p, [CONSENTED, REFUSED, MALFORMED, FOR_CRM]) | ApplyConsent(settings)
        assert_that(routed.events | beam.Map(lambda e: (e.body["messageId"], e.store, e.destinations)),
                    equal_to([("yes", True, ()), ("crm", False, ("crm",))]), label="routes")
        assert_that(error_types(routed.dead_letters, "ConsentErrors"), equal_to([("consent", "invalid_consent")]),
                    label="dead")


def test_apply_transforms_filters_rewrites_and_sends_events_with_destinations_to_forwardable():
    rules = ({"name": "drop-b", "events": ["B"], "drop_event": True},
             {"name": "rename", "rename": {"properties.old": "properties.new"}})
    a = {"type": "track", "event": "A", "userId": "u", "messageId": "a", "properties": {"old": 1},
         "timestamp": NOW, "receivedAt": NOW}
    b = {**a, "event": "B", "messageId": "b"}
    with TestPipeline(runner=FnApiRunner()) as p:
        events = (p | beam.Create([Event(a, a, None, {}, "test", NOW),
                                   Event(b, b, None, {}, "test", NOW),
                                   Event(a, a, None, {}, "test", NOW, store=False, destinations=("crm",)),
                                   Event({**a, "messageId": "c"}, a, None, {}, "test", NOW, destinations=("crm",))]))
        out = events | ApplyTransforms(TransformSettings(rules))
        assert_that(out.events | beam.Map(lambda e: e.body["properties"]), equal_to([{"new": 1}] * 2), label="stored")
        # forwarding reads one output: the stored event with a destination and the unstored one
        assert_that(out.forwardable | beam.Map(lambda e: (e.body["messageId"], e.store, e.destinations)),
                    equal_to([("a", False, ("crm",)), ("c", True, ("crm",))]), label="forward")
        assert_that(out.dead_letters, equal_to([]), label="dead")


def test_apply_transforms_never_writes_into_its_input():
    """The rules copy what they change: the body they were given (which shares its nested
    objects with `original` and, downstream, with dead letters) is never written. Checked on
    the objects the stage really received (see untouched.py): a check inside the pipeline
    would compare a pickled copy with itself. As normalize does, each body is a new dict that
    shares its nested objects with `original`."""
    rules = ({"name": "rename", "rename": {"properties.old": "properties.new"}},
             {"name": "set", "set": {"context.library.name": {"value": "x"}}},
             {"name": "drop", "drop": ["properties.gone"]})
    a = {"type": "track", "event": "A", "userId": "u", "messageId": "a", "timestamp": NOW, "receivedAt": NOW,
         "properties": {"old": 1, "gone": 2, "kept": {"deep": [1]}}, "context": {"library": {"name": "js"}}}
    with TestPipeline(runner=FnApiRunner()) as p:
        given = p | beam.Create([Event(dict(a), a, None, {}, "test", NOW),
                                 Event(dict(a), a, None, {}, "test", NOW, store=False, destinations=("crm",))])
        out = given | untouched.Kept("transforms") | ApplyTransforms(TransformSettings(rules))
        for name, changed in (("stored", out.events), ("forward", out.forwardable)):
            assert_that(changed | f"Body{name}" >> beam.Map(lambda e: (e.body["properties"], e.body["context"])),
                        equal_to([({"new": 1, "kept": {"deep": [1]}}, {"library": {"name": "x"}})]), label=name)
            assert_that(changed | f"Seen{name}" >> untouched.seen_by("transforms"), equal_to([True]),
                        label=f"seen {name}")
    untouched.assert_untouched("transforms", 2)
