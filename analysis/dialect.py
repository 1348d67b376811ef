"""What differs between the warehouses' SQL, in one place: identifier quoting, table references,
query parameters, timestamp arithmetic and type names. The analysis's SQL (analysis/queries.py)
is written once against these; everything else in it is common to DuckDB and BigQuery (CASE,
COALESCE, STRPOS, STARTS_WITH, ENDS_WITH, IN, CTEs, LEFT JOIN, GROUP BY).
"""
from typing import NamedTuple, Optional

from transforms.warehouse import planner


class Dialect(NamedTuple):
    name: str                 # "duckdb" | "bigquery"
    quote_char: str
    param_prefix: str
    types: dict               # planner type -> the warehouse's name: the pipeline's own table (below)
    namespace: Optional[str] = None  # BigQuery: "project.dataset"; DuckDB: tables are plain names

    def quote(self, name: str) -> str:
        q = self.quote_char
        return q + name.replace(q, q + q) + q

    def table(self, name: str) -> str:
        """A table of the warehouse as a query names it."""
        if self.namespace is None:
            return self.quote(name)
        return f"`{self.namespace}.{name}`"  # project ids may hold '-', so the whole path is quoted

    def events(self, name: str) -> str:
        """An event table as the analysis reads it: each message once. DuckDB stores each once;
        BigQuery's table may hold a row twice (a streaming insert retried after its insertId was
        forgotten, a replay): the newest row per message_id is kept here by the SELECT of the
        `<table>_view` the pipeline keeps, not by that view, which may be missing (an event table
        of that very name, `Order Completed View`'s, keeps the pipeline from creating it)."""
        if self.namespace is None:
            return self.table(name)
        from transforms.warehouse import bigquery_schema  # google.cloud.bigquery: not for DuckDB
        return f"({bigquery_schema.latest_view_sql(f'{self.namespace}.{name}', planner.key_column(name))})"

    def param(self, name: str) -> str:
        return self.param_prefix + name

    def shift(self, expr: str, micros: int) -> str:
        """`expr` (a TIMESTAMP) moved by a whole number of microseconds (negative: earlier)."""
        if micros == 0:
            return expr
        if self.name == "duckdb":
            return f"({expr} + to_microseconds(CAST({micros} AS BIGINT)))"
        return f"TIMESTAMP_ADD({expr}, INTERVAL {micros} MICROSECOND)"

    def as_float(self, expr: str) -> str:
        return f"CAST({expr} AS {self.types[planner.FLOAT64]})"


def duckdb() -> Dialect:
    # The types the pipeline creates its tables with; imported here, not at the top, so that
    # neither warehouse's client library is loaded for the other's runs.
    from transforms.warehouse.duckdb_backend import SQL_TYPES
    return Dialect("duckdb", '"', "$", SQL_TYPES)


def bigquery(project: str, dataset: str) -> Dialect:
    from transforms.warehouse.bigquery_schema import FIELD_TYPES
    return Dialect("bigquery", "`", "@", FIELD_TYPES, f"{project}.{dataset}")


def micros(hours: float) -> int:
    """Hours as whole microseconds, the finest step both warehouses' timestamps have."""
    return round(hours * 3_600_000_000)
