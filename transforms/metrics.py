"""Beam counters under one namespace; the run summary is read back from them.

Names are `<kind>` or `<kind>.<key>`:
  read, events, stored                       conservation totals
  dead_lettered.<error_type>                 one per dead letter, at the stage that made it
  dropped.<policy>                           policy drops (never errors)
  rows.<table>                               rows written per warehouse table
  type_conflicts.<table>, column_cap.<table> values kept in the table's `_unmapped` column
  stage.<stage>.<route>                      per-stage routing, for dashboards
"""
from apache_beam.metrics import Metrics

NAMESPACE = "sluice"

_counters = {}


def inc(name: str, value: int = 1) -> None:
    counter = _counters.get(name)
    if counter is None:  # Metrics.counter resolves the live container at inc(), so caching is safe
        counter = _counters[name] = Metrics.counter(NAMESPACE, name)
    counter.inc(value)


def dead_lettered(stage: str, error_type: str, value: int = 1) -> None:
    inc(f"dead_lettered.{error_type}", value)
    inc(f"stage.{stage}.dead_lettered", value)


def dropped(policy: str, value: int = 1) -> None:
    inc(f"dropped.{policy}", value)
