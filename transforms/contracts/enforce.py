"""Enforce contracts on one normalized event: pure, given compiled contracts.

Each event is checked against the common contract, its type's contract and, for track
events, its event's contract. The compiled validator (jsonschema-rs) decides valid or
not; only an invalid event is explained by the reference validator (`jsonschema`), so
every violation is reported the same way whichever validator ran. Formats are
annotations (the 2020-12 default) in both, so they agree; a `date-time` declaration still
types the warehouse column, where a value that is no time is kept in `_unmapped`.

Policies: unplanned track events `allow` or `block` (dead letter `unplanned_event`);
violations `allow` (stored, listed in the `_violations` column), `omit_properties`
(offending values removed, the rest stored, the removal listed), `block` (dead letter
`contract_violation` listing every violation). One blocking violation blocks the event.
"""
import copy
import re
from typing import NamedTuple, Optional

import jsonschema_rs
import referencing

from transforms.contracts.lint import validator_class
from transforms.contracts.model import COMMON, ContractSettings, TRACK_PREFIX, json_pointer
from transforms.messages import Rejection
from transforms.warehouse import naming

_MAX_MESSAGE = 300
# Only values inside these sections may be omitted; Segment's own fields never are.
_OMITTABLE = ("properties", "traits", "context")


class CompiledContract:
    def __init__(self, name: str, schema: dict, policy: str):
        self.name = name
        self.policy = policy
        self._schema = schema
        self._fast = jsonschema_rs.validator_for(schema, validate_formats=False, offline=True)
        self._reference = None

    def reference(self):
        if self._reference is None:  # only built once an event fails: the slow path
            cls = validator_class(self._schema)
            self._reference = cls(self._schema, registry=referencing.Registry())
        return self._reference

    def is_valid(self, body: dict) -> bool:
        try:
            return self._fast.is_valid(body)
        except (ValueError, TypeError, OverflowError):  # a value it cannot convert: ask the reference
            return self.reference().is_valid(body)

    def violations(self, body: dict) -> list:
        found = []
        for error in sorted(self.reference().iter_errors(body), key=lambda e: (list(map(str, e.absolute_path)),
                                                                                e.validator)):
            base = json_pointer(error.absolute_path)
            message = error.message if len(error.message) <= _MAX_MESSAGE else error.message[:_MAX_MESSAGE] + "…"
            extras = _unexpected_keys(error)
            if extras:
                found += [{"contract": self.name, "pointer": base + json_pointer([k]), "keyword": error.validator,
                           "message": f"unexpected property {k!r}"} for k in extras]
            else:
                found.append({"contract": self.name, "pointer": base, "keyword": error.validator,
                              "message": message})
        return found


def _unexpected_keys(error) -> list:
    if error.validator not in ("additionalProperties", "unevaluatedProperties") or not isinstance(error.instance, dict):
        return []
    known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
    patterns = error.schema.get("patternProperties", {}) if isinstance(error.schema, dict) else {}
    return [k for k in error.instance if k not in known and not any(re.search(p, k) for p in patterns)]


class Verdict(NamedTuple):
    body: dict
    violations: Optional[list] = None     # recorded with the stored event (`_violations`)
    rejection: Optional[Rejection] = None  # the event is a dead letter
    unplanned: bool = False


def _unescape(part: str) -> str:
    return part.replace("~1", "/").replace("~0", "~")


def _omit(body: dict, pointers: list) -> dict:
    """A copy of `body` without the values at `pointers` (list items removed last to first)."""
    body = copy.deepcopy(body)
    for pointer in sorted(pointers, key=lambda p: [(0, int(s)) if s.isdigit() else (1, s) for s in p.split("/")],
                          reverse=True):
        parts = [_unescape(p) for p in pointer.split("/")[1:]]
        parent = body
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.get(part)
            if parent is None:
                break
        if isinstance(parent, dict):
            parent.pop(parts[-1], None)
        elif isinstance(parent, list) and parts[-1].isdigit() and int(parts[-1]) < len(parent):
            del parent[int(parts[-1])]
    return body


def omittable(pointer: str) -> bool:
    parts = pointer.split("/")
    return len(parts) >= 3 and parts[1] in _OMITTABLE


class ContractEnforcer:
    """The compiled contracts of a ContractSettings, built once per worker (DoFn.setup)."""

    def __init__(self, settings: ContractSettings):
        self.enabled = bool(settings.directory)  # no contracts section: every event passes unchecked
        self.unplanned_policy = settings.unplanned
        self._by_name = {c.name: CompiledContract(c.name, c.schema, settings.policy(c.name))
                         for c in settings.contracts}
        self._common = self._by_name.get(COMMON)

    def applicable(self, body: dict) -> tuple:
        """(contracts that apply, unplanned?)"""
        kind = body["type"]
        found = [self._common] if self._common else []
        if kind == "track":
            contract = self._by_name.get(TRACK_PREFIX + naming.table_name(body["event"]))
            if contract is None:
                return found, True
            found.append(contract)
        elif kind in self._by_name:
            found.append(self._by_name[kind])
        return found, False

    def check(self, body: dict) -> Verdict:
        if not self.enabled:
            return Verdict(body)
        contracts, unplanned = self.applicable(body)
        if unplanned and self.unplanned_policy == "block":
            return Verdict(body, rejection=Rejection(
                "unplanned_event", f"track event {body['event'][:100]!r} has no contract "
                                   f"(track/{naming.table_name(body['event'])}.json)",
                {"event": body["event"], "contract": TRACK_PREFIX + naming.table_name(body["event"])}), unplanned=True)
        failed = [c for c in contracts if not c.is_valid(body)]
        if not failed:
            return Verdict(body, unplanned=unplanned)
        violations = []
        for contract in failed:
            for violation in contract.violations(body):
                violation["action"] = _action(contract.policy, violation["pointer"])
                violations.append(violation)
        if not violations:  # the validators disagree: trust the reference, never block on nothing
            return Verdict(body, unplanned=unplanned)
        if any(v["action"] == "blocked" for v in violations):
            blocked = [v for v in violations if v["action"] == "blocked"]
            summary = "; ".join(f"{v['pointer'] or '/'}: {v['message']}" for v in blocked[:3])
            more = f" (and {len(blocked) - 3} more)" if len(blocked) > 3 else ""
            return Verdict(body, violations, Rejection(
                "contract_violation", f"{len(blocked)} contract violation(s): {summary}{more}",
                {"violations": violations}), unplanned)
        omitted = [v["pointer"] for v in violations if v["action"] == "omitted"]
        return Verdict(_omit(body, omitted) if omitted else body, violations, None, unplanned)


def _action(policy: str, pointer: str) -> str:
    if policy == "block":
        return "blocked"
    if policy == "omit_properties" and omittable(pointer):
        return "omitted"
    return "kept"
