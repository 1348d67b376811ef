"""Fates of the debugger's pending events, looked up in the embedded warehouse after each load.

The embedded loader (collector.embedded) calls `Fates.loaded(files, summary)` after each
successful run, on its own thread, with the spool files the run read. The message ids those
files hold whose entries still wait are looked up through a cursor of the loader's own DuckDB
connection, in what the run wrote:

- stored: the event's primary row (tracks, identifies, pages, screens, groups, aliases: where
  the warehouse itself decides "already stored"), written by this run; the table shown is the
  event's own (for a track event, the `event` column of tracks: its table after any rule);
- dead_lettered: a `_dead_letters` row of this run for the message id without a destination
  (error_type and message as stored);
- per destination: `_deliveries` rows of this run naming the message id (status, http_status,
  attempts, latency_ms), and dead letters of this run that name a destination (failed);
- stored, policy `duplicate`: not written by this run, but its primary row's key is in
  `_sluice_message_keys` (an earlier send of the same message id was stored); and of several
  sends of one message id found stored by one run, all but the oldest (Store.settle one_stored);
- dropped: in the files the run read, and none of the above. Beam's counters say how many each
  policy dropped, not which events: the policy shown is the one the run's summary names when
  it names one. When several policies dropped events in one run, the entry's payload is put
  through the pure policies again, in the pipeline's order (`DropReplay`: consent's route,
  the config's rules); what that names is shown when the summary names it too, else the
  summary's policies joined ("consent or filtered:bots"): a UDF is not run again here, and a
  cut payload cannot be. A per-event record of drops needs the stages to say it (docs/debugger.md).

"This run" is `loaded_at` after the previous run's call (runs follow each other on the loader's
thread; for the first, after its files' last write less a margin), so each query reads only the
newest row groups (DuckDB skips the others by their min/max), not whole tables.
Against Pub/Sub, GCS or spool sinks (production) nothing calls this: with `debugger.warehouse`
set, collector.debugger.bigquery_fates polls the BigQuery tables the pipeline job writes, with
its own SQL and the same reading of the rows (stored, dead_letters, deliveries below).
"""
import logging
import os
from datetime import datetime, timedelta, timezone
from typing import Optional

import orjson

from collector.debugger.store import Store
from transforms.warehouse import layout, naming, planner

_LOG = logging.getLogger("sluice.collector.debugger")
_TYPE_OF = {"tracks": "track", "identifies": "identify", "pages": "page", "screens": "screen", "groups": "group",
            "aliases": "alias"}
# each event type's primary table, from the warehouse's own list (a table added there and not
# here fails at import, not silently)
PRIMARY = {_TYPE_OF[table]: table for table in layout.PRIMARY_TABLES}
DEAD_LETTERS = planner.DEAD_LETTER_TABLE
DELIVERIES = planner.DELIVERIES_TABLE
MARGIN = timedelta(seconds=5)           # clocks of one machine; a loaded_at is always after its file's write
_NOT_A_POLICY = ("duplicate", "empty_message", "empty_batch")   # drops that are not an event's fate here


def _message_id(value):
    if type(value) is str:
        return value or None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)   # as normalize reads a numeric id
    return None


def message_ids(files: list) -> set:
    """The message ids of the events in spool files (records the collector wrote)."""
    found = set()
    for path in files:
        with open(path, "rb") as handle:
            for line in handle:
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                batch = record.get("batch") if type(record) is dict else None
                for member in batch if type(batch) is list else ():
                    if type(member) is dict:
                        message_id = _message_id(member.get("messageId"))
                        if message_id:
                            found.add(message_id)
    return found


class DropReplay:
    """Which policy drops an event, by the pure policies the pipeline applies before storing:
    the Consent stage's route (no store and no destination: `consent`), then the Transform
    stage's rules (`filtered:<rule>`), then the UDF (not run here: `udf` when configured),
    then consent again (not stored: `consent`). None when none of them would."""

    def __init__(self, consent=None, transforms=None):
        from transforms.rules.engine import TransformRules
        self.consent = consent
        self.rules = TransformRules(list(transforms.rules)) if transforms is not None and transforms.rules else None
        self.udf = bool(transforms is not None and transforms.udf)

    def why(self, entry) -> Optional[str]:
        from collections import Counter

        from transforms.consent import route
        from transforms.messages import Rejection
        from transforms.normalize import normalize_event
        from transforms.rules.engine import Filtered
        if type(entry.payload) is not bytes:   # a cut payload: not the event any more
            return None
        body = normalize_event(orjson.loads(entry.payload), entry.received_at)
        if isinstance(body, Rejection):
            return None
        decision = route(body, self.consent) if self.consent is not None else None
        if isinstance(decision, Rejection):
            return None
        if decision is not None and not decision.store and not decision.destinations:
            return "consent"
        if self.rules is not None:
            result = self.rules.apply(body, entry.source, Counter())
            if isinstance(result, Filtered):
                return f"filtered:{result.rule}"
        if self.udf:
            return "udf"
        if decision is not None and not decision.store:
            return "consent"
        return None


class Fates:
    def __init__(self, store: Store, cursor, replay: Optional[DropReplay] = None):
        """cursor: () -> a DuckDB cursor of the warehouse (FileLoads.cursor), closed after use;
        replay: the config's policies, to tell drops apart when a run has several."""
        self.store, self._cursor, self._replay = store, cursor, replay
        self.lookups, self.settled = 0, 0
        self._previous = None   # when the previous run's call came: the loader's runs follow each other
        # the previous run: (files, since, summary, the store's last entry id when it was looked up).
        # The collector answers (and the spool may close the file, and a run load it) before the
        # debugger inspects what it accepted: an entry added after its run was looked up is looked
        # up again, in that run's rows, at the next run
        self._last_run = None

    def loaded(self, files: list, summary: dict) -> int:
        """Settle the entries of the events in `files`, just loaded, and of the previous run's
        events inspected after it was looked up; how many changed. Never raises: a failed lookup
        leaves them pending (logged)."""
        now, since = datetime.now(timezone.utc), self._previous
        self._previous = now
        changed = 0
        try:
            changed += self._late(self._last_run, files)
        except Exception:  # noqa: BLE001 - the debugger must never fail a load
            _LOG.warning("debugger: looking up the fates of late entries failed; they stay pending", exc_info=True)
        self._last_run = (list(files), since, summary, self.store.last_id())
        try:
            return changed + self._loaded(files, summary, since)
        except Exception:  # noqa: BLE001 - the debugger must never fail a load
            _LOG.warning("debugger: looking up the fates of a load failed; its events stay pending", exc_info=True)
            return changed

    def _late(self, run, now_loaded: list) -> int:
        """Entries of a run's events the debugger added after that run was looked up (not those
        of a send of the same id in the run just made: theirs is this run's fate)."""
        if run is None or not self.store.pending_entries:
            return 0
        files, since, summary, last_id = run
        if not self.store.pending_after(last_id):
            return 0
        files = [p for p in files if os.path.exists(p)]   # a retention may have removed them since
        ids = message_ids(files) - message_ids(now_loaded) if files else ()
        pending = self.store.pending(ids, after=last_id) if ids else {}
        if not pending:
            return 0
        return self._settle(pending, files, summary, since)

    def _loaded(self, files: list, summary: dict, since) -> int:
        if not self.store.pending_entries:   # nothing waits: the files need not be read again
            return 0
        pending = self.store.pending(message_ids(files))
        if not pending:
            return 0
        return self._settle(pending, files, summary, since)

    def _settle(self, pending: dict, files: list, summary: dict, since) -> int:
        if since is None:   # the first run: it started after its files were written
            since = datetime.fromtimestamp(min(os.stat(p).st_mtime for p in files), timezone.utc) - MARGIN
        cursor = self._cursor()
        try:
            fates = lookup(cursor, pending, since, summary)
        finally:
            cursor.close()
        self._name_drops(fates, summary)
        self.lookups += 1
        changed = self.store.settle(fates, one_stored=True)
        self.settled += changed
        return changed


    def _name_drops(self, fates: dict, summary: dict) -> None:
        """A dropped event's one policy, when the run's summary names several (DropReplay)."""
        policies = _policies(summary)
        if len(policies) < 2 or self._replay is None:
            return
        for message_id, fate in fates.items():
            if fate["status"] != "dropped":
                continue
            entry = self.store.entry(message_id)
            try:
                why = self._replay.why(entry) if entry is not None else None
            except Exception:  # noqa: BLE001 - the summary's list stays; logged
                _LOG.warning("debugger: could not tell which policy dropped an event", exc_info=True)
                why = None
            if why in policies:
                fate["policy"] = why


def _policies(summary: dict) -> list:
    return sorted(p for p, n in (summary.get("dropped") or {}).items() if n and p not in _NOT_A_POLICY)


def lookup(cursor, pending: dict, since: datetime, summary: dict) -> dict:
    """{message_id: fate} for every id of `pending` ({message_id: (type, event name)}). DuckDB's
    dialect of the lookup; what the rows mean is shared with BigQuery's (stored, dead_letters,
    deliveries below; collector.debugger.bigquery_fates)."""
    tables = {row[0] for row in cursor.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    ids = list(pending)
    fates, destinations = {}, {}
    for kind, table in PRIMARY.items():
        wanted = [m for m in ids if pending[m][0] == kind]
        if not wanted or table not in tables:
            continue
        column = ", event" if kind == "track" else ", NULL"
        stored(cursor.execute(f'SELECT message_id{column} FROM "{table}" WHERE loaded_at >= ? AND message_id IN '
                              f'(SELECT unnest(?::VARCHAR[]))', [since, wanted]).fetchall(), table, fates)
    if DEAD_LETTERS in tables:
        dead_letters(cursor.execute(
            f"SELECT message_id, error_type, error_message, destination FROM {DEAD_LETTERS} "
            f"WHERE loaded_at >= ? AND message_id IN (SELECT unnest(?::VARCHAR[]))", [since, ids]).fetchall(),
            fates, destinations)
    if DELIVERIES in tables:   # only the batches naming a pending id: a run may have forwarded thousands
        deliveries(cursor.execute(f"SELECT destination, status, http_status, attempts, latency_ms, message_ids "
                                  f"FROM {DELIVERIES} WHERE requested_at >= ? AND "
                                  f"list_has_any(message_ids, ?::VARCHAR[])", [since, ids]).fetchall(),
                   set(ids), destinations)
    left = [m for m in ids if m not in fates]
    # DuckDB's own dedupe keys (imported here: the BigQuery poller shares this module, not DuckDB),
    # asked only when the run dropped duplicates: otherwise none of `left` was one
    from transforms.warehouse.duckdb_backend import _KEY, KEYS_TABLE
    if left and KEYS_TABLE in tables and (summary.get("dropped") or {}).get("duplicate", 0) > 0:
        # the key of `<primary table>:<message_id>`, as duckdb_backend writes it
        keys = {f"{PRIMARY.get(pending[m][0], 'tracks')}:{m}": m for m in left}
        for (key,) in cursor.execute(
                f"SELECT k FROM (SELECT unnest(?::VARCHAR[]) AS k) WHERE {_KEY.format('k')} IN "
                f"(SELECT key FROM {KEYS_TABLE})", [list(keys)]).fetchall():
            message_id = keys[key]
            kind, event = pending[message_id]
            table = naming.table_name(event) if kind == "track" and event else PRIMARY.get(kind)
            fates[message_id] = _fate("stored", table=table, policy="duplicate")
    policies = _policies(summary)
    for message_id in ids:
        if message_id not in fates:
            fates[message_id] = _fate("dropped", policy=" or ".join(policies) or None)
        fates[message_id]["destinations"] = destinations.get(message_id, {})
    return fates


# -- what the rows mean, in either warehouse ----------------------------------------------------
def stored(rows, table: str, fates: dict) -> None:
    """(message_id, event table or None) rows of a primary table: each its event's `stored`
    fate, in the event's own table (a track's `event` column: its table after any rule)."""
    for message_id, name in rows:
        fates[message_id] = _fate("stored", table=name or table)


def dead_letters(rows, fates: dict, destinations: dict) -> None:
    """(message_id, error_type, error_message, destination) rows of `_dead_letters`: without a
    destination the event's `dead_lettered` fate (unless it was stored: a later failure of a
    secondary row), with one that destination's failure."""
    for message_id, error_type, error_message, destination in rows:
        if destination:
            destinations.setdefault(message_id, {})[destination] = {
                "status": "failed", "http_status": None, "attempts": None, "latency_ms": None,
                "error_type": error_type, "error_message": error_message}
        elif message_id not in fates:
            fates[message_id] = _fate("dead_lettered", error_type=error_type, error_message=error_message)


def deliveries(rows, ids: set, destinations: dict) -> None:
    """Per destination outcomes from `_deliveries` rows (destination, status, http_status,
    attempts, latency_ms, message_ids), one per batch sent; a failed batch's row beats nothing,
    a delivered one beats a failure (a retry that went through)."""
    for destination, status, http_status, attempts, latency_ms, members in rows:
        if isinstance(members, str):
            try:
                members = orjson.loads(members)
            except orjson.JSONDecodeError:
                continue
        for message_id in members or ():
            if message_id not in ids:
                continue
            per = destinations.setdefault(message_id, {})
            known = per.get(destination, {})
            if known.get("status") == "delivered":
                continue
            per[destination] = {**known, "status": status, "http_status": http_status, "attempts": attempts,
                                "latency_ms": latency_ms}   # a failure's dead letter keeps its error


def _fate(status: str, *, table=None, error_type=None, error_message=None, policy=None) -> dict:
    return {"status": status, "table": table, "error_type": error_type, "error_message": error_message,
            "policy": policy, "destinations": {}}
