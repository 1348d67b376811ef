"""Read a contracts directory (local or gs://) into Contracts, reporting every problem.

Reading happens at launch, before the graph is built; the schemas then travel with the
graph, so workers never need to reach the directory.
"""
import json
import posixpath

from apache_beam.io.filesystems import FileSystems

from transforms.contracts.model import COMMON, TRACK_PREFIX, TYPE_CONTRACTS, Contract, Problem
from transforms.warehouse import naming


def _join(directory: str, *parts: str) -> str:
    return FileSystems.join(directory.rstrip("/"), *parts)


def _list(pattern: str) -> list:
    matches = FileSystems.match([pattern])[0].metadata_list
    return sorted(m.path for m in matches)


def _read_json(path: str):
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


def _name_for(directory: str, path: str):
    """The contract name a file stands for, or a Problem saying why it stands for none."""
    relative = path[len(directory.rstrip("/")) + 1:]
    stem, ext = posixpath.splitext(relative)
    if ext != ".json":
        return Problem(path, "", "not a contract: contracts are .json files")
    if stem == COMMON or stem in TYPE_CONTRACTS:
        return stem
    if stem.startswith(TRACK_PREFIX) and "/" not in stem[len(TRACK_PREFIX):]:
        table = stem[len(TRACK_PREFIX):]
        if naming.table_name(table) != table:
            return Problem(path, "", f"a track contract is named after its event's table; "
                                     f"events named {table!r} land in {naming.table_name(table)!r}, "
                                     f"so the file would be track/{naming.table_name(table)}.json")
        return stem
    return Problem(path, "", "not a contract name: use common.json, "
                             + ", ".join(f"{t}.json" for t in TYPE_CONTRACTS) + " or track/<table>.json")


def load_directory(directory: str) -> tuple:
    """(contracts, problems) for a directory; a directory that is missing is one problem."""
    if not FileSystems.exists(directory.rstrip("/") or "/"):
        return (), [Problem(directory, "", "the contracts directory does not exist")]
    paths = _list(_join(directory, "*")) + _list(_join(directory, "track", "*"))
    contracts, problems = [], []
    for path in paths:
        if path.rstrip("/") == _join(directory, "track") or path.endswith("/"):
            continue  # the track/ folder itself (local match lists directories)
        name = _name_for(directory, path)
        if isinstance(name, Problem):
            problems.append(name)
            continue
        try:
            schema = _read_json(path)
        except (ValueError, UnicodeDecodeError) as exc:
            problems.append(Problem(path, "", f"not valid JSON: {exc}"))
            continue
        if not isinstance(schema, dict):
            problems.append(Problem(path, "", "a contract must be a JSON Schema object"))
            continue
        event = schema.get("title") if name.startswith(TRACK_PREFIX) else None
        contracts.append(Contract(name, path, schema, event if isinstance(event, str) else None))
    return tuple(sorted(contracts, key=lambda c: c.name)), problems
