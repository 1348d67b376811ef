"""The outgoing payload, built from paths of the event like Segment Actions' mappings:

    mapping:
      event_name: {"@path": "$.event"}
      email: {"@path": "$.context.traits.email"}
      amount: {"@path": "$.properties.total", "default": 0}
      source: sluice                     # a constant
      user: {id: {"@path": "$.userId"}}  # objects nest

`$` is the whole (transformed) event; `$.a.b` walks object keys. A path that leads nowhere
leaves its key out, or gives its `default`. Without a mapping the whole event is sent.
Compiled once into closures; nothing is evaluated as code.
"""
from typing import Callable

from transforms.rules.paths import MISSING, get

_SKIP = object()  # a key whose path led nowhere: left out of the payload


class MappingError(ValueError):
    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


def _parse_path(text, where: str) -> tuple:
    if not isinstance(text, str) or not (text == "$" or text.startswith("$.")):
        raise MappingError(where, 'a path is "$" (the whole event) or "$.key.key" such as "$.properties.total"')
    parts = tuple(text[2:].split(".")) if text != "$" else ()
    if any(p == "" for p in parts):
        raise MappingError(where, f"{text!r} has an empty segment")
    return parts


def _compile(spec, where: str) -> Callable:
    if isinstance(spec, dict) and "@path" in spec:
        unknown = sorted(set(spec) - {"@path", "default"})
        if unknown:
            raise MappingError(f"{where}.{unknown[0]}", "unknown key next to @path (only default)")
        parts, default = _parse_path(spec["@path"], f"{where}.@path"), spec.get("default", _SKIP)
        return lambda body: get(body, parts, default) if parts else body
    if isinstance(spec, dict):
        fields = [(key, _compile(value, f"{where}.{key}")) for key, value in spec.items()]

        def build(body):
            out = {}
            for key, field in fields:
                value = field(body)
                if value is not _SKIP and value is not MISSING:
                    out[key] = value
            return out
        return build
    if isinstance(spec, list):
        items = [_compile(value, f"{where}[{i}]") for i, value in enumerate(spec)]
        return lambda body: [v for v in (item(body) for item in items) if v is not _SKIP and v is not MISSING]
    return lambda body: spec  # a constant


def compile_mapping(spec, where: str = "mapping") -> Callable[[dict], dict]:
    """body -> payload. None (no mapping) sends the whole event."""
    if spec is None:
        return lambda body: body
    if not isinstance(spec, dict) or "@path" in spec:
        raise MappingError(where, "a mapping is an object of output keys")
    return _compile(spec, where)
