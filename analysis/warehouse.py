"""The warehouse as the analysis sees it: run a query with parameters, say whether a table exists
and which column holds a value of the events (by the JSON pointer the pipeline recorded for it).

DuckDB keeps each column's source in `_sluice_columns` and BigQuery in the column's
description (transforms/warehouse/duckdb_backend.py, bigquery_schema.py): a column is found by
where its values came from, never by recomputing its name, so a name the pipeline had to suffix
(two sources proposing it) is still found.
"""
import contextlib
import datetime
from pathlib import Path
from typing import NamedTuple, Optional

from analysis import dialect
from analysis.errors import AnalysisError
from transforms.warehouse import planner, split_url

_PARAM_TYPES = {bool: planner.BOOL, int: planner.INT64, float: planner.FLOAT64, str: planner.STRING,
                datetime.datetime: planner.TIMESTAMP}


class Typed(NamedTuple):
    """A parameter whose type its value cannot tell (a NULL), for BigQuery."""
    value: object
    type: str


class DuckDBWarehouse:
    def __init__(self, path: str):
        from transforms.warehouse import duckdb_backend
        if not Path(path).is_file():
            raise AnalysisError("--warehouse", f"{path}: no such DuckDB file (run the pipeline into it first)")
        try:
            self._conn = duckdb_backend.connect(path)
        except duckdb_backend.WarehouseUnusable as exc:  # another process has it, or not a DuckDB file
            raise AnalysisError("--warehouse", str(exc)) from None
        # DuckDB draws a progress bar on stderr past ~2 s of query: noise in the command's output.
        self._conn.execute("SET enable_progress_bar = false")
        self.dialect = dialect.duckdb()
        self.location = f"duckdb:///{path}"

    def query(self, sql: str, params: Optional[dict] = None) -> list:
        cursor = self._conn.execute(sql, {k: _plain(v) for k, v in (params or {}).items()})
        if cursor.description is None:
            return []
        names = [d[0] for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]

    def has_table(self, name: str) -> bool:
        return bool(self.query("SELECT count(*) AS n FROM duckdb_tables() WHERE table_name = $name",
                               {"name": name})[0]["n"])

    def columns(self, table: str) -> Optional[dict]:
        """{source pointer: Column} of an event table the pipeline made, or None when it does not exist."""
        if not self.has_table(table):
            return None
        from transforms.warehouse.duckdb_backend import COLUMNS_TABLE
        rows = self.query(f"SELECT column_name, column_type, source FROM {COLUMNS_TABLE} WHERE table_name = $t",
                          {"t": table})
        return {r["source"]: planner.Column(r["column_name"], r["column_type"], r["source"]) for r in rows}

    def close(self) -> None:
        self._conn.close()


@contextlib.contextmanager
def _google_errors(location: str):
    """Google's refusals (no credentials, expired ones, a dataset not found, no permission) as the
    one line of the option they concern: something the person running the command must fix."""
    from google.api_core.exceptions import GoogleAPIError
    from google.auth.exceptions import GoogleAuthError
    try:
        yield
    except GoogleAuthError as exc:
        raise AnalysisError("--warehouse", f"{location}: no usable Google credentials ({_first_line(exc)}); "
                                           "run `gcloud auth application-default login` or set "
                                           "GOOGLE_APPLICATION_CREDENTIALS") from None
    except GoogleAPIError as exc:
        raise AnalysisError("--warehouse", f"{location}: BigQuery refused: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return lines[0][:300]


class BigQueryWarehouse:
    def __init__(self, project: str, dataset: str, endpoint: Optional[str] = None, location: str = "US"):
        from transforms.warehouse.bigquery_backend import bigquery_client
        self.project, self.dataset = project, dataset
        self.dialect = dialect.bigquery(project, dataset)
        self.location = f"bigquery://{project}/{dataset}"
        with _google_errors(self.location):  # the credentials are looked up here
            self._client = bigquery_client(project, location, endpoint)

    def query(self, sql: str, params: Optional[dict] = None) -> list:
        from google.cloud import bigquery
        config = bigquery.QueryJobConfig(query_parameters=[_bigquery_param(bigquery, name, value)
                                                           for name, value in (params or {}).items()])
        with _google_errors(self.location):
            return [dict(row.items()) for row in self._client.query(sql, job_config=config).result()]

    def _table(self, name: str):
        from google.api_core import exceptions
        with _google_errors(self.location):
            try:
                return self._client.get_table(f"{self.project}.{self.dataset}.{name}")
            except exceptions.NotFound:
                return None

    def has_table(self, name: str) -> bool:
        return self._table(name) is not None

    def columns(self, table: str) -> Optional[dict]:
        from transforms.warehouse import bigquery_schema
        found = self._table(table)
        if found is None:
            return None
        return dict(bigquery_schema.table_schema(table, found.schema).by_source)

    def close(self) -> None:
        self._client.close()


def _plain(value):
    return value.value if isinstance(value, Typed) else value


def _bigquery_param(bigquery, name: str, value):
    kind = value.type if isinstance(value, Typed) else _PARAM_TYPES[type(value)]
    from transforms.warehouse.bigquery_schema import FIELD_TYPES
    return bigquery.ScalarQueryParameter(name, FIELD_TYPES[kind], _plain(value))


def open_warehouse(url: str, bigquery_endpoint: Optional[str] = None):
    """duckdb:///PATH or bigquery://PROJECT/DATASET (already checked) -> an open warehouse."""
    kind, *place = split_url(url)
    return DuckDBWarehouse(*place) if kind == "duckdb" else BigQueryWarehouse(*place, bigquery_endpoint)
