"""The embedded DuckDB warehouse: one database file, tables created and widened in place.

DuckDB lets one process write a database file. Every writer in the process shares one
connection per file (refcounted), and a lock serializes schema changes and inserts, so
bundles on several threads write safely. Runs that would put writers in other processes
are refused at launch (pipeline.options).

A batch's keys are looked up and its rows planned; schema changes are then committed on their
own, a new table in one CREATE TABLE, new columns a few ALTERs per transaction (DuckDB keeps a
version of the table per ALTER until the transaction ends: 2,000 in one took 1.2 GB); then the
rows of every table and the keys of the stored events go in one transaction, each table's rows
as one Arrow table. If that fails, the batch is retried one event at a time so one bad event
cannot sink the rest. A schema change that outlives a failed batch is harmless: a column
nothing has filled yet. Events whose fields all have columns skip the planning: DuckDB extracts
their columns from their JSON in the same transaction, and the rest of their groups are planned
after it, in a second one (transforms.warehouse.shred, Shredding).
"""
import logging
import os
import re
import threading
from collections import Counter, defaultdict
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, Optional

import duckdb
import pyarrow as pa

from transforms.experiments.extract import Reader
from transforms.timeutil import format_time
from transforms.warehouse import layout, planner, replays, shred
from transforms.warehouse.sqltext import literal, quote
from transforms.warehouse.result import WriteResult

_LOG = logging.getLogger(__name__)

SQL_TYPES = {planner.BOOL: "BOOLEAN", planner.INT64: "BIGINT", planner.FLOAT64: "DOUBLE",
             planner.STRING: "VARCHAR", planner.TIMESTAMP: "TIMESTAMPTZ", planner.JSON: "JSON",
             planner.STRINGS: "VARCHAR[]"}
ARROW_TYPES = {planner.BOOL: pa.bool_(), planner.INT64: pa.int64(), planner.FLOAT64: pa.float64(),
               planner.STRING: pa.string(), planner.TIMESTAMP: pa.string(),  # ISO strings: DuckDB casts
               planner.JSON: pa.string(), planner.STRINGS: pa.list_(pa.string())}
COLUMNS_TABLE = "_sluice_columns"
# Which events are stored: a 128-bit key per (table, message_id) of each event's primary row.
# Each batch's keys are looked up with one hash join over this narrow column (DuckDB would scan
# a primary-key column for that join too, not probe its index). There is no index: an index
# lives in memory, grows with the warehouse, and every checkpoint rewrites it (measured: peak
# memory 1.6x at ten times the events with message_id primary keys). A single writer holds the
# file, and one batch of events at a time goes from its lookup to its commit (_SharedDatabase.writing),
# so the lookup and the insert cannot race.
KEYS_TABLE = "_sluice_message_keys"
_KEY = "md5_number({})"  # 128 bits of the string `<table>:<message_id>` (a table name has no ':')
DEAD_LETTER_TABLE = planner.DEAD_LETTER_TABLE
DEAD_LETTER_COLUMNS = planner.DEAD_LETTER_COLUMNS
DELIVERIES_TABLE = planner.DELIVERIES_TABLE


# DuckDB caches what it reads and writes up to its memory limit, by default 80% of the
# machine's memory, so a run's memory would grow with the warehouse it writes (measured: 336 MB
# at 100,000 events, 521 MB at 1,000,000). Sluice's own connection starts with a small budget
# instead (`warehouse.duckdb_memory_limit_mb`): what DuckDB evicts is in the file already. A
# write that needs more (a batch adding a thousand columns does) raises it, doubling, up to
# DuckDB's own default; the batch is then written again, so the budget never costs an event.
DEFAULT_MEMORY_LIMIT_MB = 64
_MEMORY_CEILING_MB = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 8 // 10 >> 20


class WarehouseUnusable(RuntimeError):
    """The DuckDB file cannot be opened, for a reason its owner fixes (the commands report it as
    one line naming --warehouse, exit 2); the message names the path and why."""


class WarehouseInUse(WarehouseUnusable):
    """Another process has the DuckDB file open (DuckDB lets one process write a file, and no
    other process read it meanwhile); the message names that process."""

    def __init__(self, path: str, holder: str):
        super().__init__(f"{path} is open in another process ({holder}); DuckDB lets one process "
                         "use a file while it writes: wait for that one to end")
        self.path, self.holder = path, holder


class NotADatabase(WarehouseUnusable):
    """DuckDB cannot read the path as a database: a text file, a directory, a newer DuckDB's
    file, or (read-only) nothing at all."""

    def __init__(self, path: str, error: Exception):
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]  # DuckDB's own line
        super().__init__(f"{path}: not readable as a DuckDB database ({reason})")
        self.path = path


def connect(path: str, **options):
    """duckdb.connect, with WarehouseInUse for a file another process holds and NotADatabase for
    one DuckDB cannot read as a database."""
    try:
        return duckdb.connect(path, **options)
    except duckdb.IOException as exc:  # not other duckdb.Errors: a bad config option is Sluice's bug
        if "lock" not in str(exc).lower():
            raise NotADatabase(path, exc) from None
        raise WarehouseInUse(path, _holder(str(exc))) from None


def _holder(message: str) -> str:
    """`PID 123: python -m pipeline ...` from DuckDB's lock error, as far as it can be told."""
    match = re.search(r"PID (\d+)", message)
    if not match:
        return "an unknown process"
    try:
        command = Path(f"/proc/{match.group(1)}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        command = ""
    return f"PID {match.group(1)}" + (f": {command[:200]}" if command else "")


class _SharedDatabase:
    def __init__(self, path: str, memory_limit_mb: int, read_only: bool = False):
        if not read_only:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.memory_limit_mb = memory_limit_mb
        self.conn = connect(path, read_only=read_only, config={"memory_limit": f"{memory_limit_mb}MB"})
        self.lock = threading.RLock()
        # Held from a batch's prepare_events to its finish_events (which may run on another thread, so a
        # plain Lock): one batch of events at a time between its key lookup and its commit.
        self.writing = threading.Lock()
        self.refs = 0
        self.schemas = None  # table name -> TableSchema, loaded on first use

    def raise_memory_limit(self) -> bool:
        """Double the budget (see DEFAULT_MEMORY_LIMIT_MB); False when it cannot grow."""
        if self.memory_limit_mb >= _MEMORY_CEILING_MB:
            return False
        self.memory_limit_mb = min(self.memory_limit_mb * 2, _MEMORY_CEILING_MB)
        self.conn.execute(f"SET memory_limit = '{self.memory_limit_mb}MB'")
        _LOG.warning("DuckDB needed more memory for a write: its budget is now %d MB", self.memory_limit_mb)
        return True


_DATABASES = {}
_DATABASES_LOCK = threading.Lock()


def _acquire(path: str, memory_limit_mb: int) -> _SharedDatabase:
    """The process's one connection to `path` (the first to open it sets its memory limit)."""
    with _DATABASES_LOCK:
        db = _DATABASES.get(path)
        if db is None:
            db = _DATABASES[path] = _SharedDatabase(path, memory_limit_mb)
        db.refs += 1
        return db


def _release(path: str) -> None:
    with _DATABASES_LOCK:
        db = _DATABASES.get(path)
        if db is None:
            return
        db.refs -= 1
        if db.refs <= 0:
            db.conn.close()  # checkpoints the WAL: the file is complete on its own
            del _DATABASES[path]


def close_all() -> None:
    """Close every shared connection (checkpointing each file): a stopped streaming run's
    DoFns are not torn down, so the runner's caller closes the files."""
    with _DATABASES_LOCK:
        for path, db in list(_DATABASES.items()):
            with db.lock:
                db.conn.close()
            del _DATABASES[path]


@contextmanager
def _registered(conn, name: str, table: pa.Table):
    """Expose an Arrow table to SQL as `name`. Unregistered only on success: inside an
    aborted transaction unregister() itself fails and would hide the real error (a later
    register() of the same name replaces the view anyway)."""
    conn.register(name, table)
    yield
    conn.unregister(name)


# New columns per schema transaction: each ALTER keeps a version of the table until its
# transaction ends (measured with 2,000: 1.2 GB in one transaction, 100 MB one by one, 200 MB
# a hundred at a time), and each commit costs a write of its own.
_COLUMNS_PER_TRANSACTION = 25


def _by_table(kept: list) -> dict:
    """{table: [TableRow, ...]} of the kept events' rows, in order."""
    by_table = defaultdict(list)
    for event_rows in kept:
        for row in event_rows:
            by_table[row.table].append(row)
    return by_table


class _Replan(Exception):
    """A widening was refused after planning; plan the batch again without it."""


def _time_or_none(value):
    converted = planner.fit(planner.TIMESTAMP, value) if value else None
    return converted if isinstance(converted, str) else None


def _structure_rows(conn, rows: int):
    """(grp, structure, events with integrations) rows of the structure of shred.SOURCE's
    `rows` events, as registered on `conn`, part by part in order (a part out of memory is read in
    halves); None if a part of shred.MIN_STRUCTURE_ROWS needs more than the memory budget. For
    shred.merge_groups."""
    found, parts = [], shred.structure_parts(rows)[::-1]  # popped from the end: in order
    while parts:
        start, size = parts.pop()
        try:
            found += conn.execute(shred.structure_query(shred.SOURCE, start, size)).fetchall()
        except duckdb.OutOfMemoryException:
            if size <= shred.MIN_STRUCTURE_ROWS:
                return None
            parts += [(start + size // 2, size - size // 2), (start, size // 2)]
    return found


class Shredding:
    """A batch's events left to the bulk path (transforms.warehouse.shred), registered as
    shred.SOURCE; commit_prepared writes the groups of them whose fields all have columns, and
    leaves the others' indices in `left` for finish_events to plan in Python."""

    def __init__(self, candidates: list, loaded_at: str, structures=None):
        self.candidates = candidates  # (index in the batch, shred.Shreddable)
        self.loaded_at = loaded_at
        # read ahead (read_structures), a callable of no arguments: the groups' structures, or None when
        # they are not all there (commit_prepared then reads the batch's own)
        self.structures = structures
        self.left = []


class PreparedWrite(NamedTuple):
    """A batch ready to write (DuckDBWarehouse.prepare_events)."""
    events: list
    rows: list                    # each event's TableRows (None: left to the bulk path), for retries
    result: WriteResult           # what the batch comes to once written
    script: tuple = ()            # statements of one transaction: the planned tables and their events' keys
    registered: tuple = ()        # the Arrow tables the script reads, released by finish_events
    shredding: Optional[Shredding] = None


class DuckDBWarehouse:
    def __init__(self, path: str, max_columns: int = planner.DEFAULT_MAX_COLUMNS,
                 flatten_depth: int = planner.DEFAULT_FLATTEN_DEPTH, declared_types=None,
                 memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
                 max_new_columns: int = planner.DEFAULT_MAX_NEW_COLUMNS, experiments=None,
                 shred_in_bulk: bool = True):
        self.path = str(Path(path).resolve())
        # shred_in_bulk: let DuckDB extract the columns of events whose fields all have columns
        # (transforms.warehouse.shred); False plans every value in Python (the reference it is tested against)
        self.shred_in_bulk = shred_in_bulk
        self.max_new_columns = max_new_columns
        self.memory_limit_mb = memory_limit_mb
        self.max_columns = max_columns
        self.flatten_depth = flatten_depth
        self.declared_types = declared_types or {}  # {table or "*": {pointer: type}} from contracts
        # experiments: the config's ExperimentSettings; None writes no experiment_exposures rows
        self._exposures = Reader(experiments) if experiments is not None else None
        self._db = None
        self._reader = None  # read_structures' own connection
        self.read_only = False

    # -- lifecycle -------------------------------------------------------------------
    def open(self, read_only: bool = False) -> "DuckDBWarehouse":
        """read_only: reads only (a replay's dry run), creating nothing: the file must exist, and
        unless this process has it open already, it is opened read-only."""
        self.read_only = read_only
        if read_only:
            if not os.path.exists(self.path):
                raise LookupError(f"no DuckDB file {self.path}")
            with _DATABASES_LOCK:
                if self.path in _DATABASES:
                    self.read_only = False  # this process writes it: share its connection, as a writer would
            if self.read_only:
                self._db = _SharedDatabase(self.path, self.memory_limit_mb, read_only=True)
                return self
        self._db = _acquire(self.path, self.memory_limit_mb)
        with self._db.lock:
            if self._db.schemas is None:
                self._bootstrap()
        return self

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._db is not None:
            if self.read_only:
                self._db.conn.close()  # its own connection, never shared
            else:
                _release(self.path)
            self._db = None

    def cursor(self):
        """A connection of its own to this open database (DuckDB's cursor): its reads see what is
        committed and never wait for the writers' lock (a collector's queries while it loads)."""
        with self._db.lock:
            return self._db.conn.cursor()

    def _bootstrap(self):
        conn = self._db.conn
        conn.execute(f"CREATE TABLE IF NOT EXISTS {COLUMNS_TABLE} (table_name VARCHAR, column_name VARCHAR, "
                     "column_type VARCHAR, source VARCHAR, added_at TIMESTAMPTZ, "
                     "PRIMARY KEY (table_name, column_name))")
        self.ensure_dead_letters()
        self.ensure_deliveries()
        self._ensure_keys()
        self._db.schemas = self._registered_schemas()

    def _ensure_keys(self):
        """The stored events' keys; a warehouse written before they existed (its event tables
        keyed by message_id) has them made from its primary tables, once."""
        conn = self._db.conn
        if conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [KEYS_TABLE]).fetchone()[0]:
            return
        conn.execute("BEGIN TRANSACTION")
        conn.execute(f"CREATE TABLE {KEYS_TABLE} (key UHUGEINT)")
        existing = {r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        for table in sorted(existing & set(layout.PRIMARY_TABLES)):
            key = _KEY.format(f"'{table}:' || message_id")
            conn.execute(f"INSERT INTO {KEYS_TABLE} SELECT DISTINCT {key} FROM {quote(table)}")
        conn.execute("COMMIT")

    # -- events ------------------------------------------------------------------------
    def write_events(self, events: list) -> WriteResult:
        prepared = self.prepare_events(events)
        try:
            self.commit_prepared(prepared)
        except Exception as exc:  # noqa: BLE001 - finish_events retries the batch one event at a time
            return self.finish_events(prepared, exc)
        except BaseException:
            self.release_events(prepared)  # for the next writer; the batch is written again, if at all
            raise
        return self.finish_events(prepared)

    def shred_events(self, events: list) -> list:
        """Each event's shred.Shreddable, or None for one only Python plans (all, with shredding off)."""
        if not self.shred_in_bulk:
            return [None] * len(events)
        return [shred.shreddable(e, self._exposures) for e in events]

    def read_structures(self, shreds: list):
        """The structures of the events in bulk form among `shreds` (shred_events' of a part of a
        batch still filling), as rows for shred.merge_groups, or None if DuckDB runs out of memory.
        On a connection of its own and under no lock: it runs on another thread while the batch
        fills, beside the writes of another; prepare_events takes them (`structures`)."""
        candidates = [c for c in shreds if c is not None]
        if not candidates:
            return []
        with self._db.lock:
            if self._reader is None:
                self._reader = self._db.conn.cursor()
        self._reader.register(shred.SOURCE, shred.arrow_table(candidates))
        try:
            return _structure_rows(self._reader, len(candidates))
        finally:
            self._reader.unregister(shred.SOURCE)

    def prepare_events(self, events: list, shreds: list = None, structures=None) -> "PreparedWrite":
        """A batch's Python work: its keys looked up, rows planned, schema changes committed and
        each table's rows registered as an Arrow table, with the SQL that writes them all in one
        transaction; the events left to the bulk path registered as JSON text. commit_prepared
        reads their structure, adds the bulk INSERTs and runs the transaction: mostly DuckDB, which
        holds no GIL while it executes (a little Python reads the structure and writes the SQL), so
        a caller may run it on a thread of its own while it makes the next batch; finish_events then
        writes the events the bulk path left and releases the tables. Other writers of events wait
        from prepare_events to finish_events, which every prepare_events must reach. `shreds`: the
        events' shred_events, when the caller made them already; `structures`: a callable of no
        arguments giving the read_structures of those, all parts of the batch (or None if some are
        missing), as the caller read them ahead."""
        shreds = list(shreds) if shreds is not None else self.shred_events(events)
        rows = [None if s is not None else layout.event_rows(e, self.flatten_depth, self._exposures)
                for e, s in zip(events, shreds)]  # a shreddable event's rows are made if Python plans them
        self._db.writing.acquire()  # released by finish_events, maybe on another thread
        try:
            with self._db.lock:
                try:
                    return self._prepare_with_replan(events, rows, shreds, structures)
                except Exception:  # noqa: BLE001 - not swallowed: each event is retried alone and
                    rows = self._all_rows(events, rows)  # carries its error
                    return PreparedWrite(events, rows, self._write_one_by_one(events, rows))
        except BaseException:
            self._db.writing.release()
            raise

    def commit_prepared(self, prepared: "PreparedWrite") -> None:
        """Write a prepared batch: one transaction, rolled back if it fails (then raised)."""
        with self._db.lock:
            statements = list(prepared.script)
            if prepared.shredding is not None:
                statements += self._bulk_statements(prepared.shredding, prepared.result)
            if not statements:
                return
            try:
                self._db.conn.execute(";\n".join(["BEGIN TRANSACTION", *statements, "COMMIT"]))
            except duckdb.OutOfMemoryException:
                self._rollback()
                self._db.raise_memory_limit()  # for the retry, one event at a time (keys looked up again)
                raise
            except BaseException:
                self._rollback()
                raise

    def finish_events(self, prepared: "PreparedWrite", failure: Exception = None) -> WriteResult:
        """The batch's WriteResult once commit_prepared ran; if it raised (`failure`), the batch is
        written again: planned in Python alone if the failed script shredded in bulk (an integer
        too wide for its column fails a bulk INSERT where Python keeps it in `_unmapped`), then, if
        that fails too, one event at a time, so that one bad event cannot sink the rest."""
        try:
            with self._db.lock:
                self._unregister(prepared.registered)
                if failure is None:
                    return self._write_left(prepared)
                rows = self._all_rows(prepared.events, prepared.rows)
                if prepared.shredding is not None:
                    _LOG.info("a batch shredded in bulk failed (%s); planning it in Python", failure)
                    try:
                        return self._write_planned(prepared.events, rows)
                    except Exception:  # noqa: BLE001 - each event is retried alone and carries its error
                        pass
                return self._write_one_by_one(prepared.events, rows)
        finally:
            self._db.writing.release()

    def release_events(self, prepared: "PreparedWrite") -> None:
        """Release what prepare_events holds without writing anything more (a bundle that failed:
        its retry writes the batch again, and what is stored of it counts as duplicates)."""
        try:
            with self._db.lock:
                self._unregister(prepared.registered)
        finally:
            self._db.writing.release()

    def _write_left(self, prepared) -> WriteResult:
        """The batch's result once the events the bulk path left are written too, planned in
        Python (one more transaction; one event at a time if that fails)."""
        result = prepared.result
        if prepared.shredding is None or not prepared.shredding.left:
            return result
        left, rows, failed = [], [], []
        for i in prepared.shredding.left:  # the rest of the batch is stored: one event's error is its own
            event = prepared.events[i]
            try:
                rows.append(layout.event_rows(event, self.flatten_depth, self._exposures))
                left.append(event)
            except Exception as exc:  # noqa: BLE001 - becomes an insert_failed dead letter
                failed.append((event, f"{type(exc).__name__}: {exc}"))
        try:
            written = self._write_planned(left, rows) if left else WriteResult()
        except Exception:  # noqa: BLE001 - each event is retried alone and carries its error
            written = self._write_one_by_one(left, rows)
        written.failed += failed
        leaving = {id(prepared.events[i]) for i in prepared.shredding.left}
        result.stored = [event for event in result.stored if id(event) not in leaving]
        result.merge(written)
        return result

    def _write_planned(self, events, rows) -> WriteResult:
        """The batch in one transaction, every value planned in Python."""
        prepared = self._prepare_with_replan(events, rows, None)
        try:
            self.commit_prepared(prepared)
        finally:
            self._unregister(prepared.registered)
        return prepared.result

    def _all_rows(self, events, rows) -> list:
        """Each event's TableRows, made now for the events left to the bulk path."""
        return [r if r is not None else layout.event_rows(e, self.flatten_depth, self._exposures)
                for e, r in zip(events, rows)]

    def _rollback(self) -> None:
        try:
            self._db.conn.execute("ROLLBACK")
        except duckdb.TransactionException:  # none open: the script failed before its BEGIN, or at COMMIT
            pass

    def _unregister(self, names) -> None:
        """Release a batch's Arrow tables; a failure here cannot change what was written."""
        for name in names:
            try:
                self._db.conn.unregister(name)
            except duckdb.Error as exc:  # a later register() of the name replaces it anyway
                _LOG.warning("could not release %s: %s", name, exc)

    def _write_one_by_one(self, events, rows) -> WriteResult:
        result = WriteResult()
        for event, event_rows in zip(events, rows):
            try:
                result.merge(self._write_planned([event], [event_rows]))
            except Exception as exc:  # noqa: BLE001 - becomes an insert_failed dead letter
                result.failed.append((event, f"{type(exc).__name__}: {exc}"))
        return result

    def _prepare_with_replan(self, events, rows, shreds, structures=None) -> "PreparedWrite":
        while True:  # ends: each _Replan adds a column to no_widen, which is never widened again,
            try:     # and the memory budget stops growing at its ceiling
                return self._prepare(events, rows, shreds, structures)
            except _Replan:
                continue
            except duckdb.OutOfMemoryException:
                if not self._db.raise_memory_limit():
                    raise

    def _prepare(self, events, rows, shreds, structures=None) -> "PreparedWrite":
        """`rows`: each event's TableRows, None for an event `shreds` has in bulk form (left to
        commit_prepared); `shreds` None plans every event in Python. `structures`: prepare_events'."""
        conn = self._db.conn
        result = WriteResult()
        shreds = shreds or [None] * len(events)
        kept, keys = self._split_duplicates(events, rows, shreds, result)
        if not keys:
            return PreparedWrite(events, rows, result)
        loaded_at = f"TIMESTAMPTZ '{datetime.now(timezone.utc).isoformat()}'"
        registered, script, shredding = [], [], None
        try:
            planned, plans, users = self._plan_in_order(events, kept, rows, shreds)
            if planned:
                registered.append("_sluice_new_keys")
                conn.register("_sluice_new_keys", pa.table({"k": pa.array([keys[n] for n in planned], pa.string())}))
                script.append(f"INSERT INTO {KEYS_TABLE} SELECT {_KEY.format('k')} FROM _sluice_new_keys")
            for number, (table, (schema, plan)) in enumerate(plans.items()):
                name = f"_sluice_batch_{number}"
                registered.append(name)
                script.append(self._insert(conn, name, table, schema, plan, loaded_at))
                # users: one row a user, the newest traits (the upsert); rows.users counts the identifies
                # merged into it, so that it does not depend on how the run cut its batches
                result.rows[table] += users if table == "users" else plan.rows
                result.type_conflicts[table] += plan.type_conflicts
                result.capped[table] += plan.capped
            candidates = [(n, i, shreds[i]) for n, i in enumerate(kept) if shreds[i] is not None]
            if candidates:
                registered.append(shred.SOURCE)
                conn.register(shred.SOURCE, shred.arrow_table([c for _, _, c in candidates],
                                                              [keys[n] for n, _, _ in candidates]))
                shredding = Shredding([(i, c) for _, i, c in candidates], loaded_at, structures)
        except BaseException:
            self._unregister(registered)
            raise
        return PreparedWrite(events, rows, result, tuple(script), tuple(registered), shredding)

    def _plan_in_order(self, events, kept, rows, shreds) -> tuple:
        """(positions in `kept` of the events Python plans, {table: (schema, TablePlan)} of their rows
        with the schema changes committed, the identifies merged into `users`). A table whose schema
        these plans change takes the shreddable events bound for it into the plan too, in the batch's
        order (their rows made now, their `shreds` entry cleared), so that the first value still
        decides a new column's type and name: the bulk path then only writes tables the batch's plans
        leave as they were, and the events it leaves, planned after, change no table planned here."""
        while True:
            planned = [n for n, i in enumerate(kept) if shreds[i] is None]
            plans, users = self._plan([rows[kept[n]] for n in planned])
            changed = {table for table, (_, plan) in plans.items()
                       if table not in self._db.schemas or plan.new_columns or plan.widened}
            moved = [i for i in kept if shreds[i] is not None and changed & set(shred.targets(shreds[i].kind,
                                                                                               shreds[i].table))]
            if not moved:
                break
            for i in moved:
                rows[i] = layout.event_rows(events[i], self.flatten_depth, self._exposures)
                shreds[i] = None
        for table, (schema, plan) in plans.items():
            self._evolve(table, schema, plan)
        return planned, plans, users

    def _plan(self, python_rows) -> tuple:
        """({table: (schema, TablePlan)} of `python_rows` planned on copies of the tables' schemas;
        the number of identifies merged into `users`)."""
        plans = {}
        users = 0
        for table, table_rows in _by_table(python_rows).items():
            schema = (self._db.schemas.get(table) or planner.TableSchema(table)).copy()
            schema.declare(planner.declared_for(self.declared_types, table))
            if table == "users":
                users = len(table_rows)  # identifies applied, counted as BigQuery's appends are
                table_rows = planner.collapse_by_key(table_rows)
            plans[table] = schema, planner.plan_rows(schema, table_rows, self.max_columns, self.max_new_columns)
        return plans, users

    def _bulk_statements(self, shredding, result) -> list:
        """The INSERTs of the groups of `shredding`'s events (one type, one track name) whose fields
        all have columns that take them, read from the batch's structure, with their keys; the
        other groups' events go to shredding.left."""
        groups = shredding.structures() if shredding.structures is not None else None
        if groups is None:
            found = _structure_rows(self._db.conn, len(shredding.candidates))
            groups = shred.merge_groups([found]) if found is not None else {}  # out of memory: all in Python
        # Read ahead, the structures may hold events that are not candidates (duplicates, events the batch's
        # Python plans took): more fields or types than the group has, which only takes it less often in bulk
        counts = Counter(shred.group(c) for _, c in shredding.candidates)
        accepted = {}
        for group, (structure, integrations) in groups.items():
            if not counts[group]:
                continue
            inserts = shred.inserts(group, structure, counts[group], integrations > 0, self._db.schemas,
                                    self.flatten_depth, shredding.loaded_at, shred.SOURCE)
            if inserts is not None:
                accepted[group] = inserts
        waiting = set()  # tables a group planned after the commit may widen: nothing goes there in bulk
        while True:
            waiting |= {t for g, (structure, _) in groups.items() if g not in accepted and counts[g]
                        for t in shred.widening(g, structure, self._db.schemas, self.flatten_depth)}
            held = [g for g, inserts in accepted.items() if any(i.table in waiting for i in inserts)]
            if not held:
                break
            for group in held:
                del accepted[group]
        statements, written = [], []
        for group, inserts in accepted.items():
            written.append(group)
            result.shredded += counts[group]
            for insert in inserts:
                statements.append(insert.sql)
                result.rows[insert.table] += insert.rows
                if insert.conflicts:
                    result.type_conflicts[insert.table] += self._db.conn.execute(insert.conflicts).fetchone()[0]
        if written:
            statements.insert(0, f"INSERT INTO {KEYS_TABLE} SELECT {_KEY.format('k')} FROM {shred.SOURCE} "
                                 f"WHERE grp IN ({', '.join(literal(g) for g in written)})")
        written = set(written)
        shredding.left = [i for i, c in shredding.candidates if shred.group(c) not in written]
        return statements

    def _split_duplicates(self, events, rows, shreds, result) -> tuple:
        """(the indices of events whose primary row is new, their keys); the rest are duplicates
        of stored events."""
        primaries = [f"{rows[i][0].table}:{rows[i][0].key}" if shreddable is None
                     else f"{layout.PRIMARY_TABLE[shreddable.kind]}:{events[i].body['messageId']}"
                     for i, shreddable in enumerate(shreds)]
        with _registered(self._db.conn, "_sluice_batch_keys", pa.table({"k": pa.array(primaries, pa.string())})):
            existing = {r[0] for r in self._db.conn.execute(
                f"SELECT b.k FROM _sluice_batch_keys b JOIN {KEYS_TABLE} s ON s.key = {_KEY.format('b.k')}").fetchall()}
        kept, seen = [], {}
        for i, (event, primary) in enumerate(zip(events, primaries)):
            if primary in existing or primary in seen:
                result.duplicates.append(event)
                continue
            seen[primary] = True
            kept.append(i)
            result.stored.append(event)
        return kept, list(seen)

    def _evolve(self, table, schema, plan):
        """Commit `plan`'s schema changes to `table`, and then take `schema` as the table's. On
        failure the table's schema is read back from what was committed."""
        try:
            if table not in self._db.schemas:
                self._create(table, list(planner.fixed_columns(table)) + plan.new_columns)
            else:
                for name in plan.widened:
                    self._widen(table, name)
                for start in range(0, len(plan.new_columns), _COLUMNS_PER_TRANSACTION):
                    self._add_columns(table, plan.new_columns[start:start + _COLUMNS_PER_TRANSACTION])
        except BaseException:
            refused = self._db.schemas[table].no_widen if table in self._db.schemas else set()
            self._db.schemas.pop(table, None)
            self._db.schemas.update(self._registered_schemas(table))
            if table in self._db.schemas:  # what the backend refused to widen stays refused
                self._db.schemas[table].no_widen |= refused
            raise
        self._db.schemas[table] = schema

    def _create(self, table, columns):
        key = planner.key_column(table) if table == "users" else None  # users are upserted by id
        spec = ", ".join(f"{quote(c.name)} {SQL_TYPES[c.type]}" + (" PRIMARY KEY" if c.name == key else "")
                         for c in columns)
        with self._transaction() as conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {quote(table)} ({spec})")
            self._register_columns(table, columns)

    def _widen(self, table, name):
        conn = self._db.conn
        over = conn.execute(f"SELECT count(*) FROM {quote(table)} WHERE abs({quote(name)}) > {planner.EXACT_FLOAT}"
                            ).fetchone()[0]
        if over:  # existing integers would lose digits as doubles: keep the column INT64
            self._db.schemas[table].no_widen.add(name)
            raise _Replan()
        with self._transaction() as conn:
            conn.execute(f"ALTER TABLE {quote(table)} ALTER COLUMN {quote(name)} TYPE DOUBLE")
            conn.execute(f"UPDATE {COLUMNS_TABLE} SET column_type = ? WHERE table_name = ? AND column_name = ?",
                         [planner.FLOAT64, table, name])

    def _add_columns(self, table, columns):
        with self._transaction() as conn:
            for column in columns:
                conn.execute(f"ALTER TABLE {quote(table)} ADD COLUMN {quote(column.name)} {SQL_TYPES[column.type]}")
            self._register_columns(table, columns)

    @contextmanager
    def _transaction(self):
        conn = self._db.conn
        conn.execute("BEGIN TRANSACTION")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _register_columns(self, table, columns):
        if columns:
            now = datetime.now(timezone.utc)
            self._db.conn.executemany(f"INSERT INTO {COLUMNS_TABLE} VALUES (?, ?, ?, ?, ?)",
                                      [[table, c.name, c.type, c.source, now] for c in columns])

    def _registered_schemas(self, table=None) -> dict:
        """{table: TableSchema} as `_sluice_columns` records them (of one table, or all)."""
        registered = defaultdict(list)
        where, args = ("WHERE table_name = ?", [table]) if table else ("", [])
        for name, column, kind, source in self._db.conn.execute(
                f"SELECT table_name, column_name, column_type, source FROM {COLUMNS_TABLE} {where} "
                "ORDER BY added_at, column_name", args).fetchall():
            registered[name].append(planner.Column(column, kind, source))
        return {t: planner.TableSchema(t, columns) for t, columns in registered.items()}

    @staticmethod
    def _insert(conn, name, table, schema, plan, loaded_at: str) -> str:
        """The planned columns registered as `name`, one Arrow table (columns without a value left
        out), and the statement that inserts them."""
        arrays = {column: pa.array(values, ARROW_TYPES[schema.columns[column].type])
                  for column, values in plan.columns.items()}
        conn.register(name, pa.table(arrays))
        # Times and JSON travel as strings; cast them here so every expression sees column types.
        casts = ", ".join(f"CAST({quote(n)} AS {SQL_TYPES[schema.columns[n].type]}) AS {quote(n)}"
                          for n in arrays if schema.columns[n].type in (planner.TIMESTAMP, planner.JSON))
        select = f"SELECT * {f'REPLACE ({casts})' if casts else ''}, {loaded_at} AS loaded_at FROM {name}"
        if table != "users":
            return f"INSERT INTO {quote(table)} BY NAME {select}"
        # Newer identifies win column by column; older ones only fill columns still empty.
        sets = ["timestamp = GREATEST(EXCLUDED.timestamp, users.timestamp)", "loaded_at = EXCLUDED.loaded_at"]
        for column in arrays:
            if column in ("id", "timestamp", "loaded_at"):
                continue
            col = quote(column)
            sets.append(f"{col} = CASE WHEN EXCLUDED.timestamp >= users.timestamp "
                        f"THEN COALESCE(EXCLUDED.{col}, users.{col}) ELSE COALESCE(users.{col}, EXCLUDED.{col}) END")
        return f"INSERT INTO users BY NAME {select} ON CONFLICT (id) DO UPDATE SET {', '.join(sets)}"

    # -- dead letters ------------------------------------------------------------------
    def ensure_dead_letters(self) -> None:
        """`_dead_letters` exists, empty until something fails (a monitoring query on it works
        from the first run; its primary key keeps one row per dead letter), and so do `_replays`
        and `_dead_letters_view`, each original failure once with its latest state. Done when the
        file is opened."""
        columns = ", ".join(f"{quote(n)} {SQL_TYPES[t]}" + (" PRIMARY KEY" if n == "dead_letter_id" else "")
                            for n, t in DEAD_LETTER_COLUMNS)
        with self._db.lock:
            self._db.conn.execute(f"CREATE TABLE IF NOT EXISTS {DEAD_LETTER_TABLE} ({columns})")
            self._ensure_replays()
            self._db.conn.execute(f"CREATE OR REPLACE VIEW {replays.STATES_VIEW} AS " + replays.states_view_sql(
                DEAD_LETTER_TABLE, replays.REPLAYS_TABLE, "json_extract_string"))

    def select_dead_letters(self, selection) -> list:
        """Dead-letter records (dicts, times as ISO strings) a replay selection names."""
        with self._db.lock:
            if not self._has(DEAD_LETTER_TABLE):  # a read-only open of a file no run has written
                return []
            where, params = selection.where(replays_table=self._ensure_replays())
            sql = f"SELECT * FROM {DEAD_LETTER_TABLE} WHERE " + where.replace("IN UNNEST(@error_types)",
                                                                               "IN (SELECT unnest(@error_types))")
            cursor = self._db.conn.execute(sql.replace("@", "$"), {name: value for name, (_, value) in params.items()})
            names = [d[0] for d in cursor.description]
            found = [dict(zip(names, row)) for row in cursor.fetchall()]
        return [replays.as_record(r) for r in found if selection.keeps_source(r["source"])]

    def record_replays(self, ids: list, run: str) -> int:
        """Remember that these dead letters were replayed (by run `run`)."""
        if not ids:
            return 0
        table = pa.table({"dead_letter_id": pa.array(ids, pa.string()),
                          "replayed_at": pa.array([datetime.now(timezone.utc)] * len(ids), pa.timestamp("us", "UTC")),
                          "replay_run": pa.array([run] * len(ids), pa.string())})
        with self._db.lock:
            self._ensure_replays()
            with _registered(self._db.conn, "_sluice_replays", table):
                return self._db.conn.execute(f"INSERT OR IGNORE INTO {replays.REPLAYS_TABLE} BY NAME "
                                             "SELECT * FROM _sluice_replays").fetchone()[0]

    def replayed(self, ids: list) -> set:
        """Which of these dead letters were replayed already."""
        if not ids:
            return set()
        with self._db.lock:
            if not self._ensure_replays():
                return set()
            rows = self._db.conn.execute(f"SELECT dead_letter_id FROM {replays.REPLAYS_TABLE} "
                                         "WHERE dead_letter_id IN (SELECT unnest($ids))", {"ids": list(ids)}).fetchall()
        return {row[0] for row in rows}

    def _ensure_replays(self) -> bool:
        """`_replays` exists (created unless read-only); whether it does."""
        if self.read_only:
            return self._has(replays.REPLAYS_TABLE)
        self._db.conn.execute(f"CREATE TABLE IF NOT EXISTS {replays.REPLAYS_TABLE} (dead_letter_id VARCHAR PRIMARY KEY, "
                              "replayed_at TIMESTAMPTZ, replay_run VARCHAR)")
        return True

    def _has(self, table: str) -> bool:
        return bool(self._db.conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?",
                                          [table]).fetchone()[0])

    # The replay lease (transforms.warehouse.replays): across processes DuckDB lets one process
    # write the file anyway; within one, the shared lock makes each statement a clean swap.
    def take_replay_lease(self, run: str, holder: str, selection: str, seconds: int):
        """Take the warehouse's replay lease for `seconds`: None when taken, else the Lease of
        the live replay that holds it."""
        with self._db.lock:
            self._lease_execute(replays.SEED_LEASE)
            if self._lease_execute(replays.TAKE_LEASE, run=run, holder=holder, selection=selection,
                                   seconds=int(seconds)).fetchone()[0]:
                return None
            return self.replay_lease_holder()

    def renew_replay_lease(self, run: str, seconds: int) -> bool:
        """Move the lease's expiry `seconds` from now; False when `run` no longer holds it."""
        with self._db.lock:
            return bool(self._lease_execute(replays.RENEW_LEASE, run=run, seconds=int(seconds)).fetchone()[0])

    def release_replay_lease(self, run: str) -> None:
        """Give the lease up, if `run` still holds it (an expired one may be someone else's now)."""
        with self._db.lock:
            self._lease_execute(replays.RELEASE_LEASE, run=run)

    def replay_lease_holder(self):
        """The Lease of the live replay holding the lease, or None."""
        with self._db.lock:
            cursor = self._lease_execute(replays.HOLDER)
            names = [d[0] for d in cursor.description]
            rows = [dict(zip(names, row)) for row in cursor.fetchall()]
        return replays.Lease.from_row(rows[0]) if rows else None

    def _lease_execute(self, template: str, **params):
        self._db.conn.execute(f"CREATE TABLE IF NOT EXISTS {replays.LEASES_TABLE} (lease_key VARCHAR PRIMARY KEY, "
                              "run VARCHAR, holder VARCHAR, selection VARCHAR, started_at TIMESTAMPTZ, "
                              "expires_at TIMESTAMPTZ)")
        sql = template.format(table=replays.LEASES_TABLE, now="now()", expires="now() + to_seconds(@seconds)")
        return self._db.conn.execute(sql.replace("@", "$"), {"key": replays.LEASE_KEY, **params})

    def write_dead_letters(self, records: list) -> int:
        """Insert dead-letter records; the same dead letter read twice is stored once."""
        return self._insert_records(DEAD_LETTER_TABLE, DEAD_LETTER_COLUMNS, records)

    # -- forwarding's outcomes ---------------------------------------------------------
    def ensure_deliveries(self) -> None:
        """`_deliveries` exists (with the file, as `_dead_letters` does): "did event X reach
        destination Y" can be asked of any warehouse. Its primary key keeps one row per
        delivery_id (a rewritten outcome); a row per forwarded batch keeps its index small."""
        columns = ", ".join(f"{quote(n)} {SQL_TYPES[t]}" + (" PRIMARY KEY" if n == "delivery_id" else "")
                            for n, t in planner.DELIVERY_COLUMNS)
        with self._db.lock:
            self._db.conn.execute(f"CREATE TABLE IF NOT EXISTS {DELIVERIES_TABLE} ({columns})")

    def write_deliveries(self, records: list) -> int:
        """Insert forwarding's outcome rows (transforms.destinations.deliveries); one written
        twice is stored once."""
        return self._insert_records(DELIVERIES_TABLE, planner.DELIVERY_COLUMNS, records)

    def _insert_records(self, table: str, columns, records: list) -> int:
        """Rows of a fixed layout (dicts), as one Arrow table; rows whose key is stored already
        are left out (INSERT OR IGNORE on the primary key)."""
        loaded_at = datetime.now(timezone.utc)
        arrays = {}
        for name, kind in columns:
            if name == "loaded_at":
                values = [format_time(loaded_at)] * len(records)
            elif kind == planner.JSON:
                values = [planner.fit(planner.JSON, r.get(name)) for r in records]
            elif kind == planner.TIMESTAMP:
                values = [_time_or_none(r.get(name)) for r in records]
            else:
                values = [r.get(name) for r in records]
            arrays[name] = pa.array(values, ARROW_TYPES[kind])
        with self._db.lock:
            conn = self._db.conn
            with _registered(conn, "_sluice_records", pa.table(arrays)):
                return conn.execute(f"INSERT OR IGNORE INTO {table} BY NAME "
                                    "SELECT * FROM _sluice_records").fetchone()[0]
