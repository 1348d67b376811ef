"""Dataflow's --update matches steps by name: the graph's top-level step names are fixed, and
configuring a stage (contracts, rules, destinations) must not add, drop or rename one."""
import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.config import validate
from pipeline.graph import build_warehouse_graph
from pipeline.sources import ReadPubSubMessages

STEPS = ["Read", "Decode", "Normalize", "Dedupe", "Contracts", "Consent", "Transform", "Warehouse",
         "Forwardable", "Forward", "CollectDeadLetters", "DeadLetters"]


def top_level_steps(config, **kwargs) -> list:
    p = beam.Pipeline(options=PipelineOptions(["--streaming"]))
    build_warehouse_graph(p, ReadPubSubMessages("projects/demo-project/subscriptions/s"), config,
                          "bigquery://demo-project/ds", streaming=True, local=False, **kwargs)
    return [t.full_label for t in p.transforms_stack[0].parts]


def test_step_names_are_the_same_however_the_pipeline_is_configured():
    bare = validate({})
    configured = validate({"consent": {"warehouse": ["analytics"]},
                           "transforms": [{"name": "strip", "drop": ["context.ip"]}],
                           "destinations": [{"name": "crm", "type": "webhook", "url": "https://hooks.example.com/x"}]})
    assert top_level_steps(bare) == top_level_steps(configured) == STEPS
    assert top_level_steps(bare, dead_letter_topic="projects/demo-project/topics/t") == STEPS + ["PublishDeadLetters"]
