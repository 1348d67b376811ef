"""ExtractExposures alone under TestPipeline (FnApiRunner), asserted with assert_that, on events
from the real Decode and Normalize stages: which exposures pass, which become `invalid_exposure`
dead letters with their input line untouched (or, with invalid_exposures: store, pass as plain
events, counted by reason), and the rows the warehouse layout makes of them."""
import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import summary
from tests.pipeline import untouched
from tests.pipeline.test_stage_composites import SOURCE, letter_summary, line, normalized_events
from transforms.experiments.exposures import ExtractExposures
from transforms.experiments.extract import Reader
from transforms.experiments.settings import ExperimentSettings
from transforms.warehouse import layout, naming

AT = "2026-11-02T09:00:00.000Z"
DEAD_LETTER = ExperimentSettings(invalid_exposures="dead_letter")  # a config's experiments: section, as parsed


def exposure(message_id, properties, **ids):
    return {"type": "track", "event": "Experiment Viewed", "messageId": message_id, "timestamp": AT,
            "properties": properties, **({"userId": "u-" + message_id} if not ids else ids)}


# Segment's A/B testing spec spelling, and GrowthBook's Segment guide (camelCase, integer variation).
SEGMENT = exposure("segment", {"experiment_id": "checkout", "experiment_name": "Checkout", "variation_id": "b"})
GROWTHBOOK = exposure("growthbook", {"experimentId": "gb-checkout", "variationId": 1})
ANONYMOUS = exposure("anonymous", {"experiment_id": "checkout", "variation_id": "a"}, anonymousId="anon-1")
ORDER = {"type": "track", "event": "Order Completed", "userId": "u-1", "messageId": "order", "timestamp": AT}
PAGE = {"type": "page", "name": "Experiment Viewed", "userId": "u-1", "messageId": "page", "timestamp": AT}

# One invalid case each: (event, what its dead letter says is missing).
INVALID = [
    (exposure("no-experiment", {"variation_id": "a"}), "experiment"),
    (exposure("no-variation", {"experiment_id": "checkout"}), "variation"),
    (exposure("empty-experiment", {"experiment_id": "", "variation_id": "a"}), "experiment"),
    (exposure("float-variation", {"experiment_id": "checkout", "variation_id": 1.5}), "variation"),
    (exposure("bool-variation", {"experiment_id": "checkout", "variation_id": True}), "variation"),
    (exposure("object-experiment", {"experiment_id": {"id": "x"}, "variation_id": "a"}), "experiment"),
    # the first present path is the one read: a bad experiment_id is not saved by a good experimentId
    (exposure("first-present-wins", {"experiment_id": 7.5, "experimentId": "checkout", "variation_id": "a"}),
     "experiment"),
    (ANONYMOUS, "unit"),  # the default unit is user_id
]


def reader_rows(settings, bodies):
    """The experiment_exposures rows the layout makes of events that passed the stage."""
    reader = Reader(settings)

    def to_row(event):
        found = [r for r in layout.event_rows(event, 6, reader) if r.table == layout.EXPOSURES_TABLE]
        return [(r.key, r.parts[0]["$unit_id"], r.parts[0]["$unit_type"], r.parts[0]["$experiment_id"],
                 r.parts[0]["$variation_id"], r.parts[0]["/timestamp"], r.parts[0]["$source"]) for r in found]
    return beam.FlatMap(to_row)


def test_both_spellings_pass_and_each_invalid_exposure_is_a_dead_letter_with_its_line_untouched():
    bodies = [SEGMENT, GROWTHBOOK, ORDER, PAGE] + [body for body, _ in INVALID]
    with TestPipeline(runner=FnApiRunner()) as p:
        given = normalized_events(p, bodies) | untouched.Kept("exposures")
        out = given | ExtractExposures(DEAD_LETTER)
        assert_that(out.events | beam.Map(lambda e: e.body["messageId"]),
                    equal_to(["segment", "growthbook", "order", "page"]), label="passed")
        assert_that(out.events | "Rows" >> reader_rows(DEAD_LETTER, bodies), equal_to([
            ("segment", "u-segment", "user_id", "checkout", "b", AT, SOURCE),
            ("growthbook", "u-growthbook", "user_id", "gb-checkout", "1", AT, SOURCE),
        ]), label="rows")
        assert_that(out.dead_letters | beam.Map(letter_summary), equal_to([
            (body["messageId"], "experiments", "invalid_exposure", SOURCE, line(body).decode(), "utf-8")
            for body, _ in INVALID]), label="dead letters")
        assert_that(out.dead_letters | "Missing" >> beam.Map(lambda r: (r["message_id"],
                                                                         r["error_details"]["missing"])),
                    equal_to([(body["messageId"], missing) for body, missing in INVALID]), label="missing")
    untouched.assert_untouched("exposures", len(bodies))


def test_with_store_each_invalid_exposure_passes_without_a_row_and_is_counted_by_reason():
    """The default without an experiments: section: an upgrade keeps every event it stored before."""
    assert ExperimentSettings().invalid_exposures == "store"
    bodies = [SEGMENT, ORDER] + [body for body, _ in INVALID]
    p = TestPipeline(runner=FnApiRunner())
    out = normalized_events(p, bodies) | ExtractExposures(ExperimentSettings())
    assert_that(out.events | beam.Map(lambda e: e.body["messageId"]),
                equal_to([body["messageId"] for body in bodies]), label="passed")
    assert_that(out.events | "Rows" >> reader_rows(ExperimentSettings(), bodies), equal_to([
        ("segment", "u-segment", "user_id", "checkout", "b", AT, SOURCE)]), label="rows")
    assert_that(out.dead_letters, equal_to([]), label="no dead letters")
    result = p.run()
    result.wait_until_finish()
    counted = summary.build(summary.counters_from_result(result))["exposures_unusable"]
    assert counted == {"experiment": 4, "variation": 3, "unit": 1}


def test_configured_paths_event_and_unit():
    settings = ExperimentSettings(exposure_event="Flag Evaluated", experiment_key=("properties.flag.key",),
                                  variation_key=("/properties/flag/variation.id",), unit="anonymous_id",
                                  invalid_exposures="dead_letter")
    custom = {"type": "track", "event": "Flag Evaluated", "anonymousId": "anon-9", "userId": "u-9",
              "messageId": "custom", "timestamp": AT,
              "properties": {"flag": {"key": "new-nav", "variation.id": 0}}}
    no_anonymous = {**custom, "messageId": "no-anonymous"}
    del no_anonymous["anonymousId"]
    with TestPipeline(runner=FnApiRunner()) as p:
        out = normalized_events(p, [custom, no_anonymous, SEGMENT]) | ExtractExposures(settings)
        # Experiment Viewed is no exposure under this config: it passes as any event does
        assert_that(out.events | beam.Map(lambda e: e.body["messageId"]), equal_to(["custom", "segment"]),
                    label="passed")
        assert_that(out.events | "Rows" >> reader_rows(settings, None), equal_to([
            ("custom", "anon-9", "anonymous_id", "new-nav", "0", AT, SOURCE)]),
                    label="rows")
        assert_that(out.dead_letters | beam.Map(lambda r: (r["message_id"], r["error_type"],
                                                           r["error_details"]["missing"])),
                    equal_to([("no-anonymous", "invalid_exposure", "unit")]), label="dead letters")


def test_the_experiment_tables_are_reserved_names():
    assert naming.table_name("Experiment Exposures") == "_experiment_exposures"
    assert naming.table_name("experiment_results") == "_experiment_results"
    assert naming.table_name("Experiment Viewed") == "experiment_viewed"
