"""Import a Segment Protocols tracking plan export into a contracts directory.

Both export shapes are read: the Config API's (`rules.global`, `rules.events[]` with
`name` and `rules`, `rules.identify`, `rules.group`) and the Public API's (`rules[]` with
`type` TRACK / IDENTIFY / GROUP / PAGE / SCREEN / COMMON, `key` and `jsonSchema`), at the
top level or under `tracking_plan`, `trackingPlan` or `data`. Segment's rules already
describe the whole event, as Sluice contracts do, so each is written unchanged; a track
rule gets a `title` with its event name when it has none.
"""
import json
import os
from typing import NamedTuple

from pipeline.errors import UsageError
from transforms.warehouse import naming

_PUBLIC_TYPES = {"COMMON": "common", "IDENTIFY": "identify", "GROUP": "group", "PAGE": "page", "SCREEN": "screen"}
_CONFIG_KEYS = {"global": "common", "identify": "identify", "identify_traits": "identify",
                "group": "group", "group_traits": "group"}


class Imported(NamedTuple):
    files: list
    warnings: list


def _unwrap(document: dict) -> dict:
    for key in ("tracking_plan", "trackingPlan", "data"):
        if isinstance(document.get(key), dict):
            return _unwrap(document[key])
    return document


def contracts_from_plan(document) -> tuple:
    """({contract name: schema}, warnings) from a parsed export."""
    if not isinstance(document, dict) or "rules" not in _unwrap(document):
        raise UsageError("not a Segment tracking plan export: no `rules` found")
    rules = _unwrap(document)["rules"]
    found, warnings = {}, []

    def add(name, schema, label):
        if not isinstance(schema, dict) or not schema:
            return
        if name in found:
            raise UsageError(f"{label} and another rule both become the contract {name}; "
                             "Sluice keeps one contract per warehouse table")
        found[name] = schema

    def add_track(event, schema):
        if not isinstance(event, str) or not event:
            warnings.append("skipped a track rule without an event name")
            return
        schema = dict(schema or {})
        schema.setdefault("title", event)
        add("track/" + naming.table_name(event), schema, f"event {event!r}")

    if isinstance(rules, dict):  # Config API
        for key, name in _CONFIG_KEYS.items():
            add(name, rules.get(key), f"rules.{key}")
        for event in rules.get("events") or []:
            add_track(event.get("name"), event.get("rules"))
    elif isinstance(rules, list):  # Public API
        for rule in rules:
            kind = str(rule.get("type", "")).upper()
            schema = rule.get("jsonSchema") or rule.get("json_schema")
            if kind == "TRACK":
                add_track(rule.get("key"), schema)
            elif kind in _PUBLIC_TYPES:
                add(_PUBLIC_TYPES[kind], schema, f"{kind} rule")
            else:
                warnings.append(f"skipped a rule of unknown type {kind!r}")
    else:
        raise UsageError("not a Segment tracking plan export: `rules` is neither an object nor a list")
    return found, warnings


def import_plan(plan_path: str, directory: str, overwrite: bool = False) -> Imported:
    try:
        with open(plan_path, encoding="utf-8") as handle:
            document = json.load(handle)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{plan_path}: cannot read the export ({exc})") from exc
    contracts, warnings = contracts_from_plan(document)
    paths = {name: os.path.join(directory, *name.split("/")) + ".json" for name in contracts}
    existing = [p for p in paths.values() if os.path.exists(p)]
    if existing and not overwrite:
        raise UsageError(f"{existing[0]} exists (and {len(existing) - 1} more); pass --force to overwrite")
    for name, path in sorted(paths.items()):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(contracts[name], handle, indent=2, ensure_ascii=False)
            handle.write("\n")
    return Imported(sorted(paths.values()), warnings)
