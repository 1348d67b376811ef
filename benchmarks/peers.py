"""The peers benchmarks/throughput.py runs Sluice beside, each over the same newline-delimited JSON file.

    .bench/dlt/bin/python benchmarks/peers.py dlt-segment EVENTS.jsonl OUT.duckdb RESULT.json
    .bench/dlt/bin/python benchmarks/peers.py dlt-rows EVENTS.jsonl OUT.duckdb RESULT.json
    .venv/bin/python benchmarks/peers.py reference EVENTS.jsonl OUT.duckdb RESULT.json

dlt-segment: dlt (pinned in benchmarks/dlt-requirements.txt, in its own environment: `make bench`
  installs it in .bench/dlt) loading the events into Segment's layout, routed by dlt's table names:
  each track into `tracks` (without its properties) and into its event's table (with them),
  identifies into `identifies` and, merged on `id`, into `users`, pages, screens, groups and aliases
  into their tables. Nested objects are flattened and lists become child tables, as dlt does.
dlt-rows: dlt loading one row per event into one table, `events`.
  Both: parquet loader files, one normalize worker, a fresh DuckDB file and pipelines directory.
reference: DuckDB alone: `read_json` of the file, then SQL that flattens each type's events into
  its tables (columns from `json_group_structure`, as DuckDB infers them), Segment's layout again.

Each writes RESULT.json: {"seconds": time from the first read to the last commit, without the
interpreter's start-up and imports}. The caller reads the tables' rows back from the DuckDB file
and checks them against the input (table_rows, expected_rows, stored_rows), and measures peak memory.
"""
import json
import os
import re
import sys
import tempfile
import time

FIXED = {"track": "tracks", "identify": "identifies", "page": "pages", "screen": "screens", "group": "groups",
         "alias": "aliases"}


def read_events(path: str):
    """The file's events, batch envelopes split (the envelope's other fields are under each event's own)."""
    import orjson
    with open(path, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            message = orjson.loads(line)
            batch = message.pop("batch", None)
            if batch is None:
                yield message
            else:
                for event in batch:
                    yield {**message, **event} if message else event


def segment_rows(events):
    """(table, row) pairs of Segment's layout; a track's table is "track:" and its event's name."""
    for event in events:
        kind = event.get("type")
        table = FIXED[kind]
        if kind == "track":
            properties = event.pop("properties", None) or {}
            yield table, event
            yield "track:" + event["event"], {**event, **properties}
        elif kind in ("identify", "group"):
            traits = event.pop("traits", None) or {}
            yield table, {**event, **traits}
            if kind == "identify" and event.get("userId") is not None:
                yield "users", {"id": event["userId"], **traits}
        else:
            properties = event.pop("properties", None) or {}
            yield table, {**event, **properties}


def run_dlt(mode: str, path: str, database: str) -> dict:
    os.environ["NORMALIZE__WORKERS"] = "1"
    os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"
    os.environ["RUNTIME__LOG_LEVEL"] = "ERROR"
    import dlt
    import duckdb  # noqa: F401 - imported before the clock starts, as Sluice's are
    import pyarrow.parquet  # noqa: F401

    page = 1000  # dlt's advice: yield lists of items, not one item at a time

    def segment():
        pending: dict = {}
        for table, row in segment_rows(read_events(path)):
            rows = pending.setdefault(table, [])
            rows.append(row)
            if len(rows) >= page:
                yield mark(table, rows)
                pending[table] = []
        for table, rows in pending.items():
            if rows:
                yield mark(table, rows)

    def mark(table: str, rows: list):
        if table == "users":
            hints = dlt.mark.make_hints(table_name="users", write_disposition="merge", primary_key="id")
            return dlt.mark.with_hints(rows, hints, create_table_variant=True)
        return dlt.mark.with_table_name(rows, table[6:] if table.startswith("track:") else table)

    def one_row():
        rows = []
        for event in read_events(path):
            rows.append(event)
            if len(rows) >= page:
                yield rows
                rows = []
        if rows:
            yield rows

    with tempfile.TemporaryDirectory() as pipelines_dir:
        pipeline = dlt.pipeline(pipeline_name=f"bench_{mode.replace('-', '_')}", pipelines_dir=pipelines_dir,
                                destination=dlt.destinations.duckdb(database), dataset_name="segment")
        if mode == "dlt-segment":
            resource = dlt.resource(segment, name="segment", write_disposition="append")
        else:
            resource = dlt.resource(one_row, name="events", table_name="events", write_disposition="append")
        start = time.perf_counter()
        info = pipeline.run(resource, loader_file_format="parquet")
        seconds = time.perf_counter() - start
        info.raise_on_failed_jobs()
    return {"seconds": seconds}


def table_rows(database: str, schema: str = "main") -> dict:
    """{table: rows} of a DuckDB file's tables in `schema`, but dlt's own."""
    import duckdb
    with duckdb.connect(database, read_only=True) as connection:
        tables = [t for (t,) in connection.execute("SELECT table_name FROM duckdb_tables() WHERE schema_name = ? "
                                                   "AND NOT starts_with(table_name, '_dlt')", [schema]).fetchall()]
        return {t: connection.execute(f'SELECT count(*) FROM "{schema}"."{t}"').fetchone()[0] for t in tables}


def expected_rows(path: str) -> dict:
    """What each layout must hold for the file: {"events", each fixed table, "users", "event tables"}."""
    counts = {table: 0 for table in FIXED.values()}
    users = set()
    for event in read_events(path):
        counts[FIXED[event["type"]]] += 1
        if event["type"] == "identify" and event.get("userId") is not None:
            users.add(event["userId"])
    return {"events": sum(counts.values()), **counts, "users": len(users), "event tables": counts["tracks"]}


def stored_rows(rows: dict) -> dict:
    """The same figures read off a run's {table: rows}: event tables are the others, but internal
    ones (`_`) and dlt's child tables (`__`: a list's items, not events)."""
    fixed = set(FIXED.values()) | {"users", "events"}
    got = {table: rows.get(table, 0) for table in fixed}
    got["event tables"] = sum(n for t, n in rows.items() if t not in fixed and not t.startswith("_") and "__" not in t)
    return got


def _name(parts) -> str:
    snake = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", "_".join(parts))
    return re.sub(r"[^0-9a-z]+", "_", snake.lower()).strip("_")


def _typed(structure: dict) -> dict:
    """A json_group_structure with its lists, nulls and mixed values as JSON and the event's
    own times as timestamps: the structure json_transform shreds each event into."""
    typed = {}
    for key, value in structure.items():
        if isinstance(value, dict) and value:
            typed[key] = _typed(value)
        elif isinstance(value, str) and value not in ("NULL", "JSON"):
            typed[key] = "TIMESTAMPTZ" if key in TIMES and value == "VARCHAR" else value
        else:
            typed[key] = "JSON"
    return typed


def _leaves(structure: dict, prefix=()):
    for key, value in structure.items():
        if isinstance(value, dict):
            yield from _leaves(value, prefix + (key,))
        else:
            yield prefix + (key,)


TIMES = {"timestamp", "originalTimestamp", "sentAt", "receivedAt"}


SAMPLE = 20_480  # read_json's own sample_size


def _select(connection, where: str, unprefixed: str = None, drop: str = None) -> str:
    """SELECT of the flattened columns of the events that `where` picks, `unprefixed` (properties
    or traits) flattened without its prefix, the rest joined with `_`, `drop` left out. Each event
    is parsed once, by json_transform, into a struct whose fields become the columns; the struct is
    inferred from a sample of the events, as read_json infers its columns."""
    structure = json.loads(connection.execute(f"SELECT json_group_structure(e) FROM (SELECT e FROM raw "
                                              f"WHERE {where} LIMIT {SAMPLE})").fetchone()[0])
    structure = _typed({k: v for k, v in structure.items() if k != drop})
    columns, names = [], set()
    for path in _leaves(structure):
        name = _name(path[1:] if unprefixed and path[0] == unprefixed else path) or "_"
        while name in names:
            name += "_"
        names.add(name)
        columns.append("s" + "".join('."%s"' % p.replace('"', '""') for p in path) + f' AS "{name}"')
    shape = json.dumps(structure).replace("'", "''")
    return f"SELECT {', '.join(columns)} FROM (SELECT json_transform(e, '{shape}') AS s FROM raw WHERE {where})"


def run_reference(path: str, database: str) -> dict:
    import duckdb
    connection = duckdb.connect(database)
    start = time.perf_counter()
    connection.execute("CREATE TEMP TABLE raw AS SELECT e ->> 'type' AS type, e ->> 'event' AS event, e "
                       "FROM (SELECT unnest(CASE WHEN json_exists(j, '$.batch') THEN CAST(j -> '$.batch' AS JSON[]) "
                       "ELSE [j] END) AS e "
                       "FROM read_json(?, format = 'newline_delimited', records = false, columns = {j: 'JSON'}))",
                       [path])
    expected = dict(connection.execute("SELECT type, count(*) FROM raw GROUP BY 1").fetchall())
    names = [n for (n,) in connection.execute("SELECT DISTINCT event FROM raw WHERE type = 'track' "
                                              "ORDER BY 1").fetchall()]
    connection.execute("BEGIN TRANSACTION")
    for kind, table in FIXED.items():
        if not expected.get(kind):
            continue
        nested = {"track": None, "identify": "traits", "group": "traits"}.get(kind, "properties")
        select = _select(connection, f"type = '{kind}'", nested, "properties" if kind == "track" else None)
        connection.execute(f'CREATE TABLE "{table}" AS {select}')
    for name in names:
        where = "type = 'track' AND event = '%s'" % name.replace("'", "''")
        connection.execute(f'CREATE TABLE "{_name([name])}" AS {_select(connection, where, "properties")}')
    if expected.get("identify"):
        connection.execute('CREATE TABLE users AS SELECT user_id AS id, * FROM identifies '
                           'WHERE user_id IS NOT NULL QUALIFY row_number() OVER (PARTITION BY user_id '
                           'ORDER BY original_timestamp DESC) = 1')
    connection.execute("COMMIT")
    connection.execute("CHECKPOINT")
    seconds = time.perf_counter() - start
    connection.close()
    return {"seconds": seconds}


def main():
    mode, path, database, result = sys.argv[1:5]
    outcome = run_reference(path, database) if mode == "reference" else run_dlt(mode, path, database)
    with open(result, "w") as handle:
        json.dump(outcome, handle)


if __name__ == "__main__":
    main()
