"""Clients kept across bundles on Beam's local streaming runner.

That runner sets a DoFn up and tears it down around every bundle of about ten messages;
reopening a warehouse (DuckDB: connect and read the schema tables; BigQuery: clients and
dataset lookups) or a destination's client each time took most of a bundle's time. A DoFn
asked to keep its client parks it here at teardown and takes it back at the next setup;
close_all() closes everything parked when the run stops. Each parked object serves one DoFn
instance at a time. Elsewhere (batch runs, Dataflow) DoFns close their clients as usual.
"""
import threading

_PARKED: dict = {}
_LOCK = threading.Lock()


def take(key: str):
    """A parked object for `key`, or None."""
    with _LOCK:
        parked = _PARKED.get(key)
        return parked.pop() if parked else None


def park(key: str, thing) -> None:
    with _LOCK:
        _PARKED.setdefault(key, []).append(thing)


def close_all() -> None:
    """Close every parked object (each has close())."""
    with _LOCK:
        parked = [thing for things in _PARKED.values() for thing in things]
        _PARKED.clear()
    for thing in parked:
        thing.close()
