"""The YAML config file: read, checked against schemas/config.schema.json, typed.

Every mistake is reported as one line naming the key path (`warehouse.batch_size`),
before any graph is built. Reading is bounded (docs/configuration.md#limits): the file's
size, how deep it nests and how many values it holds once YAML aliases are expanded, so a
small file cannot make the launch run for minutes (an alias bomb) or overflow the stack.
"""
from typing import NamedTuple, Optional

from collector.settings import CollectorSettings
# Reading, the bounds, the schema and the collector's sections: pipeline/config_file.py, which
# imports no stage (and so no Beam) for `serve --sink`. Its names are this module's too.
from pipeline.config_file import (MAX_CONFIG_BYTES, MAX_DEPTH, MAX_DESTINATIONS, MAX_RULES,  # noqa: F401
                                  MAX_VALUES, check_schema, collector_section, key_path, read,
                                  resolve_collector)
from pipeline.errors import UsageError
from transforms import dedupe
from transforms.consent import ConsentSettings
from transforms.contracts.model import ContractSettings
from transforms.decode import DecodeLimits
from transforms.destinations import model as destination_model
from transforms.experiments.settings import ExperimentSettings, SettingsError, parse as parse_experiments
from transforms.rules.actions import RuleError
from transforms.rules.engine import TransformRules
from transforms.rules.stage import TransformSettings
from transforms.warehouse import planner
from transforms.warehouse.duckdb_backend import DEFAULT_MEMORY_LIMIT_MB


class Config(NamedTuple):
    decode: DecodeLimits = DecodeLimits()
    max_columns_per_table: int = planner.DEFAULT_MAX_COLUMNS
    flatten_depth: int = planner.DEFAULT_FLATTEN_DEPTH
    batch_size: Optional[int] = None     # None: by mode, see transforms.warehouse.sink (BACKFILL_BATCH_SIZE)
    contracts: Optional[ContractSettings] = None  # contracts not loaded yet: see pipeline.contracts
    consent: Optional[ConsentSettings] = None     # None: no consent section, nothing checked
    transforms: TransformSettings = TransformSettings()
    max_buffering_seconds: float = 5.0   # streaming: a batch waits at most this long to be written
    dedupe_ttl_seconds: float = dedupe.DEFAULT_TTL_SECONDS  # streaming: messageIds remembered this long
    destinations: tuple = ()             # transforms.destinations.model.Destination, in config order
    duckdb_memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB  # the embedded warehouse's memory budget
    max_new_columns_per_batch: int = planner.DEFAULT_MAX_NEW_COLUMNS
    collector: CollectorSettings = CollectorSettings()  # write keys may be unread: see resolve_collector
    experiments: ExperimentSettings = ExperimentSettings()  # checked against the contracts by pipeline.contracts
    duckdb_shred_in_bulk: bool = True    # the embedded warehouse extracts known columns itself (shred.py)


def validate(document) -> Config:
    """Check a parsed config document; return the typed Config or raise UsageError."""
    check_schema(document)
    document = document or {}
    decode = document.get("decode", {})
    warehouse = document.get("warehouse", {})
    streaming = document.get("streaming", {})
    limits = DecodeLimits(decode.get("max_event_bytes", DecodeLimits().max_event_bytes),
                          decode.get("max_batch_bytes", DecodeLimits().max_batch_bytes),
                          decode.get("max_depth", DecodeLimits().max_depth),
                          decode.get("max_record_bytes", DecodeLimits().max_record_bytes))
    if limits.max_batch_bytes < limits.max_event_bytes:
        raise UsageError("config: decode.max_batch_bytes: must not be smaller than decode.max_event_bytes")
    _decode_holds_collector(document, limits)
    contracts = document.get("contracts")
    if contracts is not None:
        contracts = ContractSettings(contracts["directory"], (), contracts.get("unplanned", "allow"),
                                     contracts.get("violations", "allow"),
                                     tuple(sorted(contracts.get("overrides", {}).items())))
    try:
        destinations = destination_model.parse(document.get("destinations"))
    except destination_model.DestinationError as exc:
        raise UsageError(f"config: {exc.where}: {exc.message}") from None
    return Config(limits,
                  warehouse.get("max_columns_per_table", planner.DEFAULT_MAX_COLUMNS),
                  warehouse.get("flatten_depth", planner.DEFAULT_FLATTEN_DEPTH),
                  warehouse.get("batch_size"),
                  contracts, _consent(document.get("consent"), destinations), _transforms(document.get("transforms")),
                  streaming.get("max_buffering_seconds", Config().max_buffering_seconds),
                  streaming.get("dedupe_ttl_seconds", Config().dedupe_ttl_seconds),
                  destinations, warehouse.get("duckdb_memory_limit_mb", DEFAULT_MEMORY_LIMIT_MB),
                  warehouse.get("max_new_columns_per_batch", planner.DEFAULT_MAX_NEW_COLUMNS),
                  collector=collector_section(document), experiments=_experiments(document.get("experiments")),
                  duckdb_shred_in_bulk=warehouse.get("duckdb_shred_in_bulk", True))


def _decode_holds_collector(document: dict, limits: DecodeLimits) -> None:
    """A config with a collector (`sources:` or `collector:`) must decode every event the collector
    can acknowledge: its largest record (request + enrichment) and its largest event. Checked for
    `serve --warehouse` and for the batch or streaming job reading the collector's records with
    this config; else those events would be dead letters for sizes the collector itself allowed."""
    if "sources" not in document and "collector" not in document:
        return  # no collector: files or another producer's Pub/Sub keep decode's limits as set
    section = document.get("collector", {})
    collector = CollectorSettings().limits._replace(**{k: section[k] for k in (
        "max_event_bytes", "max_request_bytes", "max_batch_events") if k in section})
    largest = max(collector.largest_record(source["name"]) for source in document.get("sources") or [{"name": ""}])
    if max(limits.max_batch_bytes, limits.max_record_bytes) < largest:
        raise UsageError(f"config: decode.max_record_bytes: {limits.max_record_bytes} is smaller than the largest "
                         f"record the collector can write, {largest} bytes (collector.max_request_bytes and what "
                         f"it adds to each of collector.max_batch_events events): set it to at least {largest}, "
                         "here and in the job that reads the collector's records")
    if limits.max_event_bytes < collector.max_event_bytes:
        raise UsageError(f"config: decode.max_event_bytes: {limits.max_event_bytes} is smaller than "
                         f"collector.max_event_bytes, {collector.max_event_bytes}: the collector would acknowledge "
                         "events the pipeline refuses")


def _consent(section, destinations: tuple) -> Optional[ConsentSettings]:
    """The consent settings; every configured destination is routed here (its categories from
    its own `consent` and from consent.destinations), so consent and the integrations object
    decide each event's destinations even when the config has no consent section."""
    if section is None and not destinations:
        return None
    section = section or {}
    by_name = {name: list(categories) for name, categories in section.get("destinations", {}).items()}
    if destinations:
        known = {d.name for d in destinations}
        for name in by_name:
            if name not in known:
                raise UsageError(f"config: consent.destinations.{name}: no destination of that name "
                                 f"(destinations: {', '.join(sorted(known))})")
    for destination in destinations:
        categories = by_name.setdefault(destination.name, [])
        categories += [c for c in destination.consent if c not in categories]
    return ConsentSettings(section.get("missing_consent", "allow"), tuple(section.get("warehouse", ())),
                           tuple((name, tuple(categories)) for name, categories in sorted(by_name.items())))


def _experiments(section) -> ExperimentSettings:
    try:
        return parse_experiments(section)
    except SettingsError as exc:
        raise UsageError(f"config: {exc.where}: {exc.message}") from None


def _transforms(rules) -> TransformSettings:
    """The rules compiled once here, so every mistake (a bad regex, an unset salt variable)
    stops the launch; workers compile them again in setup()."""
    if not rules:
        return TransformSettings()
    try:
        TransformRules(rules)
    except RuleError as exc:
        raise UsageError(f"config: {exc.where}: {exc.message}") from None
    return TransformSettings(tuple(rules))


def load(path) -> Config:
    """Read and check the config file at `path` (local or gs://); None means defaults."""
    if not path:
        return Config()
    return validate(read(path))
