"""Strict, lossless JSON for event payloads.

orjson is the fast path, but it reads integers wider than 64 bits as floats (silently
losing digits) and cannot write them back. Payloads with a long run of digits take the
stdlib path, which keeps big integers exact; both paths reject NaN, Infinity, lone
surrogates and invalid UTF-8, so the two agree on what is valid JSON.
"""
import json

import orjson

# 19+ digits in a row may exceed the 64-bit range orjson keeps exact. Digits inside strings
# also match; those payloads merely take the slower, equally correct path. (translate+find
# is ~10x faster than the regex \d{19,} on typical events.)
_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0" * 10)
_LONG_RUN = b"0" * 19


class JSONError(ValueError):
    """The payload is not valid JSON; the message says why, for a person."""


class TooDeep(JSONError):
    """Valid JSON nested deeper than a parser (or the limit) allows."""


def _reject_constant(name):
    raise JSONError(f"{name} is not valid JSON")


def _strict_float(text):
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise JSONError(f"number {text[:40]} is out of range for a double")
    return value


def _not_utf8(data: bytes):
    """A JSONError naming the first byte that is not UTF-8, or None for UTF-8 text. orjson says
    "str is not valid UTF-8: surrogates not allowed" at line 1 column 1, whatever the byte and
    wherever it is, which reads like a lone-surrogate escape; asked only once parsing failed."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return JSONError(f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset {exc.start} ({exc.reason}); "
                         "JSON must be UTF-8")
    return None


def _loads_exact(data: bytes):
    # Decoded here, not by json.loads: given bytes, it guesses UTF-16 or UTF-32 from NUL bytes and
    # skips a UTF-8 BOM, where orjson (and RFC 8259) read UTF-8 only, so the two paths would disagree.
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(data) from exc
    try:
        value = json.loads(text, parse_constant=_reject_constant, parse_float=_strict_float)
    except RecursionError as exc:
        raise TooDeep("nesting too deep") from exc
    except (ValueError, TypeError) as exc:  # JSONDecodeError is a ValueError
        raise JSONError(str(exc)) from exc
    try:  # lone surrogates parse in the stdlib but cannot be written as UTF-8
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise JSONError("string contains a lone UTF-16 surrogate") from exc
    except RecursionError as exc:
        raise TooDeep("nesting too deep") from exc
    return value


def loads(data: bytes):
    """Parse one JSON document; raise JSONError for anything that is not strict JSON."""
    if data.translate(_DIGITS_TO_ZERO).find(_LONG_RUN) >= 0:
        return _loads_exact(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise _not_utf8(data) or (TooDeep if "depth limit" in str(exc) else JSONError)(str(exc)) from exc


def deeper_than(value, limit: int, data: bytes = None) -> bool:
    """Whether objects and arrays nest more than `limit` levels in `value` (the top level counts
    as one). `data`, the JSON text, answers at C speed when it holds no more than `limit`
    brackets in all, which is every ordinary event; otherwise the value is walked, without
    recursion (the point is to refuse what would overflow a recursive walk)."""
    if data is not None and data.count(b"{") + data.count(b"[") <= limit:
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if type(node) is dict else node if type(node) is list else ()
        stack.extend((child, depth + 1) for child in children if type(child) in (dict, list))
    return False


def dumps(value, sort_keys: bool = False) -> bytes:
    """Serialize to compact UTF-8 JSON; integers of any size stay exact."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else 0)
    except TypeError:  # "Integer exceeds 64-bit range"
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys).encode("utf-8")


def dumps_str(value, sort_keys: bool = False) -> str:
    return dumps(value, sort_keys).decode("utf-8")


def kind(value) -> str:
    """What a parsed JSON value is, for messages: "an array", "a string", "null"..."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "an object"
    return "a number"
