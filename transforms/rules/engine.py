"""The config's `transforms` list, compiled into rules applied in order to each event.

A rule is scoped (all optional, all must hold): `types` (event types), `events` (globs on
the event's name: `event` for track, `name` for page and screen), `sources` (globs on
where the event came from, `file:...` or `pubsub:...`) and `when` (a condition, see
conditions.py). It has exactly one action:

    rename_event: NAME                  set: {PATH: {value: X} | {copy: PATH}, ...}
    rename: {OLD_PATH: NEW_PATH, ...}   drop: [PATH, ...]
    hash: {paths: [...], salt_env: VAR | salt_file: FILE, lowercase: false}
    anonymize_ip: true | [PATH, ...]    drop_event: true    enrich: campaign | user_agent

Rules see the event as the rules before them left it (a renamed event matches later
rules by its new name). `drop_event` ends the event as the policy drop `filtered:<name>`.

Counts per rule: `<name>.matched`, the events in its scope (the rule looked at them);
`<name>.applied`, the events it changed (for `drop_event`: dropped). A rule whose paths
are absent, or whose value is there already, matched the event but did not apply.
"""
import fnmatch
import re
from collections import Counter
from typing import NamedTuple, Optional, Union

from transforms.rules import actions
from transforms.rules.actions import DROP, RuleError
from transforms.rules.conditions import ConditionError, compile_condition
from transforms.rules.paths import EventDoc

EVENT_TYPES = ("track", "identify", "page", "screen", "group", "alias")
SCOPE_KEYS = ("name", "types", "events", "sources", "when")
ACTIONS = {
    "rename_event": None,  # needs the rule's types: built in _action()
    "rename": actions.rename,
    "drop": actions.drop,
    "set": actions.set_values,
    "hash": actions.hash_values,
    "anonymize_ip": actions.anonymize_ip,
    "drop_event": actions.drop_event,
    "enrich": actions.enrichment,
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class Filtered(NamedTuple):
    """The event was dropped by the rule named here (policy `filtered:<rule>`)."""
    rule: str


class Rule(NamedTuple):
    name: str
    types: Optional[frozenset]
    events: Optional[re.Pattern]
    sources: Optional[re.Pattern]
    when: Optional[object]       # compiled condition: body -> bool
    act: object                  # (doc, counts) -> changed (bool) | DROP
    touches_identity: bool
    tally: object                # _RuleCounts: the action's counts under the rule's name
    matched: str                 # "<name>.matched": events in the rule's scope
    applied: str                 # "<name>.applied": events it changed (or dropped)

    def matches(self, body: dict, source: str) -> bool:
        if not in_scope(body, self.types, self.events):
            return False
        if self.sources is not None and self.sources.match(source or "") is None:
            return False
        return self.when is None or self.when(body)


def in_scope(body: dict, types: Optional[frozenset], names: Optional[re.Pattern]) -> bool:
    """An event against a scope's types and name globs (track: its event; page and screen: its
    name; other types have no name, so a name scope never takes them). None: any."""
    kind = body.get("type")
    if types is not None and kind not in types:
        return False
    if names is not None:
        name = body.get("event") if kind == "track" else body.get("name") if kind in ("page", "screen") else None
        if type(name) is not str or names.match(name) is None:
            return False
    return True


def compile_globs(patterns) -> re.Pattern:
    """Shell-style globs (case-sensitive) as one anchored pattern."""
    return re.compile("|".join(f"(?:{fnmatch.translate(g)})" for g in patterns))


def _globs(value, where: str) -> Optional[re.Pattern]:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(isinstance(g, str) and g for g in value):
        raise RuleError(where, "expected a non-empty list of glob patterns")
    return compile_globs(value)


def _types(value, where: str) -> Optional[frozenset]:
    if value is None:
        return None
    if not isinstance(value, list) or not value or any(t not in EVENT_TYPES for t in value):
        raise RuleError(where, f"expected a non-empty list of event types ({', '.join(EVENT_TYPES)})")
    return frozenset(value)


def _action(spec: dict, where: str):
    found = [key for key in ACTIONS if key in spec]
    unknown = sorted(set(spec) - set(ACTIONS) - set(SCOPE_KEYS))
    if unknown:
        raise RuleError(f"{where}.{unknown[0]}", f"unknown key (actions: {', '.join(ACTIONS)}; "
                                                 f"scope: {', '.join(SCOPE_KEYS[1:])})")
    if len(found) != 1:
        raise RuleError(where, f"a rule has exactly one action ({', '.join(ACTIONS)}); "
                               f"found {', '.join(found) or 'none'}")
    key = found[0]
    if key == "rename_event":
        return actions.rename_event(spec[key], f"{where}.{key}", spec.get("types"))
    return ACTIONS[key](spec[key], f"{where}.{key}")


def compile_rule(spec, where: str) -> Rule:
    if not isinstance(spec, dict):
        raise RuleError(where, "a rule is a mapping with a name, an optional scope and one action")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RuleError(f"{where}.name", "every rule needs a name of letters, digits, '_', '-' or '.' "
                                         "(it names the rule's counters and drops)")
    types = _types(spec.get("types"), f"{where}.types")  # before the action: rename_event reads it
    act = _action(spec, where)
    try:
        when = compile_condition(spec["when"], f"{where}.when") if "when" in spec else None
    except ConditionError as exc:
        raise RuleError(exc.where, exc.message) from None
    return Rule(name, types, _globs(spec.get("events"), f"{where}.events"),
                _globs(spec.get("sources"), f"{where}.sources"), when, act, actions.touches_identity(spec),
                _RuleCounts(name), name + ".matched", name + ".applied")


class TransformRules:
    """The ordered rules of one config. Compiled at launch (to check the config) and again in
    each worker's setup() (salts are read there, never pickled with the graph)."""

    def __init__(self, specs, where: str = "transforms"):
        if not isinstance(specs, (list, tuple)):
            raise RuleError(where, "expected a list of rules")
        self.rules = [compile_rule(spec, f"{where}[{i}]") for i, spec in enumerate(specs)]
        seen = set()
        for i, rule in enumerate(self.rules):
            if rule.name in seen:
                raise RuleError(f"{where}[{i}].name", f"rule name {rule.name!r} is used more than once")
            seen.add(rule.name)
        self.touches_identity = any(rule.touches_identity for rule in self.rules)

    def apply(self, body: dict, source: str, counts: Counter) -> Union[dict, Filtered]:
        """The transformed body (a new object where anything changed; `body` is never written),
        or Filtered. counts gets `<rule>.matched`, `<rule>.applied` and the actions' own counts."""
        if not self.rules:
            return body
        doc = EventDoc(body)
        for rule in self.rules:
            if not rule.matches(doc.root, source):
                continue
            counts[rule.matched] += 1
            tally = rule.tally
            if tally.counts is not counts:
                tally.counts = counts
            outcome = rule.act(doc, tally)
            if outcome:
                counts[rule.applied] += 1
                if outcome is DROP:
                    return Filtered(rule.name)
        return doc.root


class _RuleCounts:
    """An action's counts (`skipped`, ...) filed under its rule's name, in the Counter the
    current apply() call was given."""
    __slots__ = ("_prefix", "counts")

    def __init__(self, name: str):
        self._prefix, self.counts = name + ".", None

    def __getitem__(self, key):
        return self.counts[self._prefix + key]

    def __setitem__(self, key, value):
        self.counts[self._prefix + key] = value
