"""Schema-driven warehouse types: which column type a contract declares for each value.

A contract describes the whole event, so `/properties/properties/properties/total` in the
schema is the value at `/properties/total` in the event. Declared leaves map to planner
types (integer INT64, number FLOAT64, boolean BOOL, string STRING or, with format
date-time, TIMESTAMP, arrays JSON); objects are followed down to the flattening depth,
as the layout flattens them, and past it are JSON. An undeclared value keeps Segment's
rule: its first value decides.
"""
from collections import defaultdict

from transforms.contracts.model import COMMON, Contract, Problem
from transforms.warehouse import layout, naming, planner

# Which tables a contract's events land in ("*": every table).
_TABLES = {COMMON: ("*",), "identify": ("identifies", "users"), "group": ("groups",),
           "page": ("pages",), "screen": ("screens",), "alias": ("aliases",)}


def section_of(contract: Contract):
    """The part of the event flattened without its prefix in the contract's own table."""
    return None if contract.name == COMMON else layout.SECTION["track" if contract.table else contract.name]


def tables_of(contract: Contract) -> tuple:
    return (contract.table, "tracks") if contract.table else _TABLES[contract.name]


def _types(node: dict) -> set:
    # Contracts that fail the meta-schema are linted too, so anything may stand where a type is.
    declared = node.get("type")
    kinds = {k for k in ([declared] if isinstance(declared, str) else declared if isinstance(declared, list) else [])
             if isinstance(k, str)}
    if not kinds:  # enum / const of one JSON type also declare it
        values = node.get("enum", [node["const"]] if "const" in node else [])
        kinds = {_json_type(v) for v in values} if isinstance(values, list) else set()
    return kinds


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "null")


def leaf_type(node: dict, path: str, pointer: str, problems: list):
    """The planner type a leaf schema declares, or None (undeclared)."""
    kinds = _types(node) - {"null"}
    if not kinds:
        if node.get("type") == "null":
            problems.append(Problem(path, pointer, "a value that can only be null cannot be a warehouse column"))
        return None
    if kinds == {"integer"}:
        return planner.INT64
    if kinds <= {"integer", "number"}:
        return planner.FLOAT64
    if kinds == {"boolean"}:
        return planner.BOOL
    if kinds == {"string"}:
        return planner.TIMESTAMP if node.get("format") == "date-time" else planner.STRING
    if len(kinds) == 1:
        return planner.JSON  # array, or an object stored whole
    problems.append(Problem(path, pointer, f"a union of {', '.join(sorted(kinds))} fits no single column type; "
                                           "its values are stored as JSON", "warning"))
    return planner.JSON


def _walk(node, event_pointer: str, schema_pointer: str, level: int, depth: int, section: str,
          path: str, out: dict, problems: list):
    properties = node.get("properties") if isinstance(node, dict) else None
    if not isinstance(properties, dict):
        return
    for key, sub in properties.items():
        if not isinstance(sub, dict):
            continue
        pointer = event_pointer + "/" + layout._escape(key)
        at = f"{schema_pointer}/properties/{layout._escape(key)}"
        is_section = level == 1 and key == section
        flattened = is_section or (level < depth and isinstance(sub.get("properties"), dict))
        if _types(sub) - {"null"} <= {"object"} and flattened:
            _walk(sub, pointer, at, level + 1, depth, section, path, out, problems)
            continue
        if level == 1 and pointer in _FIXED_POINTERS:
            continue  # Segment's own fields keep their fixed column types
        if _types(sub) - {"null"} == {"object"} and level < depth:
            continue  # an open object within the depth: flattened key by key at run time
        kind = leaf_type(sub, path, at, problems)
        if kind is not None:
            out[pointer] = (kind, at)


_FIXED_POINTERS = frozenset(c.source for t in ("tracks", "groups", "aliases", "users")
                            for c in planner.fixed_columns(t))


def declared_columns(contract: Contract, depth: int, problems: list) -> dict:
    """{event pointer: (planner type, schema pointer)} for one contract."""
    out = {}
    section = section_of(contract)
    _walk(contract.schema, "", "", 1, depth, section, contract.path, out, problems)
    return out


def declared_types(contracts, depth: int, problems: list) -> dict:
    """{table or "*": {pointer: type}} over every contract; a pointer declared with two types
    for one table is a problem."""
    result = defaultdict(dict)
    origin = {}
    for contract in contracts:
        for pointer, (kind, at) in declared_columns(contract, depth, problems).items():
            for table in tables_of(contract):
                previous = result[table].get(pointer) or result["*"].get(pointer)
                if previous is not None and previous != kind:
                    first = origin[(table if pointer in result[table] else "*", pointer)]
                    problems.append(Problem(contract.path, at, f"declares {pointer} as {kind}, but {first} "
                                                               f"declares it as {previous}"))
                    continue
                result[table][pointer] = kind
                origin[(table, pointer)] = f"{contract.path}#{at}"
    return {table: dict(pointers) for table, pointers in result.items()}


def column_collisions(contracts, depth: int) -> list:
    """Problems for declared values that would share a column name, or take a fixed one."""
    problems = []
    for contract in contracts:
        section = section_of(contract)
        names = defaultdict(list)
        for pointer, (_, at) in declared_columns(contract, depth, []).items():
            strip = "/" + section if section and pointer.startswith("/" + section + "/") else ""
            names[naming.column_name(layout.unescape_pointer(pointer[len(strip):]))].append((pointer, at))
        fixed = {c.name for table in tables_of(contract) if table != "*" for c in planner.fixed_columns(table)}
        fixed |= {c.name for c in planner.fixed_columns("tracks")} if contract.name == COMMON else set()
        for name, sources in sorted(names.items()):
            if len(sources) > 1:
                listed = " and ".join(p for p, _ in sources)
                for _, at in sources:
                    problems.append(Problem(contract.path, at, f"{listed} both become the column {name!r}; "
                                                               "rename one so they stay apart"))
            elif name in fixed and sources[0][0] not in _FIXED_POINTERS:
                problems.append(Problem(contract.path, sources[0][1],
                                        f"{sources[0][0]} becomes {name!r}, the name of one of Segment's fixed "
                                        "columns; it would be stored under a suffixed name"))
    return problems
