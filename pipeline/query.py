"""Look at a DuckDB warehouse: table row counts, or the result of one SQL query.

    python -m pipeline.query duckdb:///demo-output/sluice.duckdb
    python -m pipeline.query duckdb:///demo-output/sluice.duckdb "SELECT * FROM tracks LIMIT 5"
"""
import sys

import duckdb

from pipeline.errors import UsageError
from pipeline.options import parse_warehouse_url
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
        parse_warehouse_url(argv[0])
    except UsageError as exc:
        print(f"sluice.query: error: {exc}", file=sys.stderr)
        return 2
    path = argv[0][len("duckdb:///"):]
    try:
        conn = duckdb_backend.connect(path, read_only=True)
    except duckdb_backend.WarehouseInUse as exc:
        print(f"sluice.query: error: {exc}", file=sys.stderr)
        return 2
    except duckdb.Error as exc:
        print(f"sluice.query: error: cannot open {path}: {exc}", file=sys.stderr)
        return 2
    sql = argv[1] if len(argv) > 1 else _OVERVIEW
    try:
        conn.sql(sql).show(max_width=200, max_rows=50)
    except duckdb.Error as exc:
        print(f"sluice.query: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
