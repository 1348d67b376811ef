"""Segment's warehouse layout: which tables an event lands in, and its flattened values.

Each event becomes one or more TableRows. A row's values are a few flat dicts keyed by
JSON pointer into the normalized event (`/context/page/url`), so a column always knows
exactly where its values came from. The common part of an event is flattened once and
shared by every table the event lands in.
"""
from typing import NamedTuple

from transforms.experiments.extract import Exposure
from transforms.warehouse import naming

# Top-level fields not flattened generically: the type is the table; `event` becomes
# event / event_text; the event's own section (properties or traits) is flattened without
# its prefix. A section the spec does not give a type (traits on a track) stays generic.
ALWAYS_SKIPPED = ("type", "event", "integrations")
SECTION = {"track": "properties", "page": "properties", "screen": "properties",
           "identify": "traits", "group": "traits", "alias": None}
# Fields stored as a JSON column rather than flattened (routing flags, not data).
_JSON_FIELDS = ("integrations",)
TIME_POINTERS = frozenset(("/timestamp", "/originalTimestamp", "/sentAt", "/receivedAt"))
EVENT_POINTER = "$event"   # computed: the event's table name (Segment's `event` column)
LOADED_AT = "$loaded_at"
UNMAPPED = "$unmapped"
VIOLATIONS = "$violations"  # contract violations recorded with the event (issue: contracts)
METADATA = "$metadata"      # transport metadata: {"attributes": {...}} of a Pub/Sub message


# The table of each event's first row, keyed by message_id: an event is stored once its row
# there is (the warehouses' dedupe looks only here).
PRIMARY_TABLE = {"track": "tracks", "identify": "identifies", "page": "pages", "screen": "screens",
                 "group": "groups", "alias": "aliases"}  # by event type
PRIMARY_TABLES = tuple(PRIMARY_TABLE.values())
# An exposure's fixed-shape row (docs/experiments.md#exposures), beside its tracks and event rows.
EXPOSURES_TABLE = "experiment_exposures"


class TableRow(NamedTuple):
    table: str
    key: str                     # dedupe key value (message_id; users: the user id)
    parts: tuple                 # flat dicts {pointer: value}
    strip_root: str              # pointer prefix not repeated in column names ("/properties")
    timestamp: str               # the event's timestamp (users: newest traits win)


def _escape(key: str) -> str:
    if "~" in key or "/" in key:
        return key.replace("~", "~0").replace("/", "~1")
    return key


def pointer(parts) -> str:
    """The JSON pointer of a path's keys, escaped as flatten() escapes its columns' sources (the
    analysis finds a column by it)."""
    return "".join("/" + _escape(part) for part in parts)


def unescape_pointer(pointer: str) -> tuple:
    return tuple(p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:])


def flatten(obj: dict, prefix: str, level: int, max_depth: int, out: dict) -> dict:
    """Flatten nested objects into `out` as {pointer: leaf}; arrays, empty objects and
    objects past `max_depth` levels stay whole (stored as JSON). `prefix` ends with "/"."""
    for key, value in obj.items():
        if "/" in key or "~" in key:
            key = _escape(key)
        if type(value) is dict and value and level < max_depth:
            flatten(value, prefix + key + "/", level + 1, max_depth, out)
        else:
            out[prefix + key] = value
    return out


def _common(body: dict, section, max_depth: int) -> dict:
    flat = {}
    for key, value in body.items():
        if key in ALWAYS_SKIPPED or key == section:
            continue
        pointer = "/" + _escape(key)
        if type(value) is dict and value and max_depth > 1:
            flatten(value, pointer + "/", 2, max_depth, flat)
        else:
            flat[pointer] = value
    for key in _JSON_FIELDS:
        if key in body:
            flat["/" + key] = body[key]
    return flat


def _section(body: dict, key: str, max_depth: int) -> dict:
    value = body.get(key)
    if not value:
        return {}
    return flatten(value, "/" + key + "/", 2, max_depth, {})


def table_rows(body: dict, max_depth: int, violations=None, attributes=None) -> list:
    """The warehouse rows for one normalized event, by Segment's layout. A message's transport
    attributes (Pub/Sub) are kept whole as JSON in `_metadata`; file input has none, so its
    tables get no such column."""
    kind = body["type"]
    message_id = body["messageId"]
    timestamp = body["timestamp"]
    common = _common(body, SECTION[kind], max_depth)
    if violations:
        common[VIOLATIONS] = violations
    if attributes:
        common[METADATA] = {"attributes": attributes}
    if kind == "track":
        table = naming.table_name(body["event"])
        common[EVENT_POINTER] = table
        common["/event"] = body["event"]
        properties = _section(body, "properties", max_depth)
        return [TableRow("tracks", message_id, (common,), "", timestamp),
                TableRow(table, message_id, (common, properties), "/properties", timestamp)]
    if kind in ("identify", "group"):
        traits = _section(body, "traits", max_depth)
        rows = [TableRow("identifies" if kind == "identify" else "groups", message_id,
                         (common, traits), "/traits", timestamp)]
        if kind == "identify" and "userId" in body:
            user = {"/userId": body["userId"], "/timestamp": timestamp, "/receivedAt": body["receivedAt"]}
            rows.append(TableRow("users", body["userId"], (user, traits), "/traits", timestamp))
        return rows
    if kind in ("page", "screen"):
        properties = _section(body, "properties", max_depth)
        return [TableRow(kind + "s", message_id, (common, properties), "/properties", timestamp)]
    return [TableRow("aliases", message_id, (common,), "", timestamp)]


def event_rows(event, max_depth: int, exposures=None) -> list:
    """The rows of an Event (transforms.messages): table_rows, and its `experiment_exposures` row
    when `exposures` (a transforms.experiments.extract.Reader) reads an exposure in it. That row
    goes in the same write as the event's first row, so it is stored exactly when the event is
    (a duplicate adds none). Its `source` is the collector's source name, as in the event's
    other rows, else the transport's (file:..., pubsub:...), so it is never empty."""
    body = event.body
    rows = table_rows(body, max_depth, event.violations, event.attributes)
    found = exposures.read(body) if exposures is not None else None
    if type(found) is Exposure:
        source = body.get("source")
        values = {"$unit_id": found.unit_id, "$unit_type": found.unit_type, "$experiment_id": found.experiment_id,
                  "$variation_id": found.variation_id, "/timestamp": body["timestamp"],
                  "/messageId": body["messageId"], "$source": source if type(source) is str else event.source}
        rows.append(TableRow(EXPOSURES_TABLE, body["messageId"], (values,), "", body["timestamp"]))
    return rows
