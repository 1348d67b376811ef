"""The experiments' metrics checked against the event contracts, at launch.

A metric reads properties of its event: a mean metric sums `value`, a `when` condition tests
paths. When the event has a track contract, those paths must be declared there (or in
common.json), and `value` as a number, else the analysis would sum a typo or a string for
weeks. A `when` path outside `properties` (context.page.path, userId) is not checked: tracking
plans describe an event's properties and rarely its context. An event without a contract is
not checked (unplanned events are allowed unless contracts.unplanned says block).
"""
from typing import Iterator, Optional

from transforms.contracts.columns import leaf_type
from transforms.contracts.model import COMMON, TRACK_PREFIX
from transforms.rules import paths
from transforms.warehouse import naming, planner


def _declared(schema: dict, parts: tuple) -> Optional[dict]:
    """The schema of the value at `parts` of an event the contract describes; None when not declared."""
    node = schema
    for part in parts:
        properties = node.get("properties") if isinstance(node, dict) else None
        if not isinstance(properties, dict) or not isinstance(properties.get(part), dict):
            return None
        node = properties[part]
    return node


def _condition_paths(spec, where: str) -> Iterator[tuple]:
    """(path text, key path of the condition holding it) for every comparison in a `when`."""
    if not isinstance(spec, dict):
        return
    for kind in ("all", "any"):
        for index, inner in enumerate(spec.get(kind) or ()):
            yield from _condition_paths(inner, f"{where}.{kind}[{index}]")
    if "not" in spec:
        yield from _condition_paths(spec["not"], f"{where}.not")
    if "path" in spec:
        yield spec["path"], f"{where}.path"


def problems(settings, contracts) -> list:
    """[(key path, message)] for each metric path its event's contract does not declare as needed.
    `settings` is an ExperimentSettings, `contracts` the loaded Contract tuple."""
    by_name = {c.name: c for c in contracts}
    common = by_name.get(COMMON)
    found = []
    for index, metric in enumerate(settings.metrics):
        contract = by_name.get(TRACK_PREFIX + naming.table_name(metric.event))
        if contract is None:
            continue
        schemas = [contract.schema] + ([common.schema] if common else [])
        where = f"experiments.metrics[{index}]"
        if metric.value is not None:
            node = next(filter(None, (_declared(s, paths.parse(metric.value)) for s in schemas)), None)
            if node is None:
                found.append((f"{where}.value", f"{metric.value} is not declared in {contract.path} "
                                                f"(the contract of {metric.event!r})"))
            elif leaf_type(node, contract.path, "", []) not in planner.NUMERIC:
                found.append((f"{where}.value", f"{metric.value} is declared as "
                                                f"{leaf_type(node, contract.path, '', []) or 'any type'} in "
                                                f"{contract.path}; a mean metric sums a number or an integer"))
        for text, at in _condition_paths(metric.when, f"{where}.when"):
            parts = paths.parse(text)
            if parts[0] == "properties" and not any(_declared(s, parts) for s in schemas):
                found.append((at, f"{text} is not declared in {contract.path} (the contract of {metric.event!r})"))
    return found
