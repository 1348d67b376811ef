"""What a transformation rule does to one event, compiled from its config once per worker.

Each builder takes the action's config value and the key path naming it (for errors) and
returns `act(doc, counts) -> outcome`: True when it changed the event, False when it left
it as it was (nothing at its paths, or the value already there), DROP for `drop_event`.
The engine counts True and DROP as `<rule>.applied` (what the rule did) and every call
as `<rule>.matched` (what it looked at). Writes go through the EventDoc, so the event as
it arrived is never changed; a value that is already what the rule would write is not
written again (no copy). Values a rule cannot write (a non-object in the way) are left as
they were and counted as `skipped`.
"""
import copy
import hashlib
import ipaddress
import os
from typing import Callable

from apache_beam.io.filesystems import FileSystems

from transforms import jsonutil
from transforms.rules import enrich, paths
from transforms.rules.paths import MISSING

DROP = "drop"  # truthy: a drop is counted as applied
# Fields that drive routing, dedupe and time: Normalize owns them, rules may not write them.
PROTECTED = frozenset(("type", "messageId", "timestamp", "originalTimestamp", "sentAt", "receivedAt", "event"))
IDENTITY = frozenset(("userId", "anonymousId", "previousId", "groupId"))
DEFAULT_IP_PATHS = ("context.ip",)


class RuleError(ValueError):
    """A rule the config cannot have; `where` is its key path (`transforms[2].hash.salt_env`)."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


def writable_path(text, where: str) -> tuple:
    try:
        parts = paths.parse(text)
    except paths.PathError as exc:
        raise RuleError(where, str(exc)) from None
    if parts[0] in PROTECTED:
        hint = "; use rename_event" if parts[0] == "event" else ""
        raise RuleError(where, f"{parts[0]} is set by Sluice's normalization and cannot be changed by a rule{hint}")
    return parts


def _path_list(value, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise RuleError(where, "expected a non-empty list of paths")
    return [writable_path(p, f"{where}[{i}]") for i, p in enumerate(value)]


def rename_event(name, where: str, rule_types) -> Callable:
    if not isinstance(name, str) or not name.strip():
        raise RuleError(where, "the new event name must be a non-empty string")
    if rule_types and not set(rule_types) <= {"track", "page", "screen"}:
        raise RuleError(where, "only track, page and screen events have a name")

    def act(doc, counts):
        kind = doc.root.get("type")
        key = "event" if kind == "track" else "name" if kind in ("page", "screen") else None
        if key is None or doc.root.get(key) == name:
            return False
        return doc.set((key,), name)
    return act


def rename(mapping, where: str) -> Callable:
    if not isinstance(mapping, dict) or not mapping:
        raise RuleError(where, "expected a mapping of old path to new path")
    moves = [(writable_path(old, f"{where}.{old}"), writable_path(new, f"{where}.{old}"))
             for old, new in mapping.items()]

    def act(doc, counts):
        changed = False
        for old, new in moves:
            value = doc.get(old)
            if value is MISSING or old == new:
                continue
            # Delete first: either path may lie inside the other (properties -> properties.old).
            doc.delete(old)
            if doc.set(new, value):
                changed = True
            else:
                doc.set(old, value)  # put it back where it was: nothing is lost
                counts["skipped"] += 1
        return changed
    return act


def drop(value, where: str) -> Callable:
    targets = _path_list(value, where)

    def act(doc, counts):
        changed = False
        for parts in targets:
            changed = doc.delete(parts) or changed
        return changed
    return act


def set_values(mapping, where: str) -> Callable:
    if not isinstance(mapping, dict) or not mapping:
        raise RuleError(where, "expected a mapping of path to {value: ...} or {copy: path}")
    writes = []
    for target, source in mapping.items():
        at = f"{where}.{target}"
        parts = writable_path(target, at)
        if not isinstance(source, dict) or len(source) != 1 or not {"value", "copy"} & set(source):
            raise RuleError(at, "expected {value: CONSTANT} or {copy: PATH}")
        if "copy" in source:
            try:
                writes.append((parts, None, paths.parse(source["copy"])))
            except paths.PathError as exc:
                raise RuleError(f"{at}.copy", str(exc)) from None
        else:
            writes.append((parts, source["value"], None))

    def act(doc, counts):
        changed = False
        for parts, constant, origin in writes:
            value = constant if origin is None else doc.get(origin)
            if value is MISSING or paths.identical(doc.get(parts), value):
                continue
            if doc.set(parts, copy.deepcopy(value) if isinstance(value, (dict, list)) else value):
                changed = True
            else:
                counts["skipped"] += 1
        return changed
    return act


def read_salt(spec: dict, where: str) -> bytes:
    """The salt, from an environment variable or a file (local or gs://); never from the config.
    Read at launch to fail early, and again on each worker in setup()."""
    sources = [k for k in ("salt_env", "salt_file") if k in spec]
    if len(sources) != 1:
        raise RuleError(where, "give the salt as exactly one of salt_env (an environment variable) or "
                               "salt_file (a file); it is never read from the config itself")
    name = spec[sources[0]]
    if not isinstance(name, str) or not name:
        raise RuleError(f"{where}.{sources[0]}", "expected a non-empty string")
    if sources[0] == "salt_env":
        salt = os.environ.get(name, "").encode("utf-8")
        if not salt:
            raise RuleError(f"{where}.salt_env", f"environment variable {name} is not set or empty")
        return salt
    try:
        with FileSystems.open(name) as handle:
            salt = handle.read().rstrip(b"\r\n")
    except Exception as exc:  # noqa: BLE001 - any filesystem error is the user's to fix, named here
        raise RuleError(f"{where}.salt_file", f"cannot read {name}: {type(exc).__name__}") from None
    if not salt:
        raise RuleError(f"{where}.salt_file", f"{name} is empty")
    return salt


def hash_values(spec, where: str) -> Callable:
    if not isinstance(spec, dict):
        raise RuleError(where, "expected {paths: [...], salt_env: NAME} or {paths: [...], salt_file: PATH}")
    unknown = sorted(set(spec) - {"paths", "salt_env", "salt_file", "lowercase"})
    if unknown:
        raise RuleError(f"{where}.{unknown[0]}", "unknown key (paths, salt_env, salt_file, lowercase)")
    if not isinstance(spec.get("lowercase", False), bool):
        raise RuleError(f"{where}.lowercase", "expected true or false")
    targets = _path_list(spec.get("paths"), f"{where}.paths")
    salt = read_salt(spec, where)
    lowercase = spec.get("lowercase", False)

    def digest(value) -> str:
        if type(value) is str:
            data = (value.strip().lower() if lowercase else value).encode("utf-8", "surrogatepass")
        else:
            data = jsonutil.dumps(value, sort_keys=True)
        return hashlib.sha256(salt + data).hexdigest()

    def act(doc, counts):
        changed = False
        for parts in targets:
            value = doc.get(parts)
            if value is not MISSING and value is not None:
                changed = doc.set(parts, digest(value)) or changed
        return changed
    return act


def _ipv4_fast(address: str):
    """'203.0.113.77' -> '203.0.113.0' for a plain dotted quad; None for anything else (the
    ipaddress module decides those). ipaddress costs ~8 us a call, this ~1 us."""
    parts = address.split(".")
    if len(parts) != 4:
        return None
    for part in parts:
        if not (0 < len(part) <= 3 and part.isascii() and part.isdigit()) or (part[0] == "0" and part != "0") \
                or int(part) > 255:
            return None
    return f"{parts[0]}.{parts[1]}.{parts[2]}.0"


def anonymize(address) -> str:
    """IPv4: the last octet zeroed; IPv6: the last 80 bits zeroed (a /48 remains).
    Raises ValueError for anything that is not an IP address."""
    fast = _ipv4_fast(address) if type(address) is str else None
    if fast is not None:
        return fast
    ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        return "::ffff:" + anonymize(str(ip.ipv4_mapped))
    keep = 24 if ip.version == 4 else 48
    if ip.version == 6 and ip.sixtofour is not None:
        keep = 40  # 6to4 (2002::/16) carries the client's IPv4 in bits 16-48: keep 2002 + its /24
    network = ipaddress.ip_network(f"{ip}/{keep}", strict=False)
    return str(network.network_address)


def anonymize_ip(value, where: str) -> Callable:
    targets = _path_list(list(DEFAULT_IP_PATHS) if value is True else value, where)

    def act(doc, counts):
        changed = False
        for parts in targets:
            address = doc.get(parts)
            if address is MISSING or address is None:
                continue
            try:
                anonymized = anonymize(address)
            except (ValueError, AttributeError):  # not an address: keeping it could leak one
                changed = doc.delete(parts) or changed
                counts["invalid_ip_removed"] += 1
                continue
            if anonymized != address:  # an address anonymized already is left as it is
                changed = doc.set(parts, anonymized) or changed
        return changed
    return act


def drop_event(value, where: str) -> Callable:
    if value is not True:
        raise RuleError(where, "drop_event: true drops the events the rule matches")
    return lambda doc, counts: DROP


_CAMPAIGN_URL = ("context", "page", "url")
_USER_AGENT = ("context", "userAgent")


def enrichment(kind, where: str) -> Callable:
    if kind == "campaign":
        def act(doc, counts):
            if doc.get(("context", "campaign"), None) is None:  # absent or null
                campaign = enrich.campaign_from_url(doc.get(_CAMPAIGN_URL, None))
                if campaign is not None:
                    if doc.set(("context", "campaign"), campaign):
                        return True
                    counts["skipped"] += 1
            return False
        return act
    if kind == "user_agent":
        parser = []  # built on first use: loading the rules costs time a launch check does not need

        def act(doc, counts):
            if doc.get(("context", "userAgentData"), None) is None:
                if not parser:
                    parser.append(enrich.UserAgentParser())
                data = parser[0].user_agent_data(doc.get(_USER_AGENT, None))
                if data is not None:
                    if doc.set(("context", "userAgentData"), data):
                        return True
                    counts["skipped"] += 1
            return False
        return act
    raise RuleError(where, "expected campaign or user_agent")


def touches_identity(spec: dict) -> bool:
    """Whether a (valid) rule may write userId, anonymousId, previousId or groupId; then the
    event's identity is checked again after the rules."""
    written = list((spec.get("rename") or {}).items())
    written = [p for pair in written for p in pair] + list(spec.get("set") or {})
    written += list(spec.get("drop") or []) + list((spec.get("hash") or {}).get("paths") or [])
    if isinstance(spec.get("anonymize_ip"), list):
        written += spec["anonymize_ip"]
    return any(paths.parse(p)[0] in IDENTITY for p in written)
