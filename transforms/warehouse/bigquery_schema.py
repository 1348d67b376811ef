"""Sluice's table layout in BigQuery terms: fields, partitioning, clustering and views.

Each column's description holds the JSON pointer its values come from (what DuckDB keeps
in `_sluice_columns`), so one tables.get gives the planner everything it needs. A column
someone added by hand (no pointer) is kept out of the planner's way under its own name.
"""
from google.cloud import bigquery

from transforms.warehouse import layout, planner, replays

FIELD_TYPES = {planner.BOOL: "BOOL", planner.INT64: "INT64", planner.FLOAT64: "FLOAT64",
               planner.STRING: "STRING", planner.TIMESTAMP: "TIMESTAMP", planner.JSON: "JSON"}
_PLANNER_TYPES = {"BOOL": planner.BOOL, "BOOLEAN": planner.BOOL, "INT64": planner.INT64,
                  "INTEGER": planner.INT64, "FLOAT64": planner.FLOAT64, "FLOAT": planner.FLOAT64,
                  "STRING": planner.STRING, "TIMESTAMP": planner.TIMESTAMP, "JSON": planner.JSON}
_FOREIGN = "?"  # source prefix of columns Sluice did not create
MAX_COLUMNS = 10_000  # BigQuery's own limit per table


def field(column: planner.Column) -> bigquery.SchemaField:
    if column.type == planner.STRINGS:  # `_deliveries.message_ids`: queried with `'X' IN UNNEST(message_ids)`
        return bigquery.SchemaField(column.name, "STRING", mode="REPEATED", description=column.source)
    return bigquery.SchemaField(column.name, FIELD_TYPES[column.type], mode="NULLABLE", description=column.source)


def table_schema(table: str, fields) -> planner.TableSchema:
    columns = []
    for f in fields:
        kind = _PLANNER_TYPES.get(f.field_type, planner.JSON)
        source = f.description if f.description and f.description[:1] in ("/", "$") else _FOREIGN + f.name
        columns.append(planner.Column(f.name, kind, source))
    schema = planner.TableSchema(table, columns)
    # BigQuery cannot retype a column in place: an INT64 column keeps its type, and a
    # fractional value meeting it is kept in _unmapped (still lossless).
    schema.no_widen.update(c.name for c in columns if c.type == planner.INT64)
    return schema


def clustering(table: str) -> list:
    if table == "users":
        return ["id"]
    if table == planner.DEAD_LETTER_TABLE:
        return ["error_stage", "error_type"]
    if table == planner.DELIVERIES_TABLE:
        return ["destination", "status"]
    if table == replays.REPLAYS_TABLE:
        return ["dead_letter_id"]
    if table == layout.EXPOSURES_TABLE:  # the analysis reads one experiment's units at a time
        return ["experiment_id", "unit_id"]
    names = {c.name for c in planner.fixed_columns(table)}
    return ["event", "user_id"] if "event" in names else ["user_id"]


def new_table(ref: str, table: str, columns) -> bigquery.Table:
    """A table as Sluice creates it: partitioned by day on its time, clustered by event / user."""
    created = bigquery.Table(ref, schema=[field(c) for c in columns])
    time_field = {planner.DEAD_LETTER_TABLE: "failed_at", planner.DELIVERIES_TABLE: "requested_at",
                  replays.REPLAYS_TABLE: "replayed_at"}.get(table, "timestamp")
    created.time_partitioning = bigquery.TimePartitioning(type_=bigquery.TimePartitioningType.DAY, field=time_field)
    created.clustering_fields = clustering(table)
    created.description = "Written by Sluice; each column's description is the JSON pointer its values come from."
    return created


def create_view_sql(view_ref: str, select: str) -> str:
    """Atomic create-or-replace (tables.patch of view_query is not honoured by the emulator)."""
    return (f"CREATE OR REPLACE VIEW `{view_ref}` OPTIONS (description = 'Maintained by Sluice') AS {select}")


def latest_view_sql(table_ref: str, key: str) -> str:
    """The newest row per key: rows written twice (a retried insert, a replay) show once."""
    return (f"SELECT * EXCEPT (_sluice_rank) FROM (SELECT *, ROW_NUMBER() OVER "
            f"(PARTITION BY {key} ORDER BY loaded_at DESC) AS _sluice_rank FROM `{table_ref}`) "
            f"WHERE _sluice_rank = 1")


def users_view_sql(table_ref: str, columns) -> str:
    """One row per user: each trait's newest non-null value (identifies append to `users`)."""
    # No LIMIT 1 inside ARRAY_AGG: the emulator's translation drops IGNORE NULLS with it.
    picks = [f"ARRAY_AGG(`{c.name}` IGNORE NULLS ORDER BY timestamp DESC)[SAFE_OFFSET(0)] AS `{c.name}`"
             for c in columns if c.name != "id"]
    return f"SELECT id, {', '.join(picks)} FROM `{table_ref}` GROUP BY id"
