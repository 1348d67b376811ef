"""The `experiment_results` table (DESIGN.md "Experiments"): appended to by every analysis run,
one row per experiment, metric and variation, in the warehouse the events are in. Created by the
first run; the same DDL and INSERT in both warehouses, only the type names differ (the dialect's).
"""
from analysis.warehouse import Typed
from transforms.warehouse import planner

RESULTS_TABLE = "experiment_results"
RESULT_COLUMNS = (
    ("analyzed_at", planner.TIMESTAMP), ("experiment_id", planner.STRING), ("metric", planner.STRING),
    ("variation_id", planner.STRING), ("is_control", planner.BOOL), ("units", planner.INT64),
    ("sum", planner.FLOAT64), ("sum_squares", planner.FLOAT64), ("mean", planner.FLOAT64),
    ("lift", planner.FLOAT64), ("ci_low", planner.FLOAT64), ("ci_high", planner.FLOAT64),
    ("p_value", planner.FLOAT64), ("chance_to_win", planner.FLOAT64), ("risk", planner.FLOAT64),
    ("srm_p_value", planner.FLOAT64), ("multiple_exposure_units", planner.INT64),
)
_ROWS_PER_INSERT = 200  # BigQuery takes at most 10,000 parameters a query: 17 a row


def write_results(warehouse, rows: list) -> int:
    """Append `rows` (dicts with RESULT_COLUMNS) to experiment_results; the rows written."""
    d = warehouse.dialect
    columns = ", ".join(f"{d.quote(name)} {d.types[kind]}" for name, kind in RESULT_COLUMNS)
    warehouse.query(f"CREATE TABLE IF NOT EXISTS {d.table(RESULTS_TABLE)} ({columns})")
    names = ", ".join(d.quote(name) for name, _ in RESULT_COLUMNS)
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        params, values = {}, []
        for i, row in enumerate(rows[start:start + _ROWS_PER_INSERT]):
            placeholders = []
            for j, (name, kind) in enumerate(RESULT_COLUMNS):
                params[f"r{i}_{j}"] = Typed(row[name], kind)
                placeholders.append(d.param(f"r{i}_{j}"))
            values.append("(" + ", ".join(placeholders) + ")")
        warehouse.query(f"INSERT INTO {d.table(RESULTS_TABLE)} ({names}) VALUES {', '.join(values)}", params)
    return len(rows)
