"""Beam counters under one namespace; the run summary is read back from them.

Names are `<kind>` or `<kind>.<key>`:
  read, events, stored                       conservation totals
  dead_lettered.<error_type>                 one per dead letter, at the stage that made it
  dropped.<policy>                           policy drops (never errors)
  rows.<table>                               rows written per warehouse table (rows.users: the
                                             identifies applied to it, which DuckDB upserts)
  type_conflicts.<table>, column_cap.<table> values kept in the table's `_unmapped` column
  stage.<stage>.<route>                      per-stage routing, for dashboards
  published.<what>                           messages published to Pub/Sub (dead_letters)
  exposures_unusable.<missing>               exposures kept as plain events, no exposure row (unit,
                                             experiment, variation; experiments.invalid_exposures: store)
"""
import threading
from collections import Counter

from apache_beam.metrics import Metrics

NAMESPACE = "sluice"

_counters = {}
# Local streaming runs also count here: Beam 2.77's local streaming runner reports each
# counter as it stood after its first bundle (measured: 10 of 200 messages), so the run
# summary of a local streaming run is read from this in-process tally instead.
_in_process = None
_in_process_lock = threading.Lock()


def count_in_process() -> None:
    """Start (or restart) the in-process tally; every later inc() adds to it."""
    global _in_process
    _in_process = Counter()


def in_process_counts() -> dict:
    with _in_process_lock:
        return dict(_in_process or {})


def inc(name: str, value: int = 1) -> None:
    counter = _counters.get(name)
    if counter is None:  # Metrics.counter resolves the live container at inc(), so caching is safe
        counter = _counters[name] = Metrics.counter(NAMESPACE, name)
    counter.inc(value)
    if _in_process is not None:
        with _in_process_lock:
            _in_process[name] += value


def dead_lettered(stage: str, error_type: str, value: int = 1) -> None:
    inc(f"dead_lettered.{error_type}", value)
    inc(f"stage.{stage}.dead_lettered", value)


def dropped(policy: str, value: int = 1) -> None:
    inc(f"dropped.{policy}", value)


_distributions = {}


def distribution(name: str, value: int) -> None:
    """A Beam distribution (min, max, mean on Dataflow's monitoring); not in the summary."""
    dist = _distributions.get(name)
    if dist is None:
        dist = _distributions[name] = Metrics.distribution(NAMESPACE, name)
    dist.update(value)
