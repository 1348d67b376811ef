"""Paths into an event, and an event edited copy-on-write.

A path names a value by object keys: `properties.email` (dotted), or a JSON pointer
`/properties/first.name` for keys that contain dots. Paths address objects only; an
array is one value (rules never index into it).

Normalized bodies share their nested objects with the event as it arrived (and with
its dead-letter payload), so a rule must never write into them. `EventDoc` copies each
object on the path before its first write, once per event, and leaves the rest shared.
"""
from typing import Optional

MISSING = object()  # a path that leads nowhere; distinct from a JSON null


class PathError(ValueError):
    """A path the config gave cannot be parsed; the message says why."""


def parse(text) -> tuple:
    """'properties.email' or '/properties/email' -> ('properties', 'email')."""
    if not isinstance(text, str) or not text:
        raise PathError("a path is a non-empty string such as properties.email or /properties/email")
    if text.startswith("/"):
        parts = tuple(p.replace("~1", "/").replace("~0", "~") for p in text[1:].split("/"))
    else:
        parts = tuple(text.split("."))
    if any(p == "" for p in parts):
        raise PathError(f"{text!r} has an empty segment")
    return parts


def display(parts: tuple) -> str:
    return ".".join(parts) if not any("." in p or "/" in p for p in parts) else \
        "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def get(body: dict, parts: tuple, default=MISSING):
    node = body
    for part in parts:
        if type(node) is not dict:
            return default
        node = node.get(part, MISSING)
        if node is MISSING:
            return default
    return node


def identical(a, b) -> bool:
    """The same value of the same types all the way down: what writing `b` over `a` would
    not change (1 and 1.0 differ here, and True and 1, unlike in Python's ==)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(map(identical, a, b))
    return a == b


class EventDoc:
    """One event body under edit. `root` is the current body; the input is never written."""
    __slots__ = ("root", "_owned")

    def __init__(self, body: dict):
        self.root = body
        self._owned: Optional[set] = None  # ids of the objects this doc has copied (owns)

    def get(self, parts: tuple, default=MISSING):
        return get(self.root, parts, default)

    def _own(self, parent, key, child: dict) -> dict:
        """`child` (found at parent[key]) copied unless this doc already owns it."""
        if id(child) in self._owned:
            return child
        copied = dict(child)
        self._owned.add(id(copied))
        if parent is None:
            self.root = copied
        else:
            parent[key] = copied
        return copied

    def _parent(self, parts: tuple, create: bool):
        """The owned object that holds parts[-1], or None when the path cannot hold a value."""
        if self._owned is None:
            self._owned = set()
        node = self._own(None, None, self.root)
        for part in parts[:-1]:
            child = node.get(part, MISSING)
            if child is MISSING or child is None:
                if not create:
                    return None
                child = node[part] = {}
                self._owned.add(id(child))
            elif type(child) is not dict:
                return None
            else:
                child = self._own(node, part, child)
            node = child
        return node

    def set(self, parts: tuple, value) -> bool:
        """Write `value` at the path, creating objects on the way; False when a non-object
        value (a string, an array) is in the way, which is left as it was."""
        parent = self._parent(parts, create=True)
        if parent is None:
            return False
        parent[parts[-1]] = value
        return True

    def delete(self, parts: tuple) -> bool:
        """Remove the value at the path; False when there was none. An object the removal
        leaves empty is removed too (up to the top level), so dropping the last property does
        not leave an empty `properties` behind to become a JSON column."""
        if self.get(parts) is MISSING:
            return False
        del self._parent(parts, create=False)[parts[-1]]
        for depth in range(len(parts) - 1, 0, -1):
            parent = get(self.root, parts[:depth - 1]) if depth > 1 else self.root
            if parent[parts[depth - 1]]:
                break
            del parent[parts[depth - 1]]
        return True
