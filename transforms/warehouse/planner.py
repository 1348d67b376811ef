"""Plan warehouse rows against a table's schema: pure, backend-neutral.

Without a contract the first value decides a column's type, as in Segment. A later
value that does not fit is widened where that is lossless (an INT64 column becomes
FLOAT64 for a fractional number) and otherwise kept whole in the table's `_unmapped`
JSON column, keyed by its JSON pointer, and counted as a type conflict. Past the
per-table column cap, new properties go to `_unmapped` too. Nothing is dropped or cut.

A TableSchema records, for every column, the JSON pointer its values come from; two
sources that propose the same name (`firstName` and `first_name`) get distinct columns.
"""
from typing import NamedTuple

from transforms import jsonutil
from transforms.timeutil import format_time, parse_time
from transforms.warehouse import layout, naming

BOOL, INT64, FLOAT64, STRING, TIMESTAMP, JSON = "BOOL", "INT64", "FLOAT64", "STRING", "TIMESTAMP", "JSON"
NUMERIC = (INT64, FLOAT64)  # the types a number is stored as: what a mean metric sums, a comparison orders
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
EXACT_FLOAT = 1 << 53  # integers up to here convert to FLOAT64 exactly
UNMAPPED_COLUMN = "_unmapped"
DEFAULT_MAX_COLUMNS = 2000
# Columns one batch may add to one table: each is a schema change of its own (DuckDB: an ALTER,
# about 1.5 ms; BigQuery: part of one patch), and a single event can bring thousands.
DEFAULT_MAX_NEW_COLUMNS = 500
DEFAULT_FLATTEN_DEPTH = 6


class Column(NamedTuple):
    name: str
    type: str
    source: str  # JSON pointer into the normalized event, or a computed "$name"


_EVENT_COLUMNS = (
    Column("message_id", STRING, "/messageId"),
    Column("timestamp", TIMESTAMP, "/timestamp"),
    Column("original_timestamp", TIMESTAMP, "/originalTimestamp"),
    Column("sent_at", TIMESTAMP, "/sentAt"),
    Column("received_at", TIMESTAMP, "/receivedAt"),
    Column("user_id", STRING, "/userId"),
    Column("anonymous_id", STRING, "/anonymousId"),
    Column("loaded_at", TIMESTAMP, layout.LOADED_AT),
    Column(UNMAPPED_COLUMN, JSON, layout.UNMAPPED),
)
_TRACK_COLUMNS = _EVENT_COLUMNS + (Column("event", STRING, layout.EVENT_POINTER),
                                   Column("event_text", STRING, "/event"))
_FIXED_COLUMNS = {
    "tracks": _TRACK_COLUMNS,
    "groups": _EVENT_COLUMNS + (Column("group_id", STRING, "/groupId"),),
    "aliases": _EVENT_COLUMNS + (Column("previous_id", STRING, "/previousId"),),
    "users": (Column("id", STRING, "/userId"), Column("timestamp", TIMESTAMP, "/timestamp"),
              Column("received_at", TIMESTAMP, "/receivedAt"), Column("loaded_at", TIMESTAMP, layout.LOADED_AT),
              Column(UNMAPPED_COLUMN, JSON, layout.UNMAPPED)),
    # Every value is a string layout.event_rows made (ids as text, the event's canonical time), so
    # each fits its declared column: no `_unmapped`, and no first value decides a type.
    layout.EXPOSURES_TABLE: (
        Column("unit_id", STRING, "$unit_id"), Column("unit_type", STRING, "$unit_type"),
        Column("experiment_id", STRING, "$experiment_id"), Column("variation_id", STRING, "$variation_id"),
        Column("timestamp", TIMESTAMP, "/timestamp"), Column("message_id", STRING, "/messageId"),
        Column("source", STRING, "$source"), Column("loaded_at", TIMESTAMP, layout.LOADED_AT)),
}
_NON_EVENT_TABLES = ("identifies", "pages", "screens")
# The dead-letter record (schemas/dead_letter.schema.json) as a table, in every backend.
DEAD_LETTER_TABLE = "_dead_letters"
DEAD_LETTER_COLUMNS = (
    ("dead_letter_id", STRING), ("error_stage", STRING), ("error_type", STRING),
    ("error_message", STRING), ("error_details", JSON), ("payload", STRING),
    ("payload_encoding", STRING), ("attributes", JSON), ("message_id", STRING),
    ("source", STRING), ("received_at", TIMESTAMP), ("failed_at", TIMESTAMP),
    ("pipeline_version", STRING), ("destination", STRING), ("loaded_at", TIMESTAMP),
)
# Forwarding's outcomes, one row per batch a destination settled (delivered or failed), in every
# backend (transforms.destinations.deliveries makes the rows). Not events: no message_id key of
# their own, no place in conservation. STRINGS is a list of strings (BigQuery: a REPEATED STRING,
# DuckDB: VARCHAR[]), for this table only: event columns never take it.
STRINGS = "ARRAY<STRING>"
DELIVERIES_TABLE = "_deliveries"
DELIVERY_COLUMNS = (
    ("delivery_id", STRING), ("destination", STRING), ("requested_at", TIMESTAMP), ("status", STRING),
    ("http_status", INT64), ("attempts", INT64), ("latency_ms", FLOAT64), ("message_ids", STRINGS),
    ("idempotency_key", STRING), ("error_message", STRING), ("loaded_at", TIMESTAMP),
)


def fixed_columns(table: str) -> tuple:
    """Columns every row of `table` has, created with the table and claimed first."""
    if table in _FIXED_COLUMNS:
        return _FIXED_COLUMNS[table]
    return _EVENT_COLUMNS if table in _NON_EVENT_TABLES else _TRACK_COLUMNS


def declared_for(declared_types: dict, table: str) -> dict:
    """The column types contracts declare for `table`: the common ("*") ones, then its own."""
    return {**declared_types.get("*", {}), **declared_types.get(table, {})}


def key_column(table: str) -> str:
    return "id" if table == "users" else "message_id"


class TableSchema:
    """The columns of one table and where each column's values come from."""

    def __init__(self, name: str, columns=None, max_name_length: int = naming.MAX_NAME_LENGTH):
        self.name = name
        self.max_name_length = max_name_length
        self.columns = {}     # name -> Column
        self.by_source = {}   # source -> Column
        self.no_widen = set()  # columns the backend refused to widen, or a contract typed
        self.declared = {}     # source pointer -> type a contract declares (pipeline.contracts)
        for column in fixed_columns(name) if columns is None else columns:
            self._register(column)

    def _register(self, column: Column):
        self.columns[column.name] = column
        self.by_source[column.source] = column

    def declare(self, declared: dict) -> None:
        """Column types a contract declares; such columns are never widened."""
        self.declared = declared
        self.no_widen.update(c.name for source, c in self.by_source.items() if source in declared)

    def propose(self, source: str, column_type: str, strip_root: str) -> Column:
        """Name a new column for `source` without registering it."""
        if source.startswith("$"):  # computed by Sluice: "$violations" -> "_violations"
            name = "_" + source[1:]
        else:
            path = source[len(strip_root):] if strip_root and source.startswith(strip_root + "/") else source
            name = naming.column_name(layout.unescape_pointer(path), self.max_name_length)
        length = 6
        while name in self.columns:  # another source has this name: suffix a hash of ours
            name = naming.suffixed(name, source, self.max_name_length, length)
            length += 2
        return Column(name, column_type, source)

    def add(self, column: Column) -> None:
        self._register(column)

    def copy(self) -> "TableSchema":
        """A working copy to plan a batch on; the original stays as it was if the write fails."""
        clone = TableSchema(self.name, (), self.max_name_length)
        clone.columns, clone.by_source, clone.no_widen = dict(self.columns), dict(self.by_source), set(self.no_widen)
        clone.declared = self.declared
        return clone

    def widen(self, name: str) -> None:
        column = self.columns[name]._replace(type=FLOAT64)
        self._register(column)


def value_type(value, is_time: bool):
    kind = type(value)
    if kind is str:
        return TIMESTAMP if is_time else STRING
    if kind is bool:
        return BOOL
    if kind is int:
        return INT64 if _INT64_MIN <= value <= _INT64_MAX else JSON  # too wide for INT64: keep exact as JSON
    if kind is float:
        return FLOAT64
    return JSON  # arrays, empty objects, objects past the flattening depth


_NO_FIT = object()
# Python type a column takes unchanged (ints still range-checked); others go through fit().
_ACCEPTS = {BOOL: bool, INT64: int, FLOAT64: float, STRING: str}


def fit(column_type: str, value, trusted_time: bool = False):
    """The value converted for a column of `column_type`, or _NO_FIT.

    TIMESTAMP values are canonical ISO strings (backends cast them); `trusted_time` marks
    the event's own time fields, which Normalize already made canonical.
    """
    kind = type(value)
    if column_type == JSON:
        return jsonutil.dumps_str(value)
    if column_type == STRING:
        return value if kind is str else _NO_FIT
    if column_type == TIMESTAMP:
        if kind is not str:
            return _NO_FIT
        if trusted_time:
            return value
        try:
            return format_time(parse_time(value))
        except (ValueError, OverflowError):
            return _NO_FIT
    if column_type == INT64:
        if kind is int and _INT64_MIN <= value <= _INT64_MAX:
            return value
        if kind is float and value.is_integer() and abs(value) <= EXACT_FLOAT:
            return int(value)
        return _NO_FIT
    if column_type == FLOAT64:
        if kind is float:
            return value
        if kind is int and abs(value) <= EXACT_FLOAT:
            return float(value)
        return _NO_FIT
    if column_type == BOOL:
        return value if kind is bool else _NO_FIT
    raise ValueError(f"unknown column type {column_type}")


class TablePlan(NamedTuple):
    table: str
    new_columns: list      # Columns to add, in order
    widened: list          # names of INT64 columns to make FLOAT64
    columns: dict          # name -> list of values, one per row; only columns with a value
    rows: int
    type_conflicts: int
    capped: int            # values sent to _unmapped by the column cap


def _place(columns: dict, name: str, row: int, value) -> None:
    values = columns.get(name)
    if values is None:
        values = columns[name] = []
    if len(values) < row:  # columns are filled lazily: pad the rows that had no value
        values.extend([None] * (row - len(values)))
    values.append(value)


def plan_rows(schema: TableSchema, rows: list, max_columns: int = DEFAULT_MAX_COLUMNS,
              max_new_columns: int = DEFAULT_MAX_NEW_COLUMNS) -> TablePlan:
    """Map TableRows onto `schema` (extending it in place) and return the column values. A
    value that would need a column past `max_columns` in the table, or past `max_new_columns`
    added by this batch, is kept in the row's `_unmapped` instead (counted as `capped`); the
    next batch adds the next columns.

    This is the hot loop of the pipeline (once per value per table): the common case, a
    value of the column's own type, costs a dict lookup and an append.
    """
    new_columns, widened = [], []
    columns = {}
    conflicts = capped = 0
    by_source = schema.by_source
    accepts = _ACCEPTS
    trusted = layout.TIME_POINTERS
    for row_number, row in enumerate(rows):
        unmapped = None
        for part in row.parts:
            for source, value in part.items():
                if value is None:
                    continue
                column = by_source.get(source)
                if column is None:
                    if len(schema.columns) >= max_columns or len(new_columns) >= max_new_columns:
                        unmapped = unmapped or {}
                        unmapped[source] = value
                        capped += 1
                        continue
                    declared = schema.declared.get(source)
                    column = schema.propose(source, declared or value_type(value, source in trusted), row.strip_root)
                    schema.add(column)
                    if declared:
                        schema.no_widen.add(column.name)
                    new_columns.append(column)
                kind = type(value)
                if kind is accepts.get(column.type) and (kind is not int or _INT64_MIN <= value <= _INT64_MAX):
                    converted = value
                else:
                    converted = fit(column.type, value, source in trusted)
                    if converted is _NO_FIT and column.type == INT64 and kind is float \
                            and column.name not in schema.no_widen:
                        schema.widen(column.name)
                        widened.append(column.name)
                        converted = value
                    if converted is _NO_FIT:
                        unmapped = unmapped or {}
                        unmapped[source] = value
                        conflicts += 1
                        continue
                values = columns.get(column.name)  # _place(), inlined: this runs once per value
                if values is None:
                    values = columns[column.name] = []
                if len(values) < row_number:
                    values.extend([None] * (row_number - len(values)))
                values.append(converted)
        if unmapped:
            _place(columns, UNMAPPED_COLUMN, row_number, jsonutil.dumps_str(unmapped))
    for values in columns.values():
        if len(values) < len(rows):
            values.extend([None] * (len(rows) - len(values)))
    # A column both added and widened in this batch is simply added as FLOAT64.
    added = {c.name for c in new_columns}
    new_columns = [schema.columns[c.name] for c in new_columns]
    widened = [name for name in dict.fromkeys(widened) if name not in added]
    return TablePlan(schema.name, new_columns, widened, columns, len(rows), conflicts, capped)


def collapse_by_key(rows: list) -> list:
    """One row per key (the users table): newer non-null values win, older ones fill gaps."""
    if len(rows) < 2:
        return rows
    merged = {}
    for row in sorted(rows, key=lambda r: r.timestamp):
        flat = merged.setdefault(row.key, [row, {}])
        flat[0] = row
        for part in row.parts:
            flat[1].update((k, v) for k, v in part.items() if v is not None)
    return [row._replace(parts=(values,)) for row, values in merged.values()]
