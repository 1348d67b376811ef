"""The BigQuery warehouse: Sluice's own sink, tables created and widened as events need.

Two write paths, chosen by --bigquery_write_method (see docs/bigquery.md for the measurements):
- `insert_all` (streaming runs): tabledata.insertAll with insertId = the event's message_id,
  so a retried request does not store a row twice (BigQuery drops repeated insertIds for
  about a minute; `<table>_view` keeps the newest row per message_id for the rest).
  Per-row errors: rows marked `stopped` (valid, their request failed) are sent again; rows
  refused for a field just added (the "mutation lag") are retried with backoff until the
  field is visible; any other refused row is its event's insert_failed dead letter while its
  batch-mates land.
- `load` (batch runs and backfills): one NDJSON load job per table and batch (load jobs are
  free, and atomic); message_ids already in the table are looked up first (partition-pruned
  by the batch's time range) and counted as the `duplicate` drop, so a re-run stores nothing
  twice. A load job that BigQuery refuses is retried through insertAll, which isolates the
  bad rows.

Transient failures (429, 5xx, timeouts, resets) are retried with bounded exponential
backoff and jitter; past the bound, or on a permanent error, the events are dead-lettered,
never lost. An event's first row (tracks, identifies, pages, ...) is written before its
other rows (its event table, users); only events whose first row landed get the others.
"""
import io
import logging
import time
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timezone

from google.api_core import exceptions

from transforms import jsonutil
from transforms.experiments.extract import Reader
from transforms.timeutil import format_time
from transforms.warehouse import bigquery_schema as bq, layout, planner, replays, retry
from transforms.warehouse.bigquery_tables import BigQueryTables, Replan
from transforms.warehouse.result import WriteResult

# Counted beside the API calls (api_calls.<name>) as what came of them, but no call of their own:
# the printed summary leaves them out of its total of calls, under these labels.
NOT_CALLS = {"views.skipped": "BigQuery views skipped",  # an event table has the view's name
             "jobs.load_refused": "BigQuery load jobs refused",  # its jobs.load is counted
             "mutation_lag.waits": "BigQuery mutation lag waits"}

INSERT_CHUNK = 500          # rows per insertAll request (BigQuery recommends at most 500)
WRITE_METHODS = ("insert_all", "load")
_REPLANS = 6


def _lagging(error: dict, known: set) -> bool:
    """A row refused for a field the table has by now: BigQuery's insert path has not seen
    the new schema yet (seconds to minutes after tables.patch)."""
    return (error.get("reason") == "invalid" and "no such field" in (error.get("message") or "")
            and error.get("location") in known)


def bigquery_client(project: str, location: str, endpoint: str = None):
    """A BigQuery client: Google's API with the environment's credentials, or an emulator's URL
    with none (the job's --bigquery_endpoint, the debugger's debugger.bigquery_endpoint)."""
    from google.cloud import bigquery
    options = {}
    if endpoint:  # an emulator: no Google credentials involved
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials
        options = {"credentials": AnonymousCredentials(), "client_options": ClientOptions(api_endpoint=endpoint)}
    return bigquery.Client(project=project, location=location, **options)


class BigQueryWarehouse:
    def __init__(self, project: str, dataset: str, endpoint: str = None, location: str = "US",
                 max_columns: int = planner.DEFAULT_MAX_COLUMNS, flatten_depth: int = planner.DEFAULT_FLATTEN_DEPTH,
                 declared_types=None, write_method: str = "insert_all", retry_deadline: float = 120.0,
                 lag_deadline: float = 120.0, max_new_columns: int = planner.DEFAULT_MAX_NEW_COLUMNS,
                 experiments=None):
        if write_method not in WRITE_METHODS:
            raise ValueError(f"write_method must be one of {WRITE_METHODS}")
        self.project, self.dataset, self.endpoint, self.location = project, dataset, endpoint, location
        self.write_method = write_method
        self.max_columns = min(max_columns, bq.MAX_COLUMNS)
        self.max_new_columns = max_new_columns
        self.flatten_depth = flatten_depth
        self.declared_types = declared_types or {}
        # experiments: the config's ExperimentSettings; None writes no experiment_exposures rows
        self._exposures = Reader(experiments) if experiments is not None else None
        self.retry = retry.policy(retry_deadline)
        self.lag_deadline = lag_deadline
        self.calls = Counter()  # API calls by kind: the benchmark reports them per 10,000 rows
        self._client = self._tables = None
        self.read_only = False

    # -- lifecycle -------------------------------------------------------------------
    def open(self, read_only: bool = False) -> "BigQueryWarehouse":
        """read_only: reads only (a replay's dry run), creating nothing; a missing dataset raises
        LookupError."""
        from google.cloud import bigquery
        self.read_only = read_only
        self._client = bigquery_client(self.project, self.location, self.endpoint)
        dataset = bigquery.Dataset(f"{self.project}.{self.dataset}")
        dataset.location = self.location
        if read_only:
            try:
                self._call("datasets.get", self._client.get_dataset, dataset.reference)
            except exceptions.NotFound:
                self.close()
                raise LookupError(f"no dataset {self.project}.{self.dataset}") from None
        else:
            self._call("datasets.insert", self._client.create_dataset, dataset, exists_ok=True)
        self._tables = BigQueryTables(self._client, self.project, self.dataset, self.retry, self.calls)
        return self

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def take_calls(self) -> Counter:
        """API calls since the last take, by kind (exported as Beam counters by the sink)."""
        calls = Counter(self.calls)
        self.calls.clear()  # the tables manager counts into the same Counter
        return calls

    def _call(self, kind: str, method, *args, **kwargs):
        self.calls[kind] += 1
        return method(*args, retry=self.retry, **kwargs)

    # -- events ------------------------------------------------------------------------
    def write_events(self, events: list) -> WriteResult:
        result = WriteResult()
        rows = [layout.event_rows(e, self.flatten_depth, self._exposures) for e in events]
        events, rows = self._drop_repeats(events, rows, result)
        if self.write_method == "load":
            events, rows = self._drop_stored(events, rows, result)
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

    def _drop_stored(self, events: list, rows: list, result: WriteResult) -> tuple:
        """Events whose first row is already in its table are the `duplicate` drop (a re-run of
        a backfill): one query per table, pruned to the batch's partitions."""
        by_table = defaultdict(list)
        for event_rows in rows:
            by_table[event_rows[0].table].append(event_rows[0])
        stored = set()
        for table, table_rows in by_table.items():
            if self._tables.schema(table) is None:
                continue
            stored.update((table, key) for key in self._stored_keys(table, table_rows))
        kept = [(e, r) for e, r in zip(events, rows) if (r[0].table, r[0].key) not in stored]
        result.duplicates += [e for e, r in zip(events, rows) if (r[0].table, r[0].key) in stored]
        return [e for e, _ in kept], [r for _, r in kept]

    def _stored_keys(self, table: str, table_rows: list) -> list:
        from google.cloud import bigquery
        times = sorted(r.timestamp for r in table_rows)
        config = bigquery.QueryJobConfig(query_parameters=[
            bigquery.ArrayQueryParameter("keys", "STRING", [r.key for r in table_rows]),
            bigquery.ScalarQueryParameter("low", "TIMESTAMP", times[0]),
            bigquery.ScalarQueryParameter("high", "TIMESTAMP", times[-1])])
        sql = (f"SELECT DISTINCT message_id FROM `{self._tables.ref(table)}` "
               "WHERE message_id IN UNNEST(@keys) AND timestamp BETWEEN @low AND @high")
        self.calls["jobs.query"] += 1
        return [row.message_id for row in self._client.query_and_wait(sql, job_config=config, retry=self.retry)]

    def select_dead_letters(self, selection) -> list:
        """Dead-letter records (dicts, times as ISO strings) a replay selection names."""
        from google.cloud import bigquery
        replays_table = self._ensure_replays()
        if self._tables.schema(planner.DEAD_LETTER_TABLE) is None:
            return []
        where, params = selection.where(replays_table)
        sql = (f"SELECT * FROM `{self._tables.ref(planner.DEAD_LETTER_TABLE)}` WHERE "
               + where.replace(f"FROM {replays.REPLAYS_TABLE}", f"FROM `{self._tables.ref(replays.REPLAYS_TABLE)}`"))
        query_params = [bigquery.ArrayQueryParameter(name, "STRING", value) if kind.startswith("ARRAY")
                        else bigquery.ScalarQueryParameter(name, kind, value) for name, (kind, value) in params.items()]
        self.calls["jobs.query"] += 1
        rows = self._client.query_and_wait(sql, job_config=bigquery.QueryJobConfig(query_parameters=query_params),
                                           retry=self.retry)
        records = [replays.as_record(dict(row.items())) for row in rows]
        return [r for r in records if selection.keeps_source(r.get("source"))]

    def replayed(self, ids: list) -> set:
        """Which of these dead letters were replayed already."""
        if not self._ensure_replays():
            return set()
        return self._ids_in(replays.REPLAYS_TABLE, ids) if ids else set()

    def _ensure_replays(self) -> bool:
        """`_replays` exists (created unless read-only); whether it does."""
        if self.read_only:
            return self._tables.schema(replays.REPLAYS_TABLE) is not None
        self._tables.ensure(replays.REPLAYS_TABLE,
                            [planner.Column(n, t, "$" + n) for n, t in replays.REPLAYS_COLUMNS])
        return True

    def record_replays(self, ids: list, run: str) -> int:
        """Remember that these dead letters were replayed (insertAll, insertId = the id)."""
        if not ids:
            return 0
        self._ensure_replays()
        now = format_time(datetime.now(timezone.utc))
        rows = [{"dead_letter_id": i, "replayed_at": now, "replay_run": run} for i in ids]
        refused = self._insert(replays.REPLAYS_TABLE, rows, list(ids), set())
        if refused:
            raise RuntimeError(f"BigQuery refused {len(refused)} replay records: {next(iter(refused.values()))}")
        return len(rows)

    # -- the replay lease (transforms.warehouse.replays) -------------------------------
    _LEASE_ATTEMPTS = 5

    def take_replay_lease(self, run: str, holder: str, selection: str, seconds: int):
        """Take the warehouse's replay lease for `seconds`: None when taken, else the Lease of
        the live replay that holds it. Writes are DML only: rows sent by insertAll could not be
        updated for half an hour. A conflict with a concurrent UPDATE (BigQuery retries those
        itself three times first) is settled by reading the lease again."""
        from google.cloud import bigquery
        self._ensure_leases()
        self._lease_dml(replays.SEED_LEASE)
        params = [bigquery.ScalarQueryParameter("run", "STRING", run),
                  bigquery.ScalarQueryParameter("holder", "STRING", holder),
                  bigquery.ScalarQueryParameter("selection", "STRING", selection),
                  bigquery.ScalarQueryParameter("seconds", "INT64", int(seconds))]
        for _ in range(self._LEASE_ATTEMPTS):
            try:
                if self._lease_dml(replays.TAKE_LEASE, params):
                    return None
            except exceptions.BadRequest as exc:
                if "concurrent update" not in str(exc):
                    raise
            holder = self._lease_holder()
            if holder is not None:
                return holder
            # Neither ours nor anyone's: its holder released it (or lost it to a conflict) meanwhile.
        raise RuntimeError(f"could not take the replay lease in {self._LEASE_ATTEMPTS} attempts "
                           "(every one conflicted with another replay's)")

    def renew_replay_lease(self, run: str, seconds: int) -> bool:
        """Move the lease's expiry `seconds` from now; False when `run` no longer holds it."""
        from google.cloud import bigquery
        return bool(self._lease_dml(replays.RENEW_LEASE, [bigquery.ScalarQueryParameter("run", "STRING", run),
                                                          bigquery.ScalarQueryParameter("seconds", "INT64",
                                                                                        int(seconds))]))

    def release_replay_lease(self, run: str) -> None:
        """Give the lease up, if `run` still holds it (an expired one may be someone else's now)."""
        from google.cloud import bigquery
        self._lease_dml(replays.RELEASE_LEASE, [bigquery.ScalarQueryParameter("run", "STRING", run)])

    def replay_lease_holder(self):
        """The Lease of the live replay holding the lease, or None."""
        self._ensure_leases()
        return self._lease_holder()

    def _lease_holder(self):
        rows = [dict(row.items()) for row in self._lease_query(replays.HOLDER)]
        return replays.Lease.from_row(rows[0]) if rows else None

    def _ensure_leases(self) -> None:
        """`_replay_leases` exists: a few rows, not partitioned (not through BigQueryTables,
        whose layouts partition by a time the lease has not always got)."""
        from google.cloud import bigquery
        ref = self._tables.ref(replays.LEASES_TABLE)
        try:
            self._call("tables.get", self._client.get_table, ref)
            return
        except exceptions.NotFound:
            pass
        table = bigquery.Table(ref, schema=[bigquery.SchemaField(n, bq.FIELD_TYPES[t])
                                            for n, t in replays.LEASES_COLUMNS])
        try:
            self._call("tables.insert", self._client.create_table, table, exists_ok=True)
        except exceptions.BadRequest:
            # Two replays creating it together: BigQuery answers the later one 409 (exists_ok),
            # the emulator may answer 400 (its catalog's commit conflict). Either way it exists now.
            self._call("tables.get", self._client.get_table, ref)

    def _lease_sql(self, template: str) -> str:
        return template.format(table=f"`{self._tables.ref(replays.LEASES_TABLE)}`", now="CURRENT_TIMESTAMP()",
                               expires="TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL @seconds SECOND)")

    def _lease_query(self, template: str, params: list = ()):
        from google.cloud import bigquery
        config = bigquery.QueryJobConfig(query_parameters=[
            bigquery.ScalarQueryParameter("key", "STRING", replays.LEASE_KEY), *params])
        self.calls["jobs.query"] += 1
        return self._client.query_and_wait(self._lease_sql(template), job_config=config, retry=self.retry)

    def _lease_dml(self, template: str, params: list = ()) -> int:
        """Run one lease statement; how many rows it changed."""
        return self._lease_query(template, params).num_dml_affected_rows or 0

    def _ids_in(self, table: str, ids: list, column: str = "dead_letter_id", within: tuple = None) -> set:
        """Which of these ids (`column`: dead-letter ids, or _deliveries' delivery ids) `table`
        (_dead_letters, _replays, _deliveries) holds. Dead letters are not pruned by time (a
        dead letter's failed_at differs run to run; these tables are small); `within`:
        (time column, first, last) prunes to the partitions the rows' own times fall in."""
        from google.cloud import bigquery
        params = [bigquery.ArrayQueryParameter("ids", "STRING", list(ids))]
        sql = f"SELECT DISTINCT {column} AS id FROM `{self._tables.ref(table)}` WHERE {column} IN UNNEST(@ids)"
        if within:
            time_column, first, last = within
            sql += f" AND {time_column} BETWEEN @first AND @last"
            params += [bigquery.ScalarQueryParameter("first", "TIMESTAMP", first),
                       bigquery.ScalarQueryParameter("last", "TIMESTAMP", last)]
        config = bigquery.QueryJobConfig(query_parameters=params)
        self.calls["jobs.query"] += 1
        return {row.id for row in self._client.query_and_wait(sql, job_config=config, retry=self.retry)}

    def _write(self, items: list, events: list, result: WriteResult) -> dict:
        """Write (event index, TableRow) items; return {event index: error} for refused ones."""
        by_table = defaultdict(list)
        for index, row in items:
            by_table[row.table].append((index, row))
        failed = {}
        for table, table_items in by_table.items():
            for _ in range(_REPLANS):
                try:
                    failed.update(self._write_table(table, table_items, events, result))
                    break
                except Replan:
                    self._tables.forget(table)
            else:
                failed.update((i, f"table {table}: schema kept changing") for i, _ in table_items)
        return failed

    def _write_table(self, table: str, items: list, events: list, result: WriteResult) -> dict:
        cached = self._tables.schema(table)
        schema = (cached or planner.TableSchema(table)).copy()
        schema.declare(planner.declared_for(self.declared_types, table))
        plan = planner.plan_rows(schema, [row for _, row in items], self.max_columns, self.max_new_columns)
        try:
            if cached is None or plan.new_columns:
                self._tables.evolve(table, plan)
        except exceptions.GoogleAPICallError as exc:  # retries exhausted, or permanent: dead letters
            return {index: f"table {table}: {exc}" for index, _ in items}
        loaded_at = format_time(datetime.now(timezone.utc))
        json_rows = [{"loaded_at": loaded_at} for _ in items]
        for name, values in plan.columns.items():
            for row, value in zip(json_rows, values):
                if value is not None:
                    row[name] = value
        ids = [events[index].body["messageId"] for index, _ in items]
        if self.write_method == "load" and self._load(table, json_rows):
            refused = {}
        else:
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

    def _load(self, table: str, rows: list) -> bool:
        """One atomic load job appending `rows`; False when BigQuery refused it (then insertAll
        finds the rows at fault). The table's own schema applies: no field is added here. The
        job id is ours, so a job whose creation answer was lost is found again, not repeated."""
        from google.cloud import bigquery
        config = bigquery.LoadJobConfig(source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
                                        write_disposition=bigquery.WriteDisposition.WRITE_APPEND,
                                        create_disposition=bigquery.CreateDisposition.CREATE_NEVER,
                                        autodetect=False, max_bad_records=0)
        data = b"\n".join(jsonutil.dumps(row) for row in rows)
        job_id = f"sluice_load_{uuid.uuid4().hex}"
        try:
            self.calls["jobs.load"] += 1
            try:
                job = self._client.load_table_from_file(io.BytesIO(data), self._tables.ref(table), size=len(data),
                                                        job_config=config, num_retries=6, job_id=job_id)
            except (exceptions.Conflict, exceptions.ServerError, ConnectionError, OSError):
                job = self._existing_job(job_id)  # an attempt may have landed although we lost its answer
                if job is None:
                    raise
            job.result(retry=self.retry, timeout=600)
            return True
        except (exceptions.GoogleAPICallError, exceptions.RetryError, ConnectionError, OSError) as exc:
            self.calls["jobs.load_refused"] += 1  # insertAll will say which rows, and why
            logging.getLogger(__name__).warning("load job into %s refused (%s); writing through insertAll",
                                                table, exc)
            return False

    def _existing_job(self, job_id: str):
        try:
            self.calls["jobs.get"] += 1
            return self._client.get_job(job_id, retry=self.retry)
        except exceptions.NotFound:
            return None

    def _insert_chunk(self, table: str, rows: list, ids: list, chunk: list, refused: dict) -> list:
        """One insertAll request (retried while transient); its per-row errors. A request that
        finally fails refuses all its rows, with the reason."""
        try:
            return self._call("tabledata.insertAll", self._client.insert_rows_json, self._tables.ref(table),
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
    def ensure_dead_letters(self) -> None:
        """`_dead_letters` and `_dead_letters_view` exist (created together if the table does
        not), so a monitoring query on them works from the first run. The launcher calls this
        once per run (pipeline.main.execute); a worker's check is one tables.get per process,
        none where the launcher's cached schema is shared (local runs)."""
        self._tables.ensure(planner.DEAD_LETTER_TABLE,
                            [planner.Column(n, t, "$" + n) for n, t in planner.DEAD_LETTER_COLUMNS])
        self._tables.ensure_states_view()  # a dataset from before the view of each failure's state

    def write_dead_letters(self, records: list) -> int:
        """Dead letters have nowhere further to go: a refusal here raises (the bundle fails
        and is retried), never drops them. insertAll with insertId = the dead letter's stable
        id: a re-read of the same bad line within the window is stored once."""
        self.ensure_dead_letters()
        return self._insert_records(planner.DEAD_LETTER_TABLE, planner.DEAD_LETTER_COLUMNS, "dead_letter_id",
                                    records, "dead letters")

    # -- forwarding's outcomes ---------------------------------------------------------
    def ensure_deliveries(self) -> None:
        """`_deliveries` and `_deliveries_view` exist (the launcher calls this when the config
        forwards anywhere; the first write does too). Partitioned by requested_at, clustered by
        destination and status; message_ids is a REPEATED STRING."""
        self._tables.ensure(planner.DELIVERIES_TABLE,
                            [planner.Column(n, t, "$" + n) for n, t in planner.DELIVERY_COLUMNS])

    def write_deliveries(self, records: list) -> int:
        """Forwarding's outcome rows, as dead letters are written: insertId = delivery_id (and, in
        load mode, the ids stored already left out), so an outcome written twice is one row, in
        `_deliveries_view` whenever it happened. A refusal raises."""
        self.ensure_deliveries()
        return self._insert_records(planner.DELIVERIES_TABLE, planner.DELIVERY_COLUMNS, "delivery_id",
                                    records, "delivery outcomes", time_column="requested_at")

    def _insert_records(self, table: str, columns, key: str, records: list, what: str,
                        time_column: str = None) -> int:
        """Rows of a fixed layout (dicts) through insertAll, insertId = the row's `key`.
        time_column: part of the key, so a stored copy has the same time (its lookup is pruned)."""
        if self.write_method == "load":  # a batch run, maybe a re-run: insertIds only dedupe for a minute
            times = sorted(r[time_column] for r in records) if time_column else None
            stored = self._ids_in(table, [r[key] for r in records], key,
                                  (time_column, times[0], times[-1]) if times else None)
            records = [r for r in records if r[key] not in stored]
            if not records:
                return 0
        loaded_at = format_time(datetime.now(timezone.utc))
        rows = []
        for record in records:
            row = {"loaded_at": loaded_at}
            for name, kind in columns:
                value = record.get(name)
                if value is not None and name != "loaded_at":
                    row[name] = planner.fit(planner.JSON, value) if kind == planner.JSON else value
            rows.append(row)
        refused = self._insert(table, rows, [r[key] for r in records], set())
        if refused:
            raise RuntimeError(f"BigQuery refused {len(refused)} {what}: {next(iter(refused.values()))}")
        return len(rows)
