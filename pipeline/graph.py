"""The graph builder: one function wiring the stages between a source and sinks.

Tests call it with a source and sinks of their choosing; run() calls it with the real ones.
Step labels are stable names (Dataflow's --update matches steps by name).
"""
from typing import NamedTuple

import apache_beam as beam

from pipeline.config import Config
from pipeline.runners import LOCAL_BATCH, Runner
from transforms.consent import ApplyConsent
from transforms.contracts import columns
from transforms.contracts.model import ContractSettings
from transforms.contracts.stage import ValidateContracts
from transforms.decode import DecodeMessages
from transforms.dedupe import DropRepeatedMessages
from transforms.experiments.exposures import ExtractExposures
from transforms.destinations.stage import ForwardToDestinations, SelectDeliveries
from transforms.normalize import NormalizeEvents
from transforms.pubsub_publish import PublishDeadLetters
from transforms.rules.stage import ApplyTransforms, TransformSettings
from transforms.warehouse.sink import (BACKFILL_BATCH_SIZE, DEFAULT_BATCH_SIZE, WarehouseSettings, WriteDeadLetters,
                                      WriteDeliveries, WriteWarehouse)


class Graph(NamedTuple):
    events: beam.PCollection        # transformed events, as they go to the warehouse
    forwardable: beam.PCollection   # events some destination may have (stored or not)
    dead_letters: beam.PCollection  # every stage's dead-letter records
    deliveries: beam.PCollection    # forwarding's outcomes, a `_deliveries` row per batch


def warehouse_settings(url: str, config: Config, **backend) -> WarehouseSettings:
    """backend: bigquery_endpoint, bigquery_location (the command line's BigQuery options)."""
    declared = None
    if config.contracts is not None:
        declared = columns.declared_types(config.contracts.contracts, config.flatten_depth, [])
    return WarehouseSettings(url, config.max_columns_per_table, config.flatten_depth,
                             config.batch_size or DEFAULT_BATCH_SIZE, declared,
                             duckdb_memory_limit_mb=config.duckdb_memory_limit_mb,
                             duckdb_shred_in_bulk=config.duckdb_shred_in_bulk,
                             max_new_columns=config.max_new_columns_per_batch, experiments=config.experiments,
                             **backend)


def event_batch_size(config: Config, streaming: bool) -> int:
    """Events per warehouse write: warehouse.batch_size, or unset, the mode's own. A batch run
    takes BACKFILL_BATCH_SIZE (a quarter of the transactions; docs/benchmarks.md), streaming
    DEFAULT_BATCH_SIZE (there a batch also waits for company, up to max_buffering_seconds)."""
    if config.batch_size is not None:
        return config.batch_size
    return DEFAULT_BATCH_SIZE if streaming else BACKFILL_BATCH_SIZE


def build_graph(pipeline, source: beam.PTransform, config: Config, *, event_sink: beam.PTransform,
                dead_letter_sink: beam.PTransform, delivery_sink: beam.PTransform = None,
                trust_event_received_at: bool = True, streaming: bool = False, runner: Runner = LOCAL_BATCH) -> Graph:
    """source: PBegin -> PCollection[RawMessage]; event_sink: Events -> its dead letters;
    dead_letter_sink: dead-letter records -> anything; delivery_sink: `_deliveries` rows ->
    anything (None: the graph's `deliveries` only). streaming: messageIds seen within
    config.dedupe_ttl_seconds are dropped as duplicates (Pub/Sub redelivers). runner: what the
    runner does (pipeline.runners): whether forwarding may wait on timers."""
    messages = pipeline | "Read" >> source
    decoded = messages | "Decode" >> DecodeMessages(config.decode)
    normalized = decoded.events | "Normalize" >> NormalizeEvents(trust_event_received_at)
    events = normalized.events
    if streaming:
        events = events | "Dedupe" >> DropRepeatedMessages(config.dedupe_ttl_seconds)
    failures = [decoded.dead_letters, normalized.dead_letters]
    # A streaming job has every stage in its graph, configured or not, so that configuring one later
    # keeps every step name (Dataflow's --update matches steps by name). A batch job cannot be
    # updated: it leaves out the stages with nothing to do, each a pass over every event.
    if streaming or config.contracts is not None:
        checked = events | "Contracts" >> ValidateContracts(config.contracts or ContractSettings(""))
        events, failures = checked.events, failures + [checked.dead_letters]
    if streaming or config.consent is not None:
        consented = events | "Consent" >> ApplyConsent(config.consent)
        events, failures = consented.events, failures + [consented.dead_letters]
    # Without consent no event has a destination (config.consent is set whenever one is configured).
    if streaming or config.consent is not None or config.transforms != TransformSettings():
        transformed = events | "Transform" >> ApplyTransforms(config.transforms)
        events, forwardable, failures = transformed.events, transformed.forwardable, \
            failures + [transformed.dead_letters]
    else:
        forwardable = pipeline | "NothingToForward" >> beam.Create([])
    # After the rules, which may rename an event or move its properties; for the warehouse's events
    # only (forwarding sends an exposure on as it is, valid or not).
    exposures = events | "Exposures" >> ExtractExposures(config.experiments)
    write_failures = exposures.events | "Warehouse" >> event_sink
    selected = forwardable | "Forwardable" >> SelectDeliveries(config.destinations)
    forwarded = selected.deliveries | "Forward" >> ForwardToDestinations(
        config.destinations, timers=streaming and runner.timers, keep_open=not runner.reuses_dofns)
    dead_letters = ((*failures, exposures.dead_letters, write_failures, selected.dead_letters,
                     forwarded.dead_letters)
                    | "CollectDeadLetters" >> beam.Flatten())
    _ = dead_letters | "DeadLetters" >> dead_letter_sink
    if delivery_sink is not None:
        _ = forwarded.deliveries | "Deliveries" >> delivery_sink
    return Graph(exposures.events, forwardable, dead_letters, forwarded.deliveries)


def build_warehouse_graph(pipeline, source: beam.PTransform, config: Config, warehouse_url: str,
                          trust_event_received_at: bool = True, streaming: bool = False,
                          runner: Runner = LOCAL_BATCH, dead_letter_topic: str = None, **backend) -> Graph:
    """The production wiring: events, dead letters and forwarding's outcomes (`_deliveries`) into
    the warehouse at `warehouse_url` (and dead letters to `dead_letter_topic` too, when given).
    backend: bigquery_endpoint, bigquery_location, bigquery_write_method."""
    settings = warehouse_settings(warehouse_url, config, **backend)._replace(
        batch_size=event_batch_size(config, streaming))
    # Without processing-time timers (Beam's local runners) a batch cannot wait for company:
    # each bundle is written as it comes (see transforms.warehouse.sink.Batches).
    wait, per_bundle, keep_open = config.max_buffering_seconds, not (streaming and runner.timers), \
        not runner.reuses_dofns
    graph = build_graph(pipeline, source, config,
                        event_sink=WriteWarehouse(settings, streaming, wait, per_bundle, keep_open),
                        dead_letter_sink=WriteDeadLetters(settings, streaming, wait, per_bundle, keep_open),
                        delivery_sink=WriteDeliveries(settings, streaming, wait, per_bundle, keep_open),
                        trust_event_received_at=trust_event_received_at, streaming=streaming, runner=runner)
    if dead_letter_topic:
        _ = graph.dead_letters | "PublishDeadLetters" >> PublishDeadLetters(dead_letter_topic, keep_open)
    return graph
