"""Look at a DuckDB warehouse: table row counts, or the result of one SQL query.

    python -m pipeline.query duckdb:///demo-output/sluice.duckdb
    python -m pipeline.query duckdb:///demo-output/sluice.duckdb "SELECT * FROM tracks LIMIT 5"

A BigQuery warehouse (bigquery://PROJECT/DATASET) is queried with bq or the console instead.

While `python -m pipeline serve` holds the warehouse (no other process can open a DuckDB file
that one process has open for writing), the query is sent to that collector over loopback:
it wrote `<warehouse>.serve.json` (0600) naming its port and a token. It answers reads only
(SELECT, WITH, DESCRIBE, SHOW, read-only PRAGMAs), at most 10,000 rows, within 30 s.
"""
import sys

import duckdb

from collector import query as served_query
from pipeline.errors import UsageError
from pipeline.warehouse_url import parse_warehouse_url
from transforms.warehouse import duckdb_backend

_OVERVIEW = """
SELECT table_name AS "table", estimated_size AS "rows", column_count AS "columns"
FROM duckdb_tables() ORDER BY table_name
"""


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else 2
    try:
        kind = parse_warehouse_url(argv[0])
    except UsageError as exc:
        print(f"sluice.query: error: {exc}", file=sys.stderr)
        return 2
    if kind == "bigquery":  # BigQuery has its own clients, which know the user's credentials and billing
        project, dataset = argv[0][len("bigquery://"):].split("/", 1)
        print(f"sluice.query: error: {argv[0]}: pipeline.query reads DuckDB files (duckdb:///PATH); query "
              f"BigQuery with bq (bq query --nouse_legacy_sql 'SELECT ... FROM `{project}.{dataset}.tracks`') "
              "or its console", file=sys.stderr)
        return 2
    path = argv[0][len("duckdb:///"):]
    sql = argv[1] if len(argv) > 1 else _OVERVIEW
    served = served_query.find_server(path)
    if served is not None:
        try:
            return _ask(served, sql)
        except ConnectionError:
            pass  # the collector is stopping or gone: the file may be free by now
    try:
        conn = duckdb_backend.connect(path, read_only=True)
    except duckdb_backend.WarehouseUnusable as exc:  # another process has it, or not a DuckDB file
        print(f"sluice.query: error: {exc}", file=sys.stderr)
        return 2
    try:
        conn.sql(sql).show(max_width=200, max_rows=50)
    except duckdb.Error as exc:
        print(f"sluice.query: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _ask(served, sql: str) -> int:
    """The query answered by the collector serving the warehouse, printed as DuckDB prints."""
    try:
        table, truncated = served_query.ask(served, sql)
    except served_query.RemoteError as exc:
        print(f"sluice.query: error: {exc}", file=sys.stderr)
        return 2
    duckdb.connect().from_arrow(table).show(max_width=200, max_rows=50)
    if truncated:
        print(f"(the first {table.num_rows:,} rows: the serving collector answers at most that many)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
