"""A metric's `when` (the rules' condition language, transforms/rules/conditions.py) as an SQL
predicate over the metric's event table, with the rules' meaning kept:

- a path that leads nowhere equals nothing: `ne` and `not_in` are true for it, comparisons false;
  a NULL column is such a path, and every leaf is made two-valued (never NULL), so `not` and `any`
  behave as in the rules;
- equality is JSON's: a literal of another type than the column's is never equal (true is not 1,
  "5" is not 5); lt/lte/gt/gte compare numbers with numbers and strings with strings only;
- `contains` is a substring test (arrays are JSON columns here, which the analysis does not read).

`matches` and `glob` have no form both warehouses share (Python's regular expressions are not
RE2's or DuckDB's), nor does `contains` on a list: `check` refuses them before any query runs.

JSON `null` is where the warehouse and the rules part: a column holds NULL both for an event
without the key and for one that sent `"coupon": null`, so the analysis cannot tell them apart.
For such an event the rules say `exists` true, `missing` false and `eq null` true; here `exists`
is false, `missing` true (a stored null reads as a path leading nowhere). `eq`, `ne`, `in` and
`not_in` with a `null` value would have no meaning both share: `check` refuses them.
A column that does not exist yet is a path that leads nowhere: the leaf becomes the constant the
rules would give for it, computed by the rules' own compiled condition.
"""
from typing import Callable, Optional

from analysis.errors import AnalysisError
from transforms.rules.conditions import compile_condition
from transforms.warehouse import planner

TRANSLATED = ("exists", "missing", "eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte",
              "contains", "starts_with", "ends_with")
_COMPARISONS = {"lt": "<", "lte": "<=", "gt": ">", "gte": ">="}


def _children(spec: dict, where: str):
    """(child spec, its key path) of a combinator, or () for a leaf."""
    if "all" in spec or "any" in spec:
        kind = "all" if "all" in spec else "any"
        return [(child, f"{where}.{kind}[{i}]") for i, child in enumerate(spec[kind])]
    if "not" in spec:
        return [(spec["not"], f"{where}.not")]
    return ()


def check(spec: Optional[dict], where: str) -> None:
    """Refuse what has no SQL form, naming its key path. `spec` already compiled (settings.parse)."""
    if spec is None:
        return
    children = _children(spec, where)
    for child, child_where in children:
        check(child, child_where)
    if children:
        return
    op = spec["op"]
    if op not in TRANSLATED:
        raise AnalysisError(f"{where}.op", f"{op} is not translated to SQL for the analysis (it can use "
                                           f"{', '.join(TRANSLATED)})")
    value = spec.get("value")
    if op in ("eq", "ne") and value is None:
        raise AnalysisError(f"{where}.value", f"{op} null: the warehouse stores a JSON null as no value at all; "
                                              f"test the path with {'missing' if op == 'eq' else 'exists'} instead")
    if op in ("in", "not_in") and None in value:
        raise AnalysisError(f"{where}.value[{value.index(None)}]", "null: the warehouse stores a JSON null as no "
                                                                   "value at all; test the path with missing / exists")
    if op == "contains" and not isinstance(spec.get("value"), str):
        raise AnalysisError(f"{where}.value", "contains in a metric tests a substring: the value must be a string "
                                              "(arrays are not read by the analysis)")


def leaf_paths(spec: Optional[dict]) -> list:
    """The path texts the condition reads."""
    if spec is None:
        return []
    children = _children(spec, "")
    if children:
        return [path for child, _ in children for path in leaf_paths(child)]
    return [spec["path"]]


def _fits(value, column_type: str) -> bool:
    """A literal the rules could find equal to a value of this column (JSON types, not SQL's)."""
    if column_type == planner.BOOL:
        return type(value) is bool
    if column_type in planner.NUMERIC:
        return type(value) in (int, float)
    return column_type == planner.STRING and type(value) is str


def to_sql(spec: Optional[dict], column_of: Callable, bind: Callable, where: str) -> str:
    """The predicate; column_of(path text) -> (SQL expression, planner type) or None (no column);
    bind(value) -> the SQL placeholder of a new parameter with that value."""
    if spec is None:
        return "TRUE"
    children = _children(spec, where)
    if children:
        parts = [to_sql(child, column_of, bind, child_where) for child, child_where in children]
        if "not" in spec:
            return f"(NOT {parts[0]})"
        return "(" + (" AND " if "all" in spec else " OR ").join(parts) + ")"
    found = column_of(spec["path"])
    if found is None:  # no such column yet: what the rules give for a path leading nowhere
        return "TRUE" if compile_condition(spec, where)({}) else "FALSE"
    column, column_type = found
    if column_type not in (planner.BOOL, planner.STRING) + planner.NUMERIC:
        raise AnalysisError(f"{where}.path", f"{spec['path']} is a {column_type} column; a metric's condition "
                                             "tests booleans, numbers and strings")
    return _leaf(spec["op"], spec.get("value"), column, column_type, bind)


def _leaf(op: str, value, column: str, column_type: str, bind: Callable) -> str:
    if op == "exists":
        return f"({column} IS NOT NULL)"
    if op == "missing":
        return f"({column} IS NULL)"
    if op in ("eq", "ne"):
        test = f"COALESCE({column} = {bind(value)}, FALSE)" if _fits(value, column_type) else "FALSE"
        return test if op == "eq" else f"(NOT {test})"
    if op in ("in", "not_in"):
        fitting = [v for v in value if _fits(v, column_type)]
        test = f"COALESCE({column} IN ({', '.join(bind(v) for v in fitting)}), FALSE)" if fitting else "FALSE"
        return test if op == "in" else f"(NOT {test})"
    if op in _COMPARISONS:
        ordered = (column_type in planner.NUMERIC and type(value) in (int, float)) or \
                  (column_type == planner.STRING and type(value) is str)
        return f"COALESCE({column} {_COMPARISONS[op]} {bind(value)}, FALSE)" if ordered else "FALSE"
    if column_type != planner.STRING:  # contains, starts_with, ends_with: strings only
        return "FALSE"
    if op == "contains":
        return f"COALESCE(STRPOS({column}, {bind(value)}) > 0, FALSE)"
    function = "STARTS_WITH" if op == "starts_with" else "ENDS_WITH"
    return f"COALESCE({function}({column}, {bind(value)}), FALSE)"
