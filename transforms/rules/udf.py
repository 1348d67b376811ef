"""The Python UDF hook (`--udf module:function`), as Google's Dataflow templates offer one.

The function takes one event (a dict, the pipeline's own copy after the declarative
rules) and returns the event to keep (a dict, changed or not) or None to drop it. It must
be importable where the pipeline runs: on Dataflow, ship it in the package (`--setup_file`)
or with `--extra_package`.
"""
import importlib
import pickle
from typing import Callable

from transforms.deadletter import last_line


class UdfError(ValueError):
    """The --udf option names nothing callable; the message says why."""


def load(spec: str) -> Callable:
    """'package.module:function' -> the function. Raises UdfError."""
    module_name, sep, attribute = (spec or "").partition(":")
    if not sep or not module_name or not attribute:
        raise UdfError(f"{spec!r}: expected module:function, e.g. my_package.udfs:clean_event")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - an import can fail any way; the user's to fix, named here
        raise UdfError(f"{spec!r}: cannot import {module_name}: {last_line(exc)}") from exc
    function = module
    for part in attribute.split("."):
        function = getattr(function, part, None)
    if not callable(function):
        raise UdfError(f"{spec!r}: {module_name} has no function {attribute}")
    return function


def private_copy(body: dict) -> dict:
    """A deep copy the UDF may change at will: the body shares objects with the event as it
    arrived (and its dead-letter payload). pickle is the fast deep copy of plain JSON values."""
    return pickle.loads(pickle.dumps(body, pickle.HIGHEST_PROTOCOL))
