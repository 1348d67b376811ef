"""Dataflow's --update matches steps by name: the graph's step names are fixed, and configuring a
stage (contracts, rules, destinations) must not add, drop or rename one. The graph's shape
follows the runner that runs it (pipeline.runners), not whether --runner was typed."""
import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline import runners
from pipeline.config import validate
from pipeline.errors import UsageError
from pipeline.graph import build_warehouse_graph
from pipeline.sources import ReadInputFiles, ReadPubSubMessages
from transforms.warehouse.sink import BACKFILL_BATCH_SIZE, DEFAULT_BATCH_SIZE

STEPS = ["Read", "Decode", "Normalize", "Dedupe", "Contracts", "Consent", "Transform", "Exposures", "Warehouse",
         "Forwardable", "Forward", "CollectDeadLetters", "DeadLetters", "Deliveries"]

# The steps inside them, on Dataflow, streaming. A rename here breaks --update of running jobs.
NESTED_STREAMING = [
    "Read/Pull", "Read/AsRawMessages", "Decode/ParDo(DecodeMessagesFn)", "Normalize/ParDo(NormalizeEventsFn)",
    "Dedupe/ByMessageId", "Dedupe/DropSeen", "Contracts/ParDo(ValidateContractsFn)",
    "Consent/ParDo(ApplyConsentFn)", "Transform/ParDo(ApplyTransformsFn)",
    "Exposures/ParDo(ExtractExposuresFn)", "Warehouse/Batch", "Warehouse/Write",
    "Forwardable/SelectDeliveries", "Forward/BatchAndRetry", "DeadLetters/Batch", "DeadLetters/Write",
    "Deliveries/Batch", "Deliveries/Write"]

CONFIGURED = {"consent": {"warehouse": ["analytics"]},
              "transforms": [{"name": "strip", "drop": ["context.ip"]}],
              "destinations": [{"name": "crm", "type": "webhook", "url": "https://hooks.example.com/x"}]}


def graph(config, args=("--streaming", "--runner", "DataflowRunner"), **kwargs) -> beam.Pipeline:
    runner = runners.resolve(PipelineOptions(list(args)))
    streaming = "--streaming" in args
    p = beam.Pipeline(options=PipelineOptions(["--streaming"] if streaming else []))
    source = (ReadPubSubMessages("projects/demo-project/subscriptions/s") if streaming
              else ReadInputFiles(["events.jsonl"], redistribute=runner.distributed))
    build_warehouse_graph(p, source, config, "bigquery://demo-project/ds", streaming=streaming, runner=runner,
                          **kwargs)
    return p


def top_level_steps(p) -> list:
    return [t.full_label for t in p.transforms_stack[0].parts]


def nested_steps(p) -> list:
    return [inner.full_label for outer in p.transforms_stack[0].parts for inner in outer.parts]


def test_step_names_are_the_same_however_the_pipeline_is_configured():
    bare, configured = graph(validate({})), graph(validate(CONFIGURED))
    assert top_level_steps(bare) == top_level_steps(configured) == STEPS
    assert nested_steps(bare) == nested_steps(configured) == NESTED_STREAMING
    with_topic = graph(validate({}), dead_letter_topic="projects/demo-project/topics/t")
    assert top_level_steps(with_topic) == STEPS + ["PublishDeadLetters"]


def test_a_batch_graph_leaves_out_the_stages_it_has_nothing_for():
    """A batch job cannot be updated: an unconfigured stage would only pass every event along."""
    batch = ("--runner", "DataflowRunner")
    bare = top_level_steps(graph(validate({}), batch))
    assert [s for s in STEPS if s not in bare] == ["Dedupe", "Contracts", "Consent", "Transform"]
    assert "NothingToForward" in bare
    configured = top_level_steps(graph(validate(CONFIGURED), batch))
    assert [s for s in STEPS if s not in configured] == ["Dedupe", "Contracts"]  # CONFIGURED has no contracts
    assert "NothingToForward" not in configured
    rules_only = top_level_steps(graph(validate({"transforms": CONFIGURED["transforms"]}), batch))
    assert "Transform" in rules_only and "Consent" not in rules_only


def test_beams_local_streaming_runner_gets_the_graph_without_timers_whether_or_not_runner_is_given():
    """Its processing-time timers never fire: forwarding batches per bundle and retries on lanes."""
    for args in (("--streaming",), ("--streaming", "--runner", "DirectRunner"),
                 ("--streaming", "--runner", "BundleBasedDirectRunner")):
        steps = nested_steps(graph(validate(CONFIGURED), args))
        assert [s for s in steps if s.startswith("Forward/")] == ["Forward/Batch", "Forward/Deliver"], args


def test_a_backfill_is_redistributed_after_reading_where_the_runner_distributes_work():
    on_dataflow = nested_steps(graph(validate({}), ("--runner", "DataflowRunner")))
    assert [s for s in on_dataflow if s.startswith("Read/")] == [
        "Read/Patterns", "Read/Match", "Read/Open", "Read/ReadLines", "Read/Redistribute"]
    # One process: a Reshuffle would only hold every line in memory (FnApiRunner materializes it).
    local = nested_steps(graph(validate({}), ()))
    assert [s for s in local if s.startswith("Read/")] == ["Read/Patterns", "Read/Match", "Read/Open",
                                                           "Read/ReadLines"]


@pytest.mark.parametrize("args, expected", [
    (("--runner", "DirectRunnr"), "--runner DirectRunnr: unknown runner (did you mean DirectRunner?)"),
    (("--runner", "Nimbus"), "--runner Nimbus: unknown runner; Beam's are DataflowRunner, "),
    (("--runner", "apache_beam.runners.Nope"), "--runner apache_beam.runners.Nope: cannot import it"),
    (("--runner", "nosuch_module.Runner"), "--runner nosuch_module.Runner: cannot import it"),
    # not a dotted name: importlib raises ValueError or TypeError for these, not ImportError
    (("--runner", ".DirectRunner"), "--runner .DirectRunner: expected a runner name (DirectRunner, "),
    (("--runner", "..DirectRunner"), "--runner ..DirectRunner: expected a runner name"),
    (("--runner", "apache_beam.runners."), "--runner apache_beam.runners.: expected a runner name"),
    # Beam would instantiate any class it names and run the job on it
    (("--runner", "apache_beam.options.pipeline_options.PipelineOptions"), "--runner apache_beam.options."
     "pipeline_options.PipelineOptions: not a PipelineRunner subclass"),
    (("--runner", "FnApiRunner", "--streaming"), "--runner FnApiRunner cannot run a streaming job"),
])
def test_runner_mistakes_are_usage_errors(args, expected):
    with pytest.raises(UsageError) as caught:
        runners.resolve(PipelineOptions(list(args)))
    assert str(caught.value).startswith(expected)


def warehouse_batch_sizes(p) -> set:
    """The batch sizes of the graph's event writer (WriteWarehouse's settings)."""
    [warehouse] = [t for t in p.transforms_stack[0].parts if t.full_label == "Warehouse"]
    return {warehouse.transform._settings.batch_size}


def test_an_unset_batch_size_is_the_modes_own_and_a_set_one_wins_everywhere():
    assert warehouse_batch_sizes(graph(validate({}), ())) == {BACKFILL_BATCH_SIZE}  # a backfill: fewer commits
    assert warehouse_batch_sizes(graph(validate({}))) == {DEFAULT_BATCH_SIZE}      # streaming
    assert warehouse_batch_sizes(graph(validate({}), ("--streaming",))) == {DEFAULT_BATCH_SIZE}
    chosen = validate({"warehouse": {"batch_size": 700}})
    assert warehouse_batch_sizes(graph(chosen, ())) == warehouse_batch_sizes(graph(chosen)) == {700}
    assert BACKFILL_BATCH_SIZE > DEFAULT_BATCH_SIZE
