"""The analysis's SQL: one query per run that leaves the warehouse with one row per experiment and
variation, each metric's sufficient statistics as columns (units, sum, sum of squares, and with
CUPED the pre-exposure sums), plus one row per experiment counting its multiple-exposure units.

    exposed   one row per (experiment, unit) of the exposures considered: first exposure, and its
              variation, NULL when the unit saw more than one
    units     the exposed with a variation
    counts    units per experiment and variation (NULL: the units seen in more than one)
    events_N  one per event table the metrics read (metrics of one event share a scan): per
              (experiment, unit), each metric's value inside its window, and before exposure
              for CUPED; units without a matching event have no row here
    sums_N    events_N summed per experiment and variation: a unit without events adds 0 to
              every sum, so these are the sums over all the variation's units
    final     counts LEFT JOIN every sums_N (a few rows each)

Pure text: the tables and columns are looked up by the caller (analysis/analyze.py).
"""
from typing import NamedTuple, Optional

from analysis.dialect import Dialect, micros
from transforms.warehouse.layout import EXPOSURES_TABLE


class MetricSql(NamedTuple):
    """A metric's pieces of SQL, its table and columns already resolved."""
    alias: str                  # column prefix in the result row: m0, m1, ...
    kind: str                   # binomial | count | mean
    table: Optional[str]        # the event table's name; None: not there yet (the metric is 0)
    value: Optional[str]        # mean: the value's column (quoted), None when the column is not there yet
    condition: str              # SQL predicate over the event row (`e.`), TRUE without `when`
    delay_hours: float
    window_hours: float


class Bounds(NamedTuple):
    """Exposures considered for one experiment: placeholders of its id and of its start / end."""
    experiment: str
    start: Optional[str] = None
    end: Optional[str] = None


def statistics(alias: str, cuped: bool) -> tuple:
    """The result row's columns of one metric, in Moments' order."""
    names = ("sum", "sum_squares") + (("pre_sum", "pre_sum_squares", "sum_product") if cuped else ())
    return tuple(f"{alias}_{name}" for name in names)


def _exposed(d: Dialect, unit: str, bounded: list, others: Optional[list]) -> str:
    """`bounded`: Bounds of experiments with a filter of their own; `others`: placeholders of
    experiments taken whole, or None for every experiment not bounded."""
    clauses = []
    for b in bounded:
        clause = [f"experiment_id = {b.experiment}"]
        clause += [f"timestamp >= {b.start}"] if b.start else []
        clause += [f"timestamp < {b.end}"] if b.end else []
        clauses.append("(" + " AND ".join(clause) + ")")
    if others is None:
        if bounded:
            clauses.append(f"experiment_id NOT IN ({', '.join(b.experiment for b in bounded)})")
        else:
            clauses.append("TRUE")
    elif others:
        clauses.append(f"experiment_id IN ({', '.join(others)})")
    where = " OR ".join(clauses) or "FALSE"
    # MIN = MAX rather than COUNT(DISTINCT): DuckDB plans a distinct count as a second aggregate joined
    # back (1.1 of 1.4 s at a million units), where two plain aggregates ride on the one grouping.
    return (f"SELECT experiment_id, unit_id, MIN(timestamp) AS first_exposure, "
            "CASE WHEN MIN(variation_id) = MAX(variation_id) THEN MIN(variation_id) END AS variation_id "
            f"FROM {d.table(EXPOSURES_TABLE)} "
            f"WHERE unit_type = {unit} AND unit_id IS NOT NULL AND variation_id IS NOT NULL AND ({where}) "
            "GROUP BY experiment_id, unit_id")


def _value(d: Dialect, metric: MetricSql, lower_hours: float, upper_hours: float) -> str:
    """A metric's value for one unit over events in [first + lower, first + upper)."""
    inside = (f"e.timestamp >= {d.shift('u.first_exposure', micros(lower_hours))} AND "
              f"e.timestamp < {d.shift('u.first_exposure', micros(upper_hours))} AND {metric.condition}")
    if metric.kind == "binomial":
        return f"MAX(CASE WHEN {inside} THEN 1 ELSE 0 END)"
    if metric.kind == "count":
        return f"SUM(CASE WHEN {inside} THEN 1 ELSE 0 END)"
    counted = d.as_float(metric.value) if metric.value else "0"
    return f"SUM(CASE WHEN {inside} THEN {counted} ELSE 0 END)"


def _events(d: Dialect, table: str, unit_column: str, metrics: list, cuped_hours: Optional[float]) -> str:
    """Per (experiment, unit) with an event in any window: each metric's value (and pre-exposure
    value) from one event table."""
    columns = []
    for m in metrics:
        # GrowthBook's delay: the window opens `delay` after the first exposure and keeps its length.
        columns.append(f"{_value(d, m, m.delay_hours, m.delay_hours + m.window_hours)} AS {m.alias}_value")
        if cuped_hours is not None:
            columns.append(f"{_value(d, m, -cuped_hours, 0)} AS {m.alias}_pre")
    lower = -cuped_hours if cuped_hours is not None else min(m.delay_hours for m in metrics)
    upper = max(m.delay_hours + m.window_hours for m in metrics)
    return (f"SELECT u.experiment_id, u.variation_id, {', '.join(columns)} "
            f"FROM units AS u JOIN {d.events(table)} AS e ON e.{d.quote(unit_column)} = u.unit_id "
            f"WHERE e.timestamp >= {d.shift('u.first_exposure', micros(lower))} "
            f"AND e.timestamp < {d.shift('u.first_exposure', micros(upper))} "
            "GROUP BY u.experiment_id, u.unit_id, u.variation_id")


def _sums(d: Dialect, events: str, metrics: list, cuped: bool) -> str:
    """Per (experiment, variation): the sums over its units with events; the others add 0 to each."""
    columns = []
    for m in metrics:
        value, pre = (d.as_float(f"{m.alias}_{kind}") for kind in ("value", "pre"))
        sums = [f"SUM({value})", f"SUM({value} * {value})"]
        if cuped:
            sums += [f"SUM({pre})", f"SUM({pre} * {pre})", f"SUM({pre} * {value})"]
        columns += [f"{expr} AS {name}" for expr, name in zip(sums, statistics(m.alias, cuped))]
    return (f"SELECT experiment_id, variation_id, {', '.join(columns)} FROM {events} "
            "GROUP BY experiment_id, variation_id")


def results_sql(d: Dialect, unit: str, unit_column: str, metrics: list, bounded: list,
                others: Optional[list], cuped_hours: Optional[float]) -> str:
    """The one query (see the module's doc); `unit` is the placeholder of the unit type,
    cuped_hours the CUPED lookback (None: off)."""
    cuped = cuped_hours is not None
    ctes = [f"exposed AS ({_exposed(d, unit, bounded, others)})",
            "units AS (SELECT experiment_id, unit_id, first_exposure, variation_id FROM exposed "
            "WHERE variation_id IS NOT NULL)",
            "counts AS (SELECT experiment_id, variation_id, COUNT(*) AS units FROM exposed "
            "GROUP BY experiment_id, variation_id)"]
    by_table = {}
    for metric in metrics:
        if metric.table is not None:
            by_table.setdefault(metric.table, []).append(metric)
    sources, joins = {}, []
    for index, (table, grouped) in enumerate(by_table.items()):
        ctes.append(f"events_{index} AS ({_events(d, table, unit_column, grouped, cuped_hours)})")
        ctes.append(f"sums_{index} AS ({_sums(d, f'events_{index}', grouped, cuped)})")
        joins.append(f"LEFT JOIN sums_{index} ON sums_{index}.experiment_id = c.experiment_id "
                     f"AND sums_{index}.variation_id = c.variation_id")
        sources.update((m.alias, f"sums_{index}") for m in grouped)
    columns = ["c.experiment_id AS experiment_id", "c.variation_id AS variation_id", "c.units AS units"]
    for metric in metrics:
        source = sources.get(metric.alias)  # None: no table, every unit's value is 0
        columns += [f"COALESCE({source}.{name}, 0) AS {name}" if source else f"{d.as_float('0')} AS {name}"
                    for name in statistics(metric.alias, cuped)]
    return f"WITH {', '.join(ctes)} SELECT {', '.join(columns)} FROM counts AS c {' '.join(joins)}"


def seen_experiments_sql(d: Dialect) -> str:
    return f"SELECT DISTINCT experiment_id FROM {d.table(EXPOSURES_TABLE)} ORDER BY experiment_id"
