"""Declarative conditions over an event, compiled once into plain closures (never eval).

    {path: properties.plan, op: eq, value: pro}
    {all: [cond, ...]}   {any: [cond, ...]}   {not: cond}

Operators: exists, missing; eq, ne (JSON equality: true is not 1); in, not_in (value is a
list); lt, lte, gt, gte (both numbers or both strings, else false); contains (substring of
a string, or an element of an array); starts_with, ends_with (strings); matches (a Python
regular expression, searched); glob (shell-style, case-sensitive). A path that leads
nowhere equals nothing, so `ne` and `not_in` are true for it and comparisons are false.
"""
import fnmatch
import re
from typing import Callable

from transforms.rules import paths
from transforms.rules.paths import MISSING

OPERATORS = ("exists", "missing", "eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte",
             "contains", "starts_with", "ends_with", "matches", "glob")
_COMBINATORS = ("all", "any", "not")


class ConditionError(ValueError):
    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where, self.message = where, message


def json_equal(a, b) -> bool:
    """Equality as JSON means it: numbers by value, booleans never equal to numbers."""
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(json_equal, a, b))
    return a == b


def _is_number(value) -> bool:
    return type(value) in (int, float)


def _ordered(value, bound) -> bool:
    return (_is_number(value) and _is_number(bound)) or (type(value) is str and type(bound) is str)


def _predicate(op: str, value, where: str) -> Callable:
    """A test of one found value (MISSING when the path leads nowhere)."""
    if op == "exists":
        return lambda v: v is not MISSING
    if op == "missing":
        return lambda v: v is MISSING
    if op in ("eq", "ne"):
        negate = op == "ne"
        return lambda v: (v is not MISSING and json_equal(v, value)) != negate
    if op in ("in", "not_in"):
        if not isinstance(value, list):
            raise ConditionError(f"{where}.value", f"{op} needs a list of values")
        negate = op == "not_in"
        return lambda v: (v is not MISSING and any(json_equal(v, x) for x in value)) != negate
    if op in ("lt", "lte", "gt", "gte"):
        if not (_is_number(value) or isinstance(value, str)):
            raise ConditionError(f"{where}.value", f"{op} compares with a number or a string")
        compare = {"lt": lambda a, b: a < b, "lte": lambda a, b: a <= b,
                   "gt": lambda a, b: a > b, "gte": lambda a, b: a >= b}[op]
        return lambda v: _ordered(v, value) and compare(v, value)
    if op == "contains":
        return lambda v: ((type(v) is str and isinstance(value, str) and value in v)
                          or (type(v) is list and any(json_equal(x, value) for x in v)))
    if op in ("starts_with", "ends_with", "matches", "glob"):
        if not isinstance(value, str):
            raise ConditionError(f"{where}.value", f"{op} needs a string")
        if op == "starts_with":
            return lambda v: type(v) is str and v.startswith(value)
        if op == "ends_with":
            return lambda v: type(v) is str and v.endswith(value)
        try:
            pattern = re.compile(value if op == "matches" else fnmatch.translate(value))
        except re.error as exc:
            raise ConditionError(f"{where}.value", f"not a regular expression: {exc}") from None
        return _remembered(pattern.search if op == "matches" else pattern.match)
    raise ConditionError(f"{where}.op", f"unknown operator {op!r} (one of {', '.join(OPERATORS)})")


def _remembered(search, size: int = 4096) -> Callable:
    """A pattern test that remembers its answers: the strings rules test (user agents, event
    names, URLs) repeat a lot, and a case-insensitive alternation costs ~4 us a search.
    Bounded: the memory is forgotten whole when full."""
    answers = {}

    def test(value) -> bool:
        if type(value) is not str:
            return False
        answer = answers.get(value)
        if answer is None:
            if len(answers) >= size:
                answers.clear()
            answer = answers[value] = search(value) is not None
        return answer
    return test


def compile_condition(spec, where: str) -> Callable[[dict], bool]:
    """spec (from the config) -> a function of the event body. `where` names the spec's key
    path (`transforms[2].when`) in every error."""
    if not isinstance(spec, dict):
        raise ConditionError(where, "a condition is an object: {path, op, value}, {all: [...]}, "
                                    "{any: [...]} or {not: {...}}")
    forms = [k for k in _COMBINATORS if k in spec]
    if forms:
        extra = sorted(set(spec) - {forms[0]})
        if len(forms) > 1 or extra:
            raise ConditionError(where, f"{forms[0]} stands alone in its object; found also {', '.join(extra)}")
        return _combinator(forms[0], spec[forms[0]], f"{where}.{forms[0]}")
    unknown = sorted(set(spec) - {"path", "op", "value"})
    if unknown:
        raise ConditionError(f"{where}.{unknown[0]}", "unknown key")
    if "path" not in spec or "op" not in spec:
        raise ConditionError(where, "a comparison needs path and op")
    try:
        parts = paths.parse(spec["path"])
    except paths.PathError as exc:
        raise ConditionError(f"{where}.path", str(exc)) from None
    op = spec["op"]
    if op not in OPERATORS:
        raise ConditionError(f"{where}.op", f"unknown operator {op!r} (one of {', '.join(OPERATORS)})")
    if op in ("exists", "missing"):
        if "value" in spec:
            raise ConditionError(f"{where}.value", f"{op} takes no value")
    elif "value" not in spec:
        raise ConditionError(where, f"{op} needs a value")
    test = _predicate(op, spec.get("value"), where)
    if len(parts) == 1:
        key = parts[0]
        return lambda body: test(body.get(key, MISSING))
    return lambda body: test(paths.get(body, parts))


def _combinator(kind: str, operand, where: str) -> Callable[[dict], bool]:
    if kind == "not":
        inner = compile_condition(operand, where)
        return lambda body: not inner(body)
    if not isinstance(operand, list) or not operand:
        raise ConditionError(where, f"{kind} needs a non-empty list of conditions")
    parts = tuple(compile_condition(c, f"{where}[{i}]") for i, c in enumerate(operand))
    if kind == "all":
        return lambda body: all(p(body) for p in parts)
    return lambda body: any(p(body) for p in parts)
