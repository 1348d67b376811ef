"""Read a contracts directory (local or gs://) into Contracts, reporting every problem.

Reading happens at launch, before the graph is built; the schemas then travel with the
graph, so workers never need to reach the directory.
"""
import json
import os
import posixpath
from typing import NamedTuple

from apache_beam.io.filesystems import FileSystems

from transforms.contracts.model import COMMON, TRACK_PREFIX, TYPE_CONTRACTS, Contract, Problem
from transforms.warehouse import naming


class MissingDirectory(Exception):
    """The contracts directory is not there, or is a file: one line, not a problem per file."""


def _join(directory: str, *parts: str) -> str:
    return FileSystems.join(directory.rstrip("/"), *parts)


def _list(pattern: str) -> list:
    matches = FileSystems.match([pattern])[0].metadata_list
    return sorted(m.path for m in matches)


def _is_file(path: str) -> bool:
    """Whether the path is a file (an object, on gs://, where a directory is only a prefix)."""
    if FileSystems.get_scheme(path) is None:
        return os.path.isfile(path)
    return any(m.path == path for m in FileSystems.match([path])[0].metadata_list)


def _read_json(path: str):
    with FileSystems.open(path) as handle:
        return json.loads(handle.read().decode("utf-8"))


def belongs(event: str, table: str) -> str:
    """What a track contract's file name must be for the event its `title` names."""
    return f"event {event!r} lands in table {table!r}, so its contract belongs in track/{table}.json"


def _name_for(directory: str, path: str, event) -> tuple:
    """(the contract name the file stands for, or would stand for if named right, or None;
    a Problem with its name, or None). A misnamed track file is still read and checked under
    the name it should have, so one run reports its other problems too."""
    relative = path[len(directory.rstrip("/")) + 1:]
    stem = posixpath.splitext(relative)[0]
    if stem == COMMON or stem in TYPE_CONTRACTS:
        return stem, None
    if stem.startswith(TRACK_PREFIX) and "/" not in stem[len(TRACK_PREFIX):]:
        if naming.table_name(stem[len(TRACK_PREFIX):]) == stem[len(TRACK_PREFIX):]:
            return stem, None  # a title naming another table is lint's to report, at /title
        table = naming.table_name(event or stem[len(TRACK_PREFIX):])
        if event:  # the title names the event; lint's title check would say it again
            return TRACK_PREFIX + table, Problem(path, "", "a track contract is named after its event's table: "
                                                           + belongs(event, table))
        return TRACK_PREFIX + table, Problem(
            path, "", f"a track contract is named after its event's table; events named {stem[len(TRACK_PREFIX):]!r} "
                      f"land in {table!r}, so the file would be track/{table}.json")
    return None, Problem(path, "", "not a contract name: use common.json, "
                                   + ", ".join(f"{t}.json" for t in TYPE_CONTRACTS) + " or track/<table>.json")


class Directory(NamedTuple):
    contracts: tuple   # Contract, in name order: the files named right
    problems: list     # what stops a file from being a contract (name, JSON)
    misnamed: list     # Contract under the name its file should have: checked, never used
    unnamed: list      # Contract (name: the file's) of JSON files that are no contract: meta-schema only


def load_directory(directory: str) -> Directory:
    """Every file of a directory read; a directory that is missing (or a file) raises MissingDirectory."""
    if not FileSystems.exists(directory.rstrip("/") or "/"):
        raise MissingDirectory(f"{directory}: no such directory")
    if _is_file(directory.rstrip("/")):  # else it would read as an empty directory: "0 contract(s)"
        raise MissingDirectory(f"{directory}: a file, not a directory of contracts (common.json, "
                               "track/<table>.json, ...)")
    paths = _list(_join(directory, "*")) + _list(_join(directory, "track", "*"))
    found = Directory([], [], [], [])
    for path in paths:
        if path.rstrip("/") == _join(directory, "track") or path.endswith("/"):
            continue  # the track/ folder itself (local match lists directories)
        if posixpath.splitext(path)[1] != ".json":
            found.problems.append(Problem(path, "", "not a contract: contracts are .json files"))
            continue
        try:
            schema = _read_json(path)
        except (ValueError, UnicodeDecodeError) as exc:
            found.problems.append(Problem(path, "", f"not valid JSON: {exc}"))
            continue
        if not isinstance(schema, dict):
            found.problems.append(Problem(path, "", "a contract must be a JSON Schema object"))
            continue
        title = schema.get("title") if path[len(directory.rstrip("/")) + 1:].startswith(TRACK_PREFIX) else None
        event = title if isinstance(title, str) and title else None  # "": no event name, as when absent
        name, problem = _name_for(directory, path, event)
        contract = Contract(name or path, path, schema, event)
        if problem is not None:
            found.problems.append(problem)
        (found.contracts if problem is None else found.misnamed if name else found.unnamed).append(contract)
    return found._replace(contracts=tuple(sorted(found.contracts, key=lambda c: c.name)))
