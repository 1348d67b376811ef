"""The analysis's SQL: one query per run that leaves the warehouse with one row per experiment and
variation, each metric's sufficient statistics as columns (units, sum, sum of squares, and with
CUPED the pre-exposure sums), plus one row per experiment counting its multiple-exposure units.

    exposed   one row per (experiment, unit) of the exposures considered: first exposure, its
              variation, how many distinct variations the unit saw
    units     the exposed seen in exactly one variation
    events_N  one per event table the metrics read (metrics of one event share a scan): per
              (experiment, unit), each metric's value inside its window, and before exposure
              for CUPED; units without a matching event have no row here
    final     exposed LEFT JOIN every events_N, grouped by experiment and variation (NULL for the
              units seen in more than one variation), missing values counted as 0

Pure text: the tables and columns are looked up by the caller (analysis/analyze.py).
"""
from typing import NamedTuple, Optional

from analysis.dialect import Dialect, micros

EXPOSURES_TABLE = "experiment_exposures"


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
    return (f"SELECT experiment_id, unit_id, MIN(timestamp) AS first_exposure, MIN(variation_id) AS variation_id, "
            f"COUNT(DISTINCT variation_id) AS variations FROM {d.table(EXPOSURES_TABLE)} "
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
    """Per (experiment, unit): each metric's value (and pre-exposure value) from one event table."""
    columns = []
    for m in metrics:
        columns.append(f"{_value(d, m, m.delay_hours, m.window_hours)} AS {m.alias}_value")
        if cuped_hours is not None:
            columns.append(f"{_value(d, m, -cuped_hours, 0)} AS {m.alias}_pre")
    lower = -cuped_hours if cuped_hours is not None else min(m.delay_hours for m in metrics)
    upper = max(m.window_hours for m in metrics)
    return (f"SELECT u.experiment_id, u.unit_id, {', '.join(columns)} "
            f"FROM units AS u JOIN {d.events(table)} AS e ON e.{d.quote(unit_column)} = u.unit_id "
            f"WHERE e.timestamp >= {d.shift('u.first_exposure', micros(lower))} "
            f"AND e.timestamp < {d.shift('u.first_exposure', micros(upper))} "
            "GROUP BY u.experiment_id, u.unit_id")


def _sums(d: Dialect, metric: MetricSql, source: Optional[str], cuped: bool) -> list:
    names = statistics(metric.alias, cuped)
    if source is None:  # no table: every unit's value is 0
        return [f"{d.as_float('0')} AS {name}" for name in names]
    value = d.as_float(f"COALESCE({source}.{metric.alias}_value, 0)")
    sums = [f"SUM({value})", f"SUM({value} * {value})"]
    if cuped:
        pre = d.as_float(f"COALESCE({source}.{metric.alias}_pre, 0)")
        sums += [f"SUM({pre})", f"SUM({pre} * {pre})", f"SUM({pre} * {value})"]
    return [f"{expr} AS {name}" for expr, name in zip(sums, names)]


def results_sql(d: Dialect, unit: str, unit_column: str, metrics: list, bounded: list,
                others: Optional[list], cuped_hours: Optional[float]) -> str:
    """The one query (see the module's doc); `unit` is the placeholder of the unit type,
    cuped_hours the CUPED lookback (None: off)."""
    ctes = [f"exposed AS ({_exposed(d, unit, bounded, others)})",
            "units AS (SELECT experiment_id, unit_id, first_exposure FROM exposed WHERE variations = 1)"]
    by_table = {}
    for metric in metrics:
        if metric.table is not None:
            by_table.setdefault(metric.table, []).append(metric)
    sources, joins = {}, []
    for index, (table, grouped) in enumerate(by_table.items()):
        name = f"events_{index}"
        ctes.append(f"{name} AS ({_events(d, table, unit_column, grouped, cuped_hours)})")
        joins.append(f"LEFT JOIN {name} ON {name}.experiment_id = x.experiment_id AND {name}.unit_id = x.unit_id")
        sources.update((m.alias, name) for m in grouped)
    columns = ["x.experiment_id AS experiment_id",
               "CASE WHEN x.variations = 1 THEN x.variation_id END AS variation_id", "COUNT(*) AS units"]
    for metric in metrics:
        columns += _sums(d, metric, sources.get(metric.alias), cuped_hours is not None)
    return (f"WITH {', '.join(ctes)} SELECT {', '.join(columns)} FROM exposed AS x {' '.join(joins)} "
            "GROUP BY 1, 2")


def seen_experiments_sql(d: Dialect) -> str:
    return f"SELECT DISTINCT experiment_id FROM {d.table(EXPOSURES_TABLE)} ORDER BY experiment_id"
