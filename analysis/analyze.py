"""The experiment analysis, warehouse-native: one query (analysis/queries.py) computes every
variation's sufficient statistics inside DuckDB or BigQuery; the rows that come back, one per
experiment and variation, are compared here (analysis/stats.py) and appended to the warehouse's
`experiment_results` (analysis/results.py).

Variation order and control, per experiment (deterministic, whatever order exposures arrived in):
- the order is `definitions.<id>.variations` when given, then any other variation seen, sorted;
  without `variations`, the variations seen sorted (numbers by value: "2" before "10", then text);
- control is `definitions.<id>.control`, else the first of that order (GrowthBook's variation 0,
  "control" before "treatment"); a configured control never seen still has its row (0 units);
- SRM weights are `definitions.<id>.weights`, in that order; equal weights by default.
"""
import datetime
import math
import re
from typing import NamedTuple, Optional

from analysis import conditions, queries
from analysis.errors import AnalysisError
from analysis.stats import SRM_THRESHOLD, Moments, compare, srm_p_value
from transforms.experiments.settings import Definition, ExperimentSettings
from transforms.rules import paths
from transforms.warehouse import layout, naming, planner

_EVENT_NAME = "/event"  # the source of event_text: the event's name as sent
_COMPARISON_FIELDS = ("lift", "ci_low", "ci_high", "p_value", "chance_to_win", "risk")


class Analysis(NamedTuple):
    analyzed_at: datetime.datetime
    experiments: list   # per experiment: {experiment_id, control, variations: [{variation_id, units}],
    #                                      srm_p_value, multiple_exposure_units}
    results: list       # experiment_results rows as dicts (columns: analysis/results.py)
    warnings: list      # {experiment_id (None: the whole run), kind, message}


def check_settings(settings: ExperimentSettings) -> None:
    """What the analysis cannot run, refused before any query (exit 2 naming the key path)."""
    for index, metric in enumerate(settings.metrics):
        conditions.check(metric.when, f"experiments.metrics[{index}].when")


def pointer(path: str) -> str:
    """A config path (properties.revenue, or /properties/a.b) as the JSON pointer the pipeline
    records as a column's source."""
    return layout.pointer(paths.parse(path))


def _warning(experiment_id, kind: str, message: str) -> dict:
    return {"experiment_id": experiment_id, "kind": kind, "message": message}


def _metric_sql(warehouse, metric, index: int, params: dict, warnings: list, tables: dict) -> queries.MetricSql:
    """The metric's table and columns looked up (by source pointer) and its SQL pieces made."""
    d = warehouse.dialect
    where = f"experiments.metrics[{index}]"
    table = naming.table_name(metric.event)
    plain = queries.MetricSql(f"m{index}", metric.type, None, None, "TRUE", metric.delay_hours, metric.window_hours)
    if table not in tables:  # metrics of one event look its table up once (BigQuery: a tables.get)
        tables[table] = warehouse.columns(table)
    columns = tables[table]
    if columns is None:
        warnings.append(_warning(None, "missing_table", f"metric {metric.name}: no table {table} yet (no "
                                                        f"{metric.event!r} event stored): its values are 0"))
        return plain

    def column_of(path: str, missing: str = "its condition takes it as missing in every event",
                  key: str = f"{where}.when"):
        found = columns.get(pointer(path))
        if found is None:
            _refuse_inside_json(columns, pointer(path), path, table, key)
            warnings.append(_warning(None, "missing_column", f"metric {metric.name}: {table} has no column for "
                                                             f"{path} yet: {missing}"))
            return None
        return f"e.{d.quote(found.name)}", found.type

    def bind(value) -> str:
        name = f"c{len(params)}"
        params[name] = value
        return d.param(name)

    # Event names that differ only in case or punctuation share a table ("Order-Completed",
    # "order completed"): the metric counts the rows of its own event, by the name each row kept.
    named = columns.get(_EVENT_NAME)
    if named is None:
        raise AnalysisError(f"{where}.event", f"{table} has no column for the event's name ({_EVENT_NAME}): "
                                              "not an event table the pipeline made")
    own_event = f"e.{d.quote(named.name)} = {bind(metric.event)}"
    value = None
    if metric.value is not None:
        found = column_of(metric.value, "its values are 0", f"{where}.value")
        if found is not None and found[1] not in planner.NUMERIC:
            raise AnalysisError(f"{where}.value", f"{metric.value} is a {found[1]} column of {table}, not a number")
        value = found[0] if found else None
    condition = conditions.to_sql(metric.when, column_of, bind, f"{where}.when")
    return plain._replace(table=table, value=value, condition=f"{own_event} AND {condition}")


def _refuse_inside_json(columns: dict, source: str, path: str, table: str, key: str) -> None:
    """A path under a column stored whole as JSON (an array, or an object nested past
    warehouse.flatten_depth) will never get a column of its own: an error, not a 0."""
    for column in columns.values():
        if column.type == planner.JSON and source.startswith(column.source + "/"):
            raise AnalysisError(key, f"{path} is inside {table}.{column.name}, a column stored whole as JSON (an "
                                     "array, or objects nested past warehouse.flatten_depth), which the analysis "
                                     "does not read")


def _natural(variation: str):
    return (0, int(variation), variation) if re.fullmatch(r"[0-9]{1,18}", variation) else (1, 0, variation)


def variation_order(definition: Definition, seen) -> tuple:
    """(variation ids in report order, control id or None): the rule in the module's doc."""
    seen = set(seen)
    configured = list(definition.variations or ())
    order = configured + sorted(seen - set(configured), key=_natural)
    if definition.control is not None and definition.control not in order:
        order.insert(0, definition.control)
    control = definition.control if definition.control is not None else (order[0] if order else None)
    return order, control


def _bounds(settings: ExperimentSettings, only: Optional[str], params: dict, d) -> tuple:
    """(Bounds of the experiments with start/end, placeholders of those taken whole or None: all)."""
    bounded, whole = [], []
    keys = [only] if only is not None else sorted(settings.definitions)
    for key in keys:
        definition = settings.definitions.get(key, Definition())
        unbounded = definition.start is None and definition.end is None
        if unbounded and only is None:
            continue  # taken whole with every experiment not bounded
        index = len(bounded) + len(whole)
        params[f"e{index}"] = key
        if unbounded:
            whole.append(d.param(f"e{index}"))
            continue
        start = end = None
        if definition.start is not None:
            params[f"s{index}"], start = definition.start, d.param(f"s{index}")
        if definition.end is not None:
            params[f"n{index}"], end = definition.end, d.param(f"n{index}")
        bounded.append(queries.Bounds(d.param(f"e{index}"), start, end))
    return bounded, (whole if only is not None else None)


def analyze(warehouse, settings: ExperimentSettings, experiment: Optional[str] = None,
            now: Optional[datetime.datetime] = None) -> Analysis:
    """Every experiment with exposures (or only `experiment`), every configured metric."""
    check_settings(settings)
    d = warehouse.dialect
    if not warehouse.has_table(layout.EXPOSURES_TABLE):
        raise AnalysisError("--warehouse", f"{warehouse.location} has no {layout.EXPOSURES_TABLE} table yet: run the "
                                           f"pipeline over events that hold {settings.exposure_event!r} exposures")
    warnings, params = [], {"unit": settings.unit}
    tables = {}
    metrics = [_metric_sql(warehouse, m, i, params, warnings, tables) for i, m in enumerate(settings.metrics)]
    bounded, whole = _bounds(settings, experiment, params, d)
    cuped_hours = settings.cuped_lookback_days * 24 if settings.cuped_enabled else None
    sql = queries.results_sql(d, d.param("unit"), settings.unit, metrics, bounded, whole, cuped_hours)
    rows = warehouse.query(sql, params)
    if experiment is not None and not rows:
        seen = [r["experiment_id"] for r in warehouse.query(queries.seen_experiments_sql(d))]
        if experiment not in seen:
            listed = ", ".join(seen[:20]) + (", ..." if len(seen) > 20 else "")
            raise AnalysisError("--experiment", f"{experiment!r} has no exposures in {layout.EXPOSURES_TABLE} "
                                                f"(experiments seen: {listed or 'none'})")
        warnings.append(_warning(experiment, "no_units", f"no exposure of a {settings.unit} unit within the "
                                                         "definition's start and end"))
    analyzed_at = (now or datetime.datetime.now(datetime.timezone.utc)).astimezone(datetime.timezone.utc)
    summaries, results = [], []
    by_experiment = {}
    for row in rows:
        by_experiment.setdefault(row["experiment_id"], []).append(row)
    for experiment_id in sorted(by_experiment):
        summary, experiment_rows = _experiment(settings, experiment_id, by_experiment[experiment_id], analyzed_at,
                                               warnings)
        summaries.append(summary)
        results += experiment_rows
    unique = list({(w["experiment_id"], w["kind"], w["message"]): w for w in warnings}.values())
    return Analysis(analyzed_at, summaries, results, unique)


def _experiment(settings, experiment_id: str, rows: list, analyzed_at, warnings: list) -> tuple:
    """(summary, result rows) of one experiment from its query rows."""
    definition = settings.definitions.get(experiment_id, Definition())
    multiple = sum(r["units"] for r in rows if r["variation_id"] is None)
    by_variation = {r["variation_id"]: r for r in rows if r["variation_id"] is not None}
    order, control = variation_order(definition, by_variation)
    unlisted = [v for v in order if definition.variations and v not in definition.variations and v != control]
    if unlisted:
        warnings.append(_warning(experiment_id, "unlisted_variation", f"variation{'s' if len(unlisted) > 1 else ''} "
                                                                      f"{', '.join(unlisted)} not in the definition's "
                                                                      "variations"))
    units = [int(by_variation[v]["units"]) if v in by_variation else 0 for v in order]
    srm = _srm(definition, experiment_id, order, units, warnings)
    if multiple:
        warnings.append(_warning(experiment_id, "multiple_exposure",
                                 f"{multiple} unit{'s' if multiple != 1 else ''} saw more than one variation: "
                                 "left out of the analysis"))
    if control is not None and control not in by_variation:
        warnings.append(_warning(experiment_id, "no_control", f"control {control!r} has no units: nothing to compare "
                                                              "against"))
    summary = {"experiment_id": experiment_id, "control": control, "srm_p_value": srm,
               "multiple_exposure_units": multiple,
               "variations": [{"variation_id": v, "units": n} for v, n in zip(order, units)]}
    results = []
    for index, metric in enumerate(settings.metrics):
        moments = {v: _moments(by_variation.get(v), f"m{index}", settings.cuped_enabled) for v in order}
        for variation in order:
            m = moments[variation]
            comparison = None
            if variation != control and control is not None:
                comparison = compare(moments[control], m, metric.type == "binomial", settings.cuped_enabled)
            results.append({
                "analyzed_at": analyzed_at, "experiment_id": experiment_id, "metric": metric.name,
                "variation_id": variation, "is_control": variation == control, "units": m.units,
                "sum": m.sum, "sum_squares": m.sum_squares, "mean": m.sum / m.units if m.units else None,
                **{f: _finite(getattr(comparison, f)) if comparison else None for f in _COMPARISON_FIELDS},
                "srm_p_value": srm, "multiple_exposure_units": multiple})
    return summary, results


def _moments(row: Optional[dict], alias: str, cuped: bool) -> Moments:
    if row is None:
        return Moments(0, 0.0, 0.0, *((0.0, 0.0, 0.0) if cuped else ()))
    return Moments(int(row["units"]), *(float(row[name] or 0) for name in queries.statistics(alias, cuped)))


def _srm(definition: Definition, experiment_id: str, order: list, units: list, warnings: list) -> Optional[float]:
    weights = definition.weights or tuple(1 / len(order) for _ in order)
    if definition.weights and not definition.variations and not all(v.isdigit() for v in order):
        # Weights pair with the variations in order; without `variations` that order is the ids
        # sorted, which is the SDK's only for index ids (GrowthBook's 0, 1, 2). Named ids sorted
        # by name would pair the weights wrongly and report a mismatch that is not there.
        warnings.append(_warning(experiment_id, "srm_skipped",
                                 f"weights given without definitions.{experiment_id}.variations and the variation "
                                 f"ids ({', '.join(order)}) are not indexes: list the variations in the weights' "
                                 "order to check the split"))
        return None
    if len(weights) != len(order):
        warnings.append(_warning(experiment_id, "srm_skipped",
                                 f"{len(order)} variations ({', '.join(order)}) but {len(weights)} weights: "
                                 "no sample-ratio check"))
        return None
    p_value = srm_p_value(units, weights)
    if p_value < SRM_THRESHOLD:
        split = "/".join(str(n) for n in units)
        expected = "/".join(f"{w:g}" for w in weights)
        warnings.append(_warning(experiment_id, "srm", f"sample ratio mismatch: units {split} against weights "
                                                       f"{expected} (p = {p_value:.2g}, below {SRM_THRESHOLD:g})"))
    return p_value


def _finite(value):
    return value if value is None or math.isfinite(value) else None
