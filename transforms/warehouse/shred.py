"""Shredding in bulk: a batch's events go to DuckDB as JSON text, and DuckDB extracts their columns.

planner.plan_rows places each value in its column in Python; with the layout's flattening and the
Arrow conversion that is about 30 us an event, half of a batch run's time. Once a table has a column
for each field its events carry (a run's steady state), the placement is mechanical and DuckDB does
it natively: each event's normalized body is serialized once (orjson), json_group_structure reads
each group's structure (one event type, one track name), and a group whose every field has a
column in each of its tables is one INSERT ... SELECT over json_transform per table, in the batch's
transaction; a value of a type its column does not take is sorted row by row into `_unmapped`, as
the planner sorts it. The other groups' events (a new field, a new table) are planned in Python
after that transaction, in a second one (duckdb_backend.Shredding), and some events always are:
computed columns (contract violations, transport metadata, an exposure), an identify with a userId
(`users`), an empty object. What is stored is the same either way (tests/pipeline/test_shred.py
writes random batches both ways and compares), with one difference of notation: a float inside a
JSON column is written by DuckDB (1e+20 as 100000000000000000000.0), the same number.
"""
from typing import NamedTuple, Optional

import orjson
import pyarrow as pa

from transforms.experiments.extract import Exposure
from transforms.warehouse import layout, naming, planner
from transforms.warehouse.sqltext import literal, quote

SOURCE = "_sluice_shred"  # the registered table of a batch's events in bulk form (arrow_table)

# What json_group_structure calls a leaf's values, by the column types that take them unchanged.
_TAKES = {
    planner.STRING: ("VARCHAR", "NULL"),
    planner.TIMESTAMP: ("VARCHAR", "NULL"),
    planner.BOOL: ("BOOLEAN", "NULL"),
    # integers of both signs merge as HUGEINT; past INT64 the cast fails and the batch is planned again
    planner.INT64: ("UBIGINT", "BIGINT", "HUGEINT", "NULL"),
    planner.FLOAT64: ("DOUBLE", "UBIGINT", "BIGINT", "HUGEINT", "NULL"),
}
# json_transform's type for each column type, and the expression that makes the column's value of it.
_EXTRACT = {
    planner.STRING: ("VARCHAR", "{v}"),
    planner.TIMESTAMP: ("VARCHAR", "CAST({v} AS TIMESTAMPTZ)"),
    planner.BOOL: ("BOOLEAN", "{v}"),
    planner.INT64: ("JSON", "CAST({v} AS BIGINT)"),  # a strict cast: an integer past INT64 fails the batch
    # an integer past 2^53 is a type conflict in Python (kept in _unmapped): here it fails the batch
    planner.FLOAT64: ("JSON", "CASE WHEN json_type({v}) IN ('UBIGINT', 'BIGINT', 'HUGEINT') THEN CASE WHEN "
                              f"abs(CAST({{v}} AS HUGEINT)) > {planner.EXACT_FLOAT} THEN error('integer past 2^53 "
                              "for a FLOAT64 column') ELSE CAST({v} AS DOUBLE) END ELSE CAST({v} AS DOUBLE) END"),
    planner.JSON: ("JSON", "{v}"),
}


def targets(kind: str, table: str = "") -> tuple:
    """The tables an event of type `kind` (a track's: `table`) goes to in bulk: its type's table
    (layout.PRIMARY_TABLE), and a track's event table."""
    primary = layout.PRIMARY_TABLE[kind]
    return (primary, table) if kind == "track" else (primary,)


class Shreddable(NamedTuple):
    """An event as the bulk path takes it: its body as JSON without `integrations` (kept apart,
    stored whole) and without an empty section (which the layout ignores)."""
    kind: str
    table: str                   # a track's event table, else ""
    text: bytes
    integrations: Optional[str]  # the `integrations` object as JSON text, if the event has one


class Insert(NamedTuple):
    table: str
    sql: str   # INSERT INTO table BY NAME SELECT ... FROM the batch's registered events
    rows: int
    conflicts: Optional[str] = None  # a query of the rows' type conflicts (values sent to `_unmapped`)


def shreddable(event, exposures=None) -> Optional[Shreddable]:
    """The event as the bulk path takes it, or None when only Python can plan it: rows with
    computed columns (violations, metadata, an exposure), an identify with a userId (its `users`
    row is merged per user in Python, and goes in the same transaction), an empty object (stored
    whole, as "{}", where json_group_structure would merge it with the same field's other objects),
    or a body orjson cannot write exactly (an integer past 64 bits, a key that is not a string)."""
    if event.violations or event.attributes:
        return None
    body = event.body
    kind = body["type"]
    if kind == "identify" and "userId" in body:
        return None
    if exposures is not None and type(exposures.read(body)) is Exposure:
        return None
    section = layout.SECTION[kind]
    integrations = body.get("integrations")
    if "integrations" in body or (section in body and not body[section]):
        body = {k: v for k, v in body.items() if k != "integrations" and (k != section or v)}
    try:
        text = orjson.dumps(body)
        integrations = None if integrations is None else orjson.dumps(integrations).decode()
    except TypeError:  # orjson.JSONEncodeError
        return None
    if b":{}" in text:
        return None
    return Shreddable(kind, naming.table_name(body["event"]) if kind == "track" else "", text, integrations)


def group(shreddable_: Shreddable) -> str:
    """The group an event is shredded in: its type, and a track's table."""
    return shreddable_.kind + ":" + shreddable_.table


# Rows per json_group_structure query: its state grows with every row it merges (measured, DuckDB 2.0:
# 20,000 realistic events need more than 128 MB), so a batch is read in parts, merged here. A part
# that runs out of memory anyway (what else DuckDB holds at the time counts too) is read in halves,
# down to MIN_STRUCTURE_ROWS.
STRUCTURE_ROWS = 4096
MIN_STRUCTURE_ROWS = 256
_INTEGERS = ("UBIGINT", "BIGINT", "HUGEINT")
_NUMBERS = ("UBIGINT", "BIGINT", "HUGEINT", "DOUBLE")


def structure_parts(rows: int) -> list:
    """(start, rows) of each part of a batch of `rows` events that one structure_query reads."""
    return [(start, min(STRUCTURE_ROWS, rows - start)) for start in range(0, rows, STRUCTURE_ROWS)]


def structure_query(source: str, start: int, rows: int) -> str:
    """The query of (grp, structure, events with `integrations`) over `rows` of `source`'s events
    from position `start`."""
    return (f"SELECT grp, json_group_structure(CAST(j AS JSON)), count(integ) FROM {source} "
            f"WHERE n >= {start} AND n < {start + rows} GROUP BY grp")


def merge(a, b):
    """Two parsed json_group_structure results as one, as DuckDB merges them where the bulk path
    can tell (integers of both signs: HUGEINT, the column's cast then checks the range), else "JSON"."""
    if a == b or b == "NULL":
        return a
    if a == "NULL":
        return b
    if type(a) is dict and type(b) is dict:
        merged = dict(a)
        for key, value in b.items():
            merged[key] = merge(merged[key], value) if key in merged else value
        return merged
    if type(a) is list and type(b) is list:
        return a or b  # an array is stored whole whatever it holds
    if type(a) is str and type(b) is str:
        if a in _INTEGERS and b in _INTEGERS:
            return "HUGEINT"
        if a in _NUMBERS and b in _NUMBERS:
            return "DOUBLE"
    return "JSON"


def arrow_table(candidates: list, keys: list = None) -> pa.Table:
    """The batch's events in bulk form, to register as SOURCE: j (the JSON text, of Arrow's JSON
    type, which DuckDB takes as JSON without validating it again: orjson wrote it), grp (group()),
    integ (`integrations` as JSON text), k (the key the warehouse dedupes the event by; left out
    without `keys`) and n (its position, for structure_query)."""
    columns = {"j": pa.array([c.text for c in candidates], pa.json_()),
               "grp": pa.array([group(c) for c in candidates], pa.string()),
               "integ": pa.array([c.integrations for c in candidates], pa.string())}
    if keys is not None:
        columns["k"] = pa.array(keys, pa.string())
    columns["n"] = pa.array(range(len(candidates)), pa.int64())
    return pa.table(columns)


def merge_groups(parts) -> dict:
    """{grp: [structure, events with integrations]} of several parts' structure_query rows, merged
    in order. (How many events a group has is the caller's to count: a structure read ahead may
    cover events the batch then leaves out.)"""
    groups = {}
    for rows in parts:
        for group_, structure, integrations in rows:
            merged = groups.setdefault(group_, ["NULL", 0])  # merge("NULL", s) is s
            merged[0] = merge(merged[0], orjson.loads(structure))
            merged[1] += integrations
    return groups


def inserts(group_: str, structure: dict, rows: int, has_integrations: bool, schemas: dict, max_depth: int,
            loaded_at: str, source: str) -> Optional[list]:
    """The Inserts that write one group of a batch's events from the registered table `source`
    (arrow_table), one per table they go to; None unless every one of those tables has a column
    for each of the group's fields (`structure`: json_group_structure's, parsed), in which case
    Python plans them all, so that each event is written in one transaction."""
    kind, table = group_.split(":", 1)
    found = []
    for target in targets(kind, table):
        schema = schemas.get(target)
        leaves = _table_leaves(kind, target, structure, max_depth)
        if schema is None or leaves is None:
            return None
        select = _select(schema, leaves, kind, table, has_integrations)
        if select is None:
            return None
        spec, columns, conflicts = select
        rows_of = (f"FROM (SELECT json_transform(j, {literal(orjson.dumps(spec).decode())}) AS s, integ "
                   f"FROM {source} WHERE grp = {literal(group_)})")
        sql = f"INSERT INTO {quote(target)} BY NAME SELECT {', '.join(columns)}, {loaded_at} AS loaded_at {rows_of}"
        counted = f"SELECT {' + '.join(f'count_if({c})' for c in conflicts)} {rows_of}" if conflicts else None
        found.append(Insert(target, sql, rows, counted))
    return found


def widening(group_: str, structure: dict, schemas: dict, max_depth: int) -> set:
    """The tables where planning the group's events in Python may widen an INT64 column (a float
    among the values of one of its fields). Its widening checks the column's values, so bulk rows
    of the same batch must not be in the table before it: the groups writing there wait too. A
    field whose values merge as "JSON" (an object in some events, a scalar in others) hides what
    the objects hold: any INT64 column below it counts."""
    kind, table = group_.split(":", 1)
    found = set()
    for target in targets(kind, table):
        schema = schemas.get(target)
        if schema is None:
            continue
        for path, kind_of_values, _ in _table_leaves(kind, target, structure, max_depth, strict=False):
            pointer = layout.pointer(path)
            column = schema.by_source.get(pointer)
            if column is not None and column.type == planner.INT64 and kind_of_values in ("DOUBLE", "JSON"):
                found.add(target)
            elif kind_of_values in ("JSON", "OBJECT") and any(
                    source.startswith(pointer + "/") and below.type == planner.INT64
                    for source, below in schema.by_source.items()):
                found.add(target)
    return found


class _NotShreddable(Exception):
    pass


def _table_leaves(kind: str, target: str, structure: dict, max_depth: int, strict: bool = True) -> Optional[list]:
    """_leaves of a group's rows in one of its tables (a track's common part in `tracks`, the
    common part and the section elsewhere); None when they cannot go in bulk (`strict`: all the
    same, keys DuckDB's structs cannot hold included)."""
    section = layout.SECTION[kind] if target != "tracks" else None
    if section in structure and type(structure[section]) is not dict:
        if strict:
            return None
        section = None
    try:
        leaves = list(_leaves(structure, (), 1, max_depth, skip=(*layout.ALWAYS_SKIPPED, layout.SECTION[kind]),
                              reserved=("event", layout.SECTION[kind] or "event"), strict=strict))
        if section in structure:
            leaves += _leaves(structure[section], (section,), 2, max_depth, strict=strict)
    except _NotShreddable:
        return None
    return leaves


def _leaves(node: dict, path: tuple, depth: int, max_depth: int, skip=(), reserved=(), strict=True):
    """(path, json_group_structure type, whether the layout flattens an object there) of each value
    the layout flattens `node` into: an object below `max_depth` is flattened, anything else is a
    leaf ("OBJECT", "ARRAY" for a whole one; "JSON" for values of several types)."""
    folded = {key.lower() for key in reserved}  # keys the spec holds besides these leaves
    for key, sub in node.items():
        if key in skip:
            continue
        lowered = key.lower()
        if strict and (not key or lowered in folded):  # DuckDB's struct fields: non-empty, case-insensitive
            raise _NotShreddable()
        folded.add(lowered)
        if type(sub) is dict:
            if depth < max_depth and sub:
                yield from _leaves(sub, path + (key,), depth + 1, max_depth, strict=strict)
            else:
                yield path + (key,), "OBJECT", False
        elif type(sub) is list:
            yield path + (key,), "ARRAY", False
        else:
            yield path + (key,), sub, depth < max_depth


def _select(schema, leaves, kind, table, has_integrations):
    """(json_transform spec, SELECT expressions, type-conflict conditions) for the leaves, or None
    when one has no column. A leaf whose values its column takes as they are is extracted as that
    type; any other is extracted as JSON and sorted value by value as planner.plan_rows sorts it:
    into the column, converted, or into `_unmapped` (a type conflict, counted); where Python would
    change the schema instead (an object to flatten, a fraction for an INT64 column it widens) the
    INSERT fails and the batch is planned in Python."""
    spec, columns, conflicts, unmapped = {}, [], [], []
    by_source = schema.by_source
    for path, kind_of_values, flattened in leaves:
        if kind_of_values == "NULL":
            continue  # Python skips nulls too: no column needed
        source = layout.pointer(path)
        column = by_source.get(source)
        if column is None or (column.type == planner.TIMESTAMP and source not in layout.TIME_POINTERS):
            return None  # a new field; or a contract's TIMESTAMP, which Python parses and reformats
        value = "s" + "".join(f"[{literal(key)}]" for key in path)
        if kind_of_values in _TAKES.get(column.type, ()) or \
                (column.type == planner.JSON and not (flattened and kind_of_values == "JSON")):
            transform_type, expression = _EXTRACT[column.type]
        else:
            transform_type = "JSON"
            expression, conflict = _sorted_values(column, column.name in schema.no_widen, flattened)
            if conflict:
                conflicts.append(conflict.format(v=value))
                unmapped.append(f"CASE WHEN {conflicts[-1]} THEN {literal(orjson.dumps(source).decode() + ':')} "
                                f"|| CAST({value} AS VARCHAR) END")
        node = spec
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = transform_type
        columns.append(f"{expression.format(v=value)} AS {quote(column.name)}")
    if kind == "track":
        for source, value in ((layout.EVENT_POINTER, literal(table)), ("/event", None)):
            column = by_source.get(source)
            if column is None or column.type != planner.STRING:
                return None
            if value is None:
                spec["event"] = "VARCHAR"
                value = "s['event']"
            columns.append(f"{value} AS {quote(column.name)}")
    if has_integrations:
        column = by_source.get("/integrations")
        if column is None or column.type != planner.JSON:
            return None
        columns.append(f"CAST(integ AS JSON) AS {quote(column.name)}")
    if unmapped:  # the row's conflicting values as one object keyed by pointer, as plan_rows writes it
        columns.append(f"CAST(CASE WHEN {' OR '.join(conflicts)} THEN '{{' || concat_ws(',', {', '.join(unmapped)}) "
                       f"|| '}}' END AS JSON) AS {quote(by_source[layout.UNMAPPED].name)}")
    return spec, columns, conflicts


# Conditions use TRY_CAST: DuckDB evaluates both sides of an AND for every row (CASE branches only for theirs).
_INTEGER = "json_type({v}) IN ('UBIGINT', 'BIGINT', 'HUGEINT')"
_DOUBLE = "TRY_CAST({v} AS DOUBLE)"
# Per column type: (which JSON values it takes, as what); the others are type conflicts (planner.fit).
_FITS = {
    planner.STRING: ("json_type({v}) = 'VARCHAR'", "json_extract_string({v}, '$')"),
    planner.TIMESTAMP: ("json_type({v}) = 'VARCHAR'", "CAST(json_extract_string({v}, '$') AS TIMESTAMPTZ)"),
    planner.BOOL: ("json_type({v}) = 'BOOLEAN'", "CAST({v} AS BOOLEAN)"),
    planner.INT64: (f"({_INTEGER} AND TRY_CAST({{v}} AS BIGINT) IS NOT NULL OR json_type({{v}}) = 'DOUBLE' AND "
                    f"{_DOUBLE} = trunc({_DOUBLE}) AND abs({_DOUBLE}) <= {planner.EXACT_FLOAT})",
                    "CASE WHEN json_type({v}) = 'DOUBLE' THEN CAST(CAST({v} AS DOUBLE) AS BIGINT) "
                    "ELSE CAST({v} AS BIGINT) END"),
    planner.FLOAT64: (f"(json_type({{v}}) = 'DOUBLE' OR {_INTEGER} AND "
                      f"abs(TRY_CAST({{v}} AS HUGEINT)) <= {planner.EXACT_FLOAT})", "CAST({v} AS DOUBLE)"),
    planner.JSON: ("true", "{v}"),
}


def _sorted_values(column, no_widen: bool, flattened: bool) -> tuple:
    """(the column's expression, the conflict condition or None) for a leaf extracted as JSON whose
    values are sorted one by one. Where Python would change the schema the expression fails."""
    fits, converted = _FITS[column.type]
    schema_changes = []
    if flattened:
        schema_changes.append("json_type({v}) = 'OBJECT'")  # Python flattens it into columns of its own
    if column.type == planner.INT64 and not no_widen:  # any float the column does not take: Python widens it
        schema_changes.append(f"json_type({{v}}) = 'DOUBLE' AND NOT coalesce({_DOUBLE} = trunc({_DOUBLE}) AND "
                              f"abs({_DOUBLE}) <= {planner.EXACT_FLOAT}, false)")
    guard = " OR ".join(schema_changes)
    expression = (f"CASE WHEN {guard} THEN error('a value the layout would change the schema for') " if guard
                  else "CASE ") + f"WHEN coalesce({fits}, false) THEN {converted} END"
    if column.type == planner.JSON:
        return expression, None
    return expression, f"({{v}} IS NOT NULL AND NOT coalesce({fits}, false))"
