"""The BigQuery warehouse: Sluice's own sink, tables created and widened as events need.

Writes use insertAll (tabledata.insertAll) with insertId = the event's message_id, so a
retried request does not store a row twice (BigQuery drops repeated insertIds for about a
minute; `<table>_view` keeps the newest row per message_id for the rest). A batch is
planned per table with the backend-neutral planner; new columns are added in one
tables.patch per table and batch, under a process-wide lock, after re-reading the table so
another worker's additions are kept; a conflicting patch is re-read and retried.

Per-row errors: rows BigQuery marks `stopped` (valid, but their request failed) are sent
again; rows refused for a field just added (the "mutation lag") are retried with backoff
until the field is visible; any other refused row becomes its event's insert_failed dead
letter while its batch-mates land. Transient failures (429, 5xx, timeouts, resets) are
retried with bounded exponential backoff and jitter; when the bound is reached, or on a
permanent error, the request's events are dead-lettered, never lost.

An event's first row (tracks, identifies, pages, ...) is written before its other rows
(the event's own table, users), and only events whose first row landed get the others.
"""
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone

from google.api_core import exceptions

from transforms.timeutil import format_time
from transforms.warehouse import bigquery_schema as bq, layout, planner, retry
from transforms.warehouse.result import WriteResult

INSERT_CHUNK = 500          # rows per insertAll request (BigQuery recommends at most 500)
_SCHEMA_ATTEMPTS = 6        # re-read and re-patch a table this often on conflicting changes
_LOCK = threading.RLock()   # schema changes of every backend in this process
_SCHEMAS = {}               # (project, dataset, table) -> TableSchema, shared by the process
# 400s that mean "the table changed meanwhile": BigQuery refuses a patch that would drop a
# field another writer added; the emulator reports a lost commit race as "Failed to commit".
_SCHEMA_CONFLICTS = ("Cannot remove field", "does not match", "Failed to commit")


class _Replan(Exception):
    """The table changed under us (another worker): plan the batch again on a fresh schema."""


def _lagging(error: dict, known: set) -> bool:
    """A row refused for a field the table has by now: BigQuery's insert path has not seen
    the new schema yet (seconds to minutes after tables.patch)."""
    return (error.get("reason") == "invalid" and "no such field" in (error.get("message") or "")
            and error.get("location") in known)


class BigQueryWarehouse:
    def __init__(self, project: str, dataset: str, endpoint: str = None, location: str = "US",
                 max_columns: int = planner.DEFAULT_MAX_COLUMNS, flatten_depth: int = planner.DEFAULT_FLATTEN_DEPTH,
                 declared_types=None, retry_deadline: float = 120.0, lag_deadline: float = 120.0):
        self.project, self.dataset, self.endpoint, self.location = project, dataset, endpoint, location
        self.max_columns = min(max_columns, bq.MAX_COLUMNS)
        self.flatten_depth = flatten_depth
        self.declared_types = declared_types or {}
        self.retry = retry.policy(retry_deadline)
        self.lag_deadline = lag_deadline
        self.calls = Counter()  # API calls by kind: the benchmark reports them per 10,000 rows
        self._client = None

    # -- lifecycle -------------------------------------------------------------------
    def open(self) -> "BigQueryWarehouse":
        from google.cloud import bigquery
        options = {}
        if self.endpoint:  # an emulator: no Google credentials involved
            from google.api_core.client_options import ClientOptions
            from google.auth.credentials import AnonymousCredentials
            options = {"credentials": AnonymousCredentials(), "client_options": ClientOptions(api_endpoint=self.endpoint)}
        self._client = bigquery.Client(project=self.project, location=self.location, **options)
        dataset = bigquery.Dataset(f"{self.project}.{self.dataset}")
        dataset.location = self.location
        self._call("datasets.insert", self._client.create_dataset, dataset, exists_ok=True)
        return self

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def take_calls(self) -> Counter:
        """API calls since the last take, by kind (exported as Beam counters by the sink)."""
        calls, self.calls = self.calls, Counter()
        return calls

    def _call(self, kind: str, method, *args, **kwargs):
        self.calls[kind] += 1
        return method(*args, retry=self.retry, **kwargs)

    def _ref(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"

    # -- schemas -----------------------------------------------------------------------
    def _read_schema(self, table: str):
        """The table's schema from BigQuery (None when it does not exist), cached."""
        try:
            found = self._call("tables.get", self._client.get_table, self._ref(table))
        except exceptions.NotFound:
            schema = None
        else:
            schema = bq.table_schema(table, found.schema)
        _SCHEMAS[(self.project, self.dataset, table)] = schema
        return schema

    def _schema(self, table: str):
        key = (self.project, self.dataset, table)
        return _SCHEMAS[key] if key in _SCHEMAS else self._read_schema(table)

    def _declared_for(self, table: str) -> dict:
        return {**self.declared_types.get("*", {}), **self.declared_types.get(table, {})}

    def _evolve(self, table: str, plan) -> None:
        """Create the table, or add the plan's new columns; raise _Replan if another worker
        changed it in a way the plan did not expect."""
        with _LOCK:
            for _ in range(_SCHEMA_ATTEMPTS):
                current = self._read_schema(table)
                try:
                    if current is None:
                        self._create(table, list(planner.fixed_columns(table)) + plan.new_columns)
                    else:
                        missing = self._missing_columns(current, plan.new_columns)
                        if missing:
                            self._add_columns(table, missing)
                    self._read_schema(table)
                    return
                except (exceptions.Conflict, exceptions.PreconditionFailed):
                    continue  # someone else created or patched it first: look again
                except exceptions.BadRequest as exc:
                    if not any(sign in str(exc) for sign in _SCHEMA_CONFLICTS):
                        raise
                    continue  # a patch from a stale schema, or a commit that lost a race: look again
            raise RuntimeError(f"table {table}: schema kept changing under {_SCHEMA_ATTEMPTS} attempts")

    @staticmethod
    def _missing_columns(current, wanted) -> list:
        missing = []
        for column in wanted:
            found = current.columns.get(column.name)
            if found is None:
                missing.append(column)
            elif found.source != column.source or found.type != column.type:
                raise _Replan()  # the name was taken meanwhile, for another value or type
        return missing

    def _create(self, table: str, columns) -> None:
        self._call("tables.insert", self._client.create_table, bq.new_table(self._ref(table), table, columns))
        self._create_view(table, columns)

    def _add_columns(self, table: str, columns) -> None:
        found = self._call("tables.get", self._client.get_table, self._ref(table))
        found.schema = list(found.schema) + [bq.field(c) for c in columns]  # etag set: a stale patch gets 412
        updated = self._call("tables.patch", self._client.update_table, found, ["schema"])
        if table == "users":
            self._replace_view("users_view", bq.users_view_sql(self._ref(table),
                                                               bq.table_schema(table, updated.schema).columns.values()))

    def _create_view(self, table: str, columns) -> None:
        if table == "users":
            self._replace_view("users_view", bq.users_view_sql(self._ref(table), columns))
        else:
            key = "dead_letter_id" if table == planner.DEAD_LETTER_TABLE else planner.key_column(table)
            self._replace_view(f"{table}_view", bq.latest_view_sql(self._ref(table), key))

    def _replace_view(self, name: str, select: str) -> None:
        try:
            existing = self._call("tables.get", self._client.get_table, self._ref(name))
        except exceptions.NotFound:
            existing = None
        if existing is not None and existing.table_type != "VIEW":
            self.calls["views.skipped"] += 1  # an event table has that name: leave it alone
            return
        self.calls["jobs.query"] += 1
        self._client.query_and_wait(bq.create_view_sql(self._ref(name), select), retry=self.retry)

    # -- events ------------------------------------------------------------------------
    def write_events(self, events: list) -> WriteResult:
        result = WriteResult()
        rows = [layout.table_rows(e.body, self.flatten_depth, e.violations) for e in events]
        events, rows = self._drop_repeats(events, rows, result)
        failed = self._write([(i, r[0]) for i, r in enumerate(rows)], events, result)
        failed.update(self._write([(i, row) for i, event_rows in enumerate(rows) if i not in failed
                                   for row in event_rows[1:]], events, result))
        for index, event in enumerate(events):
            if index in failed:
                result.failed.append((event, failed[index]))
            else:
                result.stored.append(event)
        return result

    @staticmethod
    def _drop_repeats(events: list, rows: list, result: WriteResult) -> tuple:
        """Within a batch, a repeated message_id is the `duplicate` drop (BigQuery would absorb
        the repeated insertId silently). Across batches, insertIds absorb repeats for about a
        minute, and `<table>_view` shows one row per message_id whenever they happened."""
        seen, kept, kept_rows = set(), [], []
        for event, event_rows in zip(events, rows):
            key = (event_rows[0].table, event_rows[0].key)  # as DuckDB's primary keys see it
            if key in seen:
                result.duplicates.append(event)
            else:
                seen.add(key)
                kept.append(event)
                kept_rows.append(event_rows)
        return kept, kept_rows

    def _write(self, items: list, events: list, result: WriteResult) -> dict:
        """Write (event index, TableRow) items; return {event index: error} for refused ones."""
        by_table = defaultdict(list)
        for index, row in items:
            by_table[row.table].append((index, row))
        failed = {}
        for table, table_items in by_table.items():
            for _ in range(_SCHEMA_ATTEMPTS):
                try:
                    failed.update(self._write_table(table, table_items, events, result))
                    break
                except _Replan:
                    _SCHEMAS.pop((self.project, self.dataset, table), None)
            else:
                failed.update((i, f"table {table}: schema kept changing") for i, _ in table_items)
        return failed

    def _write_table(self, table: str, items: list, events: list, result: WriteResult) -> dict:
        cached = self._schema(table)
        schema = (cached or planner.TableSchema(table)).copy()
        schema.declare(self._declared_for(table))
        plan = planner.plan_rows(schema, [row for _, row in items], self.max_columns)
        try:
            if cached is None or plan.new_columns:
                self._evolve(table, plan)
        except exceptions.GoogleAPICallError as exc:  # retries exhausted, or permanent: dead letters
            return {index: f"table {table}: {exc}" for index, _ in items}
        loaded_at = format_time(datetime.now(timezone.utc))
        json_rows = [{"loaded_at": loaded_at} for _ in items]
        for name, values in plan.columns.items():
            for row, value in zip(json_rows, values):
                if value is not None:
                    row[name] = value
        ids = [events[index].body["messageId"] for index, _ in items]
        refused = self._insert(table, json_rows, ids, set(schema.columns))
        result.rows[table] += len(items) - len(refused)
        result.type_conflicts[table] += plan.type_conflicts
        result.capped[table] += plan.capped
        return {items[i][0]: message for i, message in refused.items()}

    def _insert(self, table: str, rows: list, ids: list, known: set) -> dict:
        """insertAll in chunks; {row index: error} for rows BigQuery finally refused."""
        pending, refused = list(range(len(rows))), {}
        lag_until, delay, idle_rounds = time.monotonic() + self.lag_deadline, 0.5, 0
        while pending:
            again, lagging, progress = [], False, False
            for start in range(0, len(pending), INSERT_CHUNK):
                chunk = pending[start:start + INSERT_CHUNK]
                errors = self._insert_chunk(table, rows, ids, chunk, refused)
                for entry in errors:
                    index, problems = chunk[entry["index"]], entry.get("errors") or []
                    real = [p for p in problems if p.get("reason") != "stopped"]
                    if not real:
                        again.append(index)  # valid: its request failed because of another row
                    elif all(_lagging(p, known) for p in real) and time.monotonic() < lag_until:
                        again.append(index)
                        lagging = True
                    else:
                        refused[index] = "; ".join(f"{p.get('reason')} at {p.get('location') or 'row'}: "
                                                   f"{p.get('message')}" for p in real)
                        progress = True
                progress = progress or len(errors) < len(chunk)
            # Stopped rows are resent once the rows that stopped them are out, or after a lag
            # wait; a round that neither lands nor refuses anything may repeat only a few times.
            idle_rounds = 0 if (progress or lagging) else idle_rounds + 1
            if idle_rounds >= 5:
                refused.update((i, "BigQuery kept stopping this row without saying why") for i in again)
                break
            pending = again
            if lagging:
                self.calls["mutation_lag.waits"] += 1
                time.sleep(delay)
                delay = min(delay * 2, 8.0)
        return refused

    def _insert_chunk(self, table: str, rows: list, ids: list, chunk: list, refused: dict) -> list:
        """One insertAll request (retried while transient); its per-row errors. A request that
        finally fails refuses all its rows, with the reason."""
        try:
            return self._call("tabledata.insertAll", self._client.insert_rows_json, self._ref(table),
                              [rows[i] for i in chunk], row_ids=[ids[i] for i in chunk],
                              skip_invalid_rows=False, ignore_unknown_values=False, timeout=60)
        except exceptions.GoogleAPICallError as exc:
            message = f"{type(exc).__name__}: {exc}"
        except (ConnectionError, TimeoutError, OSError) as exc:  # requests' errors are OSErrors
            message = f"gave up after retrying: {type(exc).__name__}: {exc}"
        except exceptions.RetryError as exc:
            message = f"gave up after retrying: {exc.cause or exc}"
        refused.update((i, message) for i in chunk)
        return []

    # -- dead letters ------------------------------------------------------------------
    def write_dead_letters(self, records: list) -> int:
        """Dead letters have nowhere further to go: a refusal here raises (the bundle fails
        and is retried), never drops them."""
        table = planner.DEAD_LETTER_TABLE
        if self._schema(table) is None:
            with _LOCK:
                if self._read_schema(table) is None:
                    columns = [planner.Column(n, t, "$" + n) for n, t in planner.DEAD_LETTER_COLUMNS]
                    try:
                        self._create(table, columns)
                    except exceptions.Conflict:
                        pass
                    self._read_schema(table)
        loaded_at = format_time(datetime.now(timezone.utc))
        rows = []
        for record in records:
            row = {"loaded_at": loaded_at}
            for name, kind in planner.DEAD_LETTER_COLUMNS:
                value = record.get(name)
                if value is not None and name != "loaded_at":
                    row[name] = planner.fit(planner.JSON, value) if kind == planner.JSON else value
            rows.append(row)
        refused = self._insert(table, rows, [r["dead_letter_id"] for r in records], set())
        if refused:
            raise RuntimeError(f"BigQuery refused {len(refused)} dead letters: {next(iter(refused.values()))}")
        return len(rows)
