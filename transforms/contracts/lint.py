"""Launch-time checks of a contracts directory: every problem, with its file and pointer.

`check_directory` is what `python -m pipeline.contracts check DIR` prints and what the
pipeline runs before building its graph (it refuses to start on any error).
"""
import jsonschema
import jsonschema_rs
from jsonschema.exceptions import SchemaError

from transforms.contracts import columns
from transforms.contracts.loader import belongs, load_directory
from transforms.contracts.model import Problem, json_pointer
from transforms.warehouse import naming, planner

# Drafts a contract may name in `$schema`; a contract without one is read as 2020-12.
SUPPORTED_DRAFTS = {
    "http://json-schema.org/draft-07/schema": jsonschema.Draft7Validator,
    "https://json-schema.org/draft/2019-09/schema": jsonschema.Draft201909Validator,
    "https://json-schema.org/draft/2020-12/schema": jsonschema.Draft202012Validator,
}


def validator_class(schema: dict):
    """The reference validator class for a contract, or None for an unsupported `$schema`."""
    declared = schema.get("$schema")
    if declared is None:
        return jsonschema.Draft202012Validator
    if not isinstance(declared, str):
        return None
    return SUPPORTED_DRAFTS.get(declared.rstrip("#"))


def _meta_problems(contract) -> list:
    cls = validator_class(contract.schema)
    if cls is None:
        drafts = ", ".join(SUPPORTED_DRAFTS)
        return [Problem(contract.path, "/$schema", f"unsupported $schema {contract.schema.get('$schema')!r}; "
                                                   f"use one of {drafts}")]
    meta = cls(cls.META_SCHEMA)
    problems = [Problem(contract.path, json_pointer(e.absolute_path), f"not a valid schema: {e.message}")
                for e in sorted(meta.iter_errors(contract.schema), key=lambda e: list(map(str, e.absolute_path)))]
    if not problems:
        try:
            cls.check_schema(contract.schema)
        except SchemaError as exc:  # e.g. an invalid regex the meta-schema lets through
            problems.append(Problem(contract.path, json_pointer(exc.absolute_path), f"not a valid schema: {exc.message}"))
    if not problems:
        try:  # what workers will compile; refuses remote $refs (nothing is fetched)
            jsonschema_rs.validator_for(contract.schema, validate_formats=False, offline=True)
        except (jsonschema_rs.ValidationError, ValueError) as exc:
            problems.append(Problem(contract.path, "", f"cannot be compiled: {str(exc).splitlines()[0]}"))
    return problems


def _title_problems(contract) -> list:
    if contract.table is None or contract.event is None:
        return []
    table = naming.table_name(contract.event)
    if table != contract.table:
        return [Problem(contract.path, "/title", belongs(contract.event, table))]
    return []


def check_contracts(contracts, depth: int = planner.DEFAULT_FLATTEN_DEPTH) -> list:
    """Meta-schema, title and warehouse lint problems of every contract, invalid ones included:
    one run reports them all, rather than one kind per round as the previous kind is fixed."""
    problems = []
    for contract in contracts:
        problems += _meta_problems(contract) + _title_problems(contract)
    columns.declared_types(contracts, depth, problems)
    return problems + columns.column_collisions(contracts, depth)


def check_directory(directory: str, depth: int = planner.DEFAULT_FLATTEN_DEPTH) -> tuple:
    """(contracts, problems): problems sorted by file and pointer, errors and warnings alike.
    Misnamed files are checked under the name they should have; JSON files that are no contract
    against the meta-schema. A missing directory raises MissingDirectory."""
    found = load_directory(directory)
    problems = found.problems + check_contracts(list(found.contracts) + found.misnamed, depth)
    problems += [p for contract in found.unnamed for p in _meta_problems(contract)]
    return found.contracts, sorted(set(problems), key=lambda p: (p.path, p.pointer, p.message))


def errors(problems) -> list:
    return [p for p in problems if p.severity == "error"]
