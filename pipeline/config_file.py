"""The config file read and checked against schemas/config.schema.json, and its `sources:`,
`collector:` and `debugger:` sections typed: everything the collector's sink modes need of a config.

Apart from pipeline/config.py (which types the rest: rules, destinations, contracts) because
that module imports the stages, and they import Apache Beam: `serve --sink ...` loads its config
through this module alone and never imports Beam (about 1 s and 100 MB of a Cloud Run
instance's start; tests/collector/test_server.py checks the running process).
"""
import ipaddress
import reprlib

import jsonschema
import yaml

import schemas
from collector.debugger.settings import DebuggerSettings
from collector.settings import CollectorLimits, CollectorSettings, RateLimit, Source
from pipeline.errors import UsageError, did_you_mean
from transforms.destinations import secrets
from transforms.readfile import open_binary

# The bounds on a config file, all far above any real config (1,000 rules of a few keys each
# are about 15,000 values, 150 KB). Each one measured in docs/configuration.md#limits.
MAX_CONFIG_BYTES = 1024 * 1024  # read no further: a larger file is refused before parsing
MAX_DEPTH = 64                  # nesting levels, aliases expanded (PyYAML and jsonschema recurse)
MAX_VALUES = 100_000            # scalars, lists and mappings, each alias counted as what it stands for
_SCHEMA = schemas.load("config.schema.json")
MAX_RULES = _SCHEMA["properties"]["transforms"]["maxItems"]
MAX_DESTINATIONS = _SCHEMA["properties"]["destinations"]["maxItems"]


def key_path(parts) -> str:
    """('transforms', 2, 'hash') -> 'transforms[2].hash'."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")


def _unknown_key(error: jsonschema.ValidationError) -> str:
    """The key an additionalProperties error is about (the first, sorted), or ''."""
    extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
    return str(extra[0]) if extra else ""


def _key_path(error: jsonschema.ValidationError) -> str:
    path = key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        return ".".join(filter(None, [path, _unknown_key(error)])) or "(top level)"
    return path or "(top level)"


# jsonschema's messages start with the whole offending value; a long one is cut to this.
_SHORT = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 40, 40


# A value is never echoed in an error when it may hold a secret: when a key of its path, or a
# key anywhere inside it, is one of these words (write_key, headers, signing_secret, a webhook
# url, debugger.token...), or when it is in `sources` and not one of a source's plain
# settings (`sources: {name: web, write_key: K}` or `sources: [[web, K]]` hold a key where no
# key is expected). jsonschema's messages start with the value; the rest of the message is kept.
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "credential", "auth", "header", "cookie",
                 "salt", "url")
_PLAIN_SOURCE_KEYS = frozenset({"name", "enabled", "rate_limit", "events_per_second", "burst", "allowed_origins"})


def _secret_like(name) -> bool:
    return isinstance(name, str) and any(word in name.lower() for word in _SECRET_WORDS)


def _holds_secret_key(value, depth: int = 0) -> bool:
    if depth > MAX_DEPTH:
        return True
    if isinstance(value, dict):
        return any(_secret_like(k) or _holds_secret_key(v, depth + 1) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_secret_key(v, depth + 1) for v in value)
    return False


def _value_hidden(error: jsonschema.ValidationError) -> bool:
    path = list(error.absolute_path)
    if any(_secret_like(part) for part in path) or _holds_secret_key(error.instance):
        return True
    if path and path[0] == "sources":
        named = [part for part in path if isinstance(part, str)][1:]
        plain = bool(named) and named[-1] in _PLAIN_SOURCE_KEYS and all(n in _PLAIN_SOURCE_KEYS for n in named)
        return not plain or (isinstance(error.instance, (dict, list)) and bool(error.instance)
                             and named[-1] != "allowed_origins")
    return False


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return "unknown key" + did_you_mean(_unknown_key(error), error.schema.get("properties", {}))
    if "write_key" in error.absolute_path:  # the value may be a key: never echoed
        return "must be a non-empty string or a secret {env: VAR} / {file: PATH}"
    if error.validator in ("maxItems", "maxProperties"):
        return f"at most {error.validator_value:,} allowed, found {len(error.instance):,}"
    if error.validator in ("required", "dependentRequired"):   # names keys, never a value
        return error.message
    whole = repr(error.instance)
    if _value_hidden(error):
        rest = error.message[len(whole):].strip() if error.message.startswith(whole) else "is not valid here"
        return f"the value {rest} (not shown: it may hold a secret)"
    if len(whole) > 80 and error.message.startswith(whole):
        return _SHORT.repr(error.instance) + error.message[len(whole):]
    return error.message


def _unique_items(validator, unique, instance, schema):
    """uniqueItems, linear: jsonschema compares items it cannot sort pairwise, so 5,000
    mappings where a list of names belongs took 25 s. Every uniqueItems list in the config
    schema holds strings (tests/unit/test_config_limits.py checks), so a list holding anything
    else has already failed its `items` and its uniqueness is not worth computing."""
    if not (unique and validator.is_type(instance, "array")) or not all(isinstance(i, str) for i in instance):
        return
    seen = set()
    for item in instance:
        if item in seen:
            yield jsonschema.ValidationError(f"{item!r} is listed more than once")
            return
        seen.add(item)


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"uniqueItems": _unique_items})

def check_schema(document) -> None:
    """UsageError naming the first key path that breaks the schema (`document` None: no keys)."""
    validator = _Validator(_SCHEMA)
    errors = sorted(validator.iter_errors({} if document is None else document),
                    key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        error = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise UsageError(f"config: {_key_path(error)}: {_describe(error)}{more}")


def collector_section(document) -> CollectorSettings:
    """The `sources:` and `collector:` sections typed and checked. A write key given as
    {env}/{file} stays a SecretRef here (a batch run of the same config needs none of them):
    resolve_collector reads it when the collector starts."""
    section = document.get("collector", {})
    default = CollectorLimits()
    limits = CollectorLimits(section.get("max_event_bytes", default.max_event_bytes),
                             section.get("max_request_bytes", default.max_request_bytes),
                             section.get("max_batch_events", default.max_batch_events),
                             tuple(section.get("trusted_proxies", ())))
    if limits.max_request_bytes < limits.max_event_bytes:
        raise UsageError("config: collector.max_request_bytes: must not be smaller than collector.max_event_bytes")
    for index, proxy in enumerate(limits.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise UsageError(f"config: collector.trusted_proxies[{index}]: {proxy!r} is not an IP address "
                             f"or network (CIDR)") from None
    sources, names = [], {}
    for index, spec in enumerate(document.get("sources", ())):
        name = spec["name"]
        if name in names:
            raise UsageError(f"config: sources[{index}].name: {name} is already the name of sources[{names[name]}]")
        names[name] = index
        rate = spec.get("rate_limit", {})
        sources.append(Source(name, secrets.parse(spec["write_key"]) or spec["write_key"], spec.get("enabled", True),
                              RateLimit(float(rate.get("events_per_second", RateLimit().events_per_second)),
                                        rate.get("burst", RateLimit().burst)),
                              tuple(spec.get("allowed_origins", Source("", "").allowed_origins))))
    _unique_write_keys(sources)
    return CollectorSettings(tuple(sources), limits, public_url=section.get("public_url", "").rstrip("/"),
                             debugger=_debugger(document.get("debugger", {})))


def _debugger(section) -> DebuggerSettings:
    """The `debugger:` section typed; its token stays a SecretRef until resolve_collector."""
    default = DebuggerSettings()
    return DebuggerSettings(section.get("enabled", default.enabled),
                            secrets.parse(section["token"]) if "token" in section else None,
                            section.get("max_events_per_source", default.max_events_per_source),
                            float(section.get("max_events_per_second", default.max_events_per_second)),
                            section.get("max_payload_bytes", default.max_payload_bytes),
                            warehouse=section.get("warehouse"), bigquery_endpoint=_endpoint(section),
                            bigquery_location=section.get("bigquery_location", default.bigquery_location),
                            poll_seconds=float(section.get("poll_seconds", default.poll_seconds)),
                            lookup_minutes=float(section.get("lookup_minutes", default.lookup_minutes)),
                            max_bytes_billed=section.get("max_bytes_billed", default.max_bytes_billed))


def _endpoint(section):
    """debugger.bigquery_endpoint as the job's --bigquery_endpoint is taken (no trailing slash)."""
    url = section.get("bigquery_endpoint")
    return url.rstrip("/") if url else None


def resolve_collector(settings: CollectorSettings, environ=None) -> CollectorSettings:
    """The settings with every write key (and the debugger's token) read from its environment
    variable or file, for the collector to start with; UsageError naming the key path when one cannot be read (the
    message names the variable or file, never a value)."""
    sources = []
    for index, source in enumerate(settings.sources):
        if isinstance(source.write_key, secrets.SecretRef):
            try:
                source = source._replace(write_key=secrets.resolve(source.write_key, environ))
            except secrets.SecretError as exc:
                raise UsageError(f"config: sources[{index}].write_key: {exc}") from None
        sources.append(source)
    _unique_write_keys(sources)
    debugger = settings.debugger
    if isinstance(debugger.token, secrets.SecretRef):
        try:
            debugger = debugger._replace(token=secrets.resolve(debugger.token, environ))
        except secrets.SecretError as exc:
            raise UsageError(f"config: debugger.token: {exc}") from None
    return settings._replace(sources=tuple(sources), debugger=debugger)


def _unique_write_keys(sources) -> None:
    seen = {}
    for index, source in enumerate(sources):
        if source.write_key in seen:
            raise UsageError(f"config: sources[{index}].write_key: the same write key as "
                             f"sources[{seen[source.write_key]}] (each source needs its own)")
        seen[source.write_key] = index


class _TooLarge(Exception):
    """A bound of the config file passed while composing; where (a key path) and why."""

    def __init__(self, where: str, message: str):
        super().__init__(message)
        self.where, self.message = where, message


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting as it composes: the nesting depth and the values the
    document holds once its aliases are expanded. Composing shares an anchored node between
    its aliases, so nine levels of nine aliases cost nothing here; it is whatever walks the
    result (jsonschema, the rules, JSON encoding on workers) that visits 9**9 values. The
    count stops the document at the first value past the bound, before it is all read.
    (libyaml's CSafeLoader is faster but cannot be counted, and it crashes the interpreter
    on deep nesting.)"""

    def __init__(self, stream):
        super().__init__(stream)
        self._path = []      # key path parts of the node being composed
        self._values = 0     # values so far, aliases expanded
        self._sizes = {}     # id(node) -> (values, depth) of a finished node; the tree keeps it alive

    def compose_node(self, parent, index):
        event = self.peek_event()
        self._path.append(index if isinstance(index, int)
                          else index.value if isinstance(index, yaml.ScalarNode) else None)
        try:
            if len(self._path) > MAX_DEPTH:
                raise _TooLarge(self._where(event), f"nested more than {MAX_DEPTH} levels deep")
            if not isinstance(event, yaml.AliasEvent):
                self._count(1, event)  # before its children, so a long flat list stops while read
            node = super().compose_node(parent, index)
            if isinstance(event, yaml.AliasEvent):
                if id(node) not in self._sizes:
                    raise _TooLarge(self._where(event), f"the alias *{event.anchor} is inside its own anchor "
                                                   f"&{event.anchor} (a structure with no end)")
                values, depth = self._sizes[id(node)]
                self._count(values, event, f"the alias *{event.anchor} repeats {values:,} values, and the config "
                                           f"holds more than {MAX_VALUES:,} with them")
                if len(self._path) - 1 + depth > MAX_DEPTH:
                    raise _TooLarge(self._where(event), f"the alias *{event.anchor} nests the config more than "
                                                   f"{MAX_DEPTH} levels deep")
            else:
                children = (node.value if isinstance(node, yaml.SequenceNode)
                            else [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                            else [])
                sizes = [self._sizes[id(child)] for child in children]
                self._sizes[id(node)] = (1 + sum(v for v, _ in sizes), 1 + max((d for _, d in sizes), default=0))
            return node
        finally:
            self._path.pop()

    def _count(self, values: int, event, message: str = f"the config holds more than {MAX_VALUES:,} values") -> None:
        self._values += values
        if self._values > MAX_VALUES:
            raise _TooLarge(self._where(event), message)

    def _where(self, event) -> str:
        parts = [p for p in self._path if p is not None]
        line = f"line {event.start_mark.line + 1}" if event.start_mark else ""
        if len(parts) > 8:  # too deep: the path's start, so the line stays short
            return f"{key_path(parts[:6])}... ({len(parts)} levels, {line})"
        return (key_path(parts) or "(top level)") + (f" ({line})" if line else "")


def _parse(text):
    """The YAML document in `text`, composed within the bounds, then built."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read(path):
    """The parsed document of the config file at `path` (local or gs://), within the bounds;
    None for an empty file. Not checked against the schema yet (check_schema)."""
    try:
        with open_binary(path) as handle:
            text = handle.read(MAX_CONFIG_BYTES + 1)  # no further (a .gz config: its decompressed bytes)
    except Exception as exc:  # noqa: BLE001 - any filesystem error is the user's to fix, named here
        raise UsageError(f"--config {path}: cannot read it ({type(exc).__name__}: {exc})") from exc
    if len(text) > MAX_CONFIG_BYTES:
        raise UsageError(f"--config {path}: larger than {MAX_CONFIG_BYTES:,} bytes, the most Sluice reads "
                         f"(at most {MAX_RULES:,} rules and {MAX_DESTINATIONS} destinations fit in far less)")
    try:
        document = _parse(text)
    except _TooLarge as exc:
        raise UsageError(f"config: {exc.where}: {exc.message}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise UsageError(f"--config {path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc
    if document is not None and not isinstance(document, dict):
        raise UsageError(f"--config {path}: the top level must be a mapping of sections")
    return document

