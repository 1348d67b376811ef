"""What replay needs from a warehouse: the dead letters a selection names, and a record of
which were replayed (`_replays`), so no dead letter is replayed twice.

A selection: error types, a failed_at range, a source glob, and `before` (the replay's start:
dead letters written during the replay, such as a record failing again, are not part of it).
Dead letters already in `_replays` are never selected. Both backends share the SQL; the
source glob is applied in Python (BigQuery has no GLOB).

And the replay lease (`_replay_leases`): one replay at a time per warehouse, so two replays
started together cannot both select, and replay, the same dead letters. The lease is one row
(lease_key 'replay') naming its holder; taking it is one conditional UPDATE (a compare and
swap), renewing and releasing are UPDATEs guarded by the holder's run id. Times are the
warehouse's own clock (the SQL's `{now}`), so no client clock decides who holds it.
"""
import fnmatch
import json
from datetime import datetime
from typing import NamedTuple, Optional

from transforms.timeutil import format_time
from transforms.warehouse import planner

# A replayed message's attributes: the dead letter it replays, and the original failure that
# dead letter goes back to (itself, unless a replay made it), so a chain of failures stays one.
REPLAY_OF = "sluice_replay_of"
REPLAY_ORIGIN = "sluice_replay_origin"
STATES_VIEW = "_dead_letters_view"

REPLAYS_TABLE = "_replays"
REPLAYS_COLUMNS = (("dead_letter_id", planner.STRING), ("replayed_at", planner.TIMESTAMP),
                   ("replay_run", planner.STRING))


LEASES_TABLE = "_replay_leases"
LEASES_COLUMNS = (("lease_key", planner.STRING), ("run", planner.STRING), ("holder", planner.STRING),
                  ("selection", planner.STRING), ("started_at", planner.TIMESTAMP), ("expires_at", planner.TIMESTAMP))
LEASE_KEY = "replay"  # one lease per warehouse: overlap between selections is not worked out, any replay waits

# The lease SQL for both backends: `{table}` the table's reference, `{now}` the warehouse's
# current time, `{expires}` that plus @seconds; parameters @name (DuckDB's backend turns them into $name).
# Seeding is idempotent, but on BigQuery two concurrent INSERTs never conflict, so a first-ever
# pair of replays may seed two rows: harmless, because taking updates every row of the key and
# only when none of them names a live holder.
SEED_LEASE = ("INSERT INTO {table} (lease_key) SELECT @key FROM (SELECT 1) AS one "
              "WHERE NOT EXISTS (SELECT 1 FROM {table} WHERE lease_key = @key)")
_LIVE = "lease_key = @key AND run IS NOT NULL AND expires_at > {now}"
# The compare and swap. On BigQuery, concurrent UPDATEs of one table conflict: the later one is
# run again on the newer snapshot (by BigQuery, or by the backend) and then updates nothing.
TAKE_LEASE = ("UPDATE {table} SET run = @run, holder = @holder, selection = @selection, started_at = {now}, "
              "expires_at = {expires} WHERE lease_key = @key "
              "AND NOT EXISTS (SELECT 1 FROM {table} WHERE " + _LIVE + ")")
RENEW_LEASE = "UPDATE {table} SET expires_at = {expires} WHERE lease_key = @key AND run = @run"
RELEASE_LEASE = ("UPDATE {table} SET run = NULL, holder = NULL, selection = NULL, started_at = NULL, "
                 "expires_at = NULL WHERE lease_key = @key AND run = @run")
HOLDER = ("SELECT run, holder, selection, started_at, expires_at FROM {table} WHERE " + _LIVE
          + " ORDER BY started_at LIMIT 1")


class Lease(NamedTuple):
    """Who holds the replay lease: a run id, host/pid, its selection (JSON) and its times."""
    run: str
    holder: str
    selection: str
    started_at: str
    expires_at: str

    @classmethod
    def from_row(cls, row: dict) -> "Lease":
        return cls(*(format_time(row[name]) if isinstance(row[name], datetime) else row[name] for name in cls._fields))


class Selection(NamedTuple):
    before: str                        # ISO-8601: only dead letters that failed before this
    error_types: tuple = ()            # empty: every type
    since: Optional[str] = None        # failed_at >= since
    until: Optional[str] = None        # failed_at < until
    source: Optional[str] = None       # a glob on the dead letter's source, e.g. file:gs://b/2026-11-*

    def where(self, replays_table: bool = True) -> tuple:
        """(SQL conditions joined by AND with @name parameters, {name: (type, value)}).
        replays_table: False when `_replays` does not exist (a dry run creates nothing): none replayed."""
        conditions = ["failed_at < @before"]
        if replays_table:
            conditions.append(f"dead_letter_id NOT IN (SELECT dead_letter_id FROM {REPLAYS_TABLE})")
        params = {"before": ("TIMESTAMP", self.before)}
        if self.error_types:
            conditions.append("error_type IN UNNEST(@error_types)")
            params["error_types"] = ("ARRAY<STRING>", list(self.error_types))
        if self.since:
            conditions.append("failed_at >= @since")
            params["since"] = ("TIMESTAMP", self.since)
        if self.until:
            conditions.append("failed_at < @until")
            params["until"] = ("TIMESTAMP", self.until)
        return " AND ".join(conditions), params

    def keeps_source(self, source) -> bool:
        return self.source is None or fnmatch.fnmatchcase(source or "", self.source)

    def keeps(self, record: dict) -> bool:
        """A dead-letter file's record against the selection: where() in Python, for files
        (times canonical UTC strings, so they compare as text)."""
        failed_at = record.get("failed_at") or ""
        return ((not self.error_types or record.get("error_type") in self.error_types)
                and (self.since is None or failed_at >= self.since)
                and (self.until is None or failed_at < self.until)
                and failed_at < self.before and self.keeps_source(record.get("source")))


def as_record(row: dict) -> dict:
    """A _dead_letters row as the dead-letter record it was written from: JSON columns as
    objects (a backend may hand them back as strings), times in the canonical UTC form."""
    record = dict(row)
    for name in ("error_details", "attributes"):
        if isinstance(record.get(name), str):
            record[name] = json.loads(record[name])
    for name in ("received_at", "failed_at", "loaded_at"):
        if isinstance(record.get(name), datetime):
            record[name] = format_time(record[name])
    return record


def origin_of(record: dict) -> str:
    """The original failure a dead-letter record names (see REPLAY_ORIGIN). A record of a replay
    from before the attribute names only its parent, which may itself be a replay's failure: the
    record alone cannot tell, so _dead_letters_view follows the chain (states_view_sql)."""
    attributes = record.get("attributes") or {}
    return attributes.get(REPLAY_ORIGIN) or attributes.get(REPLAY_OF) or record["dead_letter_id"]


# How far _dead_letters_view follows a chain of parents: a guard only (ids are unique and a
# parent failed before its child, so chains end), against a hand-edited row naming itself.
MAX_CHAIN = 100


def states_view_sql(letters: str, replayed: str, json_string: str) -> str:
    """`_dead_letters_view`: each original failure once, with the latest state of what became of
    it, so that counting it does not count a failure again for each replay that failed: `state`
    'open' (never replayed), 'fixed' (its latest dead letter, itself or one a replay of it made,
    was replayed and nothing failed since) or 'failed_again' (a replay of it failed, and that
    dead letter waits), with `latest_dead_letter_id`, `latest_error_type` and `latest_failed_at`.
    letters: the dead letters, one row each (BigQuery: its newest-row view's query); replayed:
    `_replays`; json_string: the dialect's function reading a JSON string (JSON_VALUE, DuckDB's
    json_extract_string).

    A dead letter's original failure: the one its attributes name (REPLAY_ORIGIN, else
    REPLAY_OF), followed up while that one is a row here naming one in turn (a replay from
    before REPLAY_ORIGIN names only its parent: D1 -> D2 -> D3 reaches D1 from D3). The row
    shown is the original's own, or, when it is not here (a replay from --dead_letter_files of
    an export), the family's earliest."""
    up = f"COALESCE({json_string}(attributes, '$.{REPLAY_ORIGIN}'), {json_string}(attributes, '$.{REPLAY_OF}'))"
    columns = ", ".join(f"o.{name}" for name, _ in planner.DEAD_LETTER_COLUMNS)
    return ("WITH RECURSIVE "
            f"letter AS (SELECT *, {up} AS up FROM {letters}), "
            "chain AS (SELECT dead_letter_id, dead_letter_id AS reached, 0 AS depth FROM letter UNION ALL "
            "SELECT c.dead_letter_id, l.up, c.depth + 1 FROM chain AS c "
            "JOIN letter AS l ON l.dead_letter_id = c.reached "
            f"WHERE l.up IS NOT NULL AND c.depth < {MAX_CHAIN}), "
            "origin AS (SELECT dead_letter_id, reached AS origin_id FROM (SELECT *, ROW_NUMBER() OVER "
            "(PARTITION BY dead_letter_id ORDER BY depth DESC) AS n FROM chain) AS ranked WHERE n = 1), "
            "family AS (SELECT l.*, g.origin_id FROM letter AS l "
            "JOIN origin AS g ON g.dead_letter_id = l.dead_letter_id), "
            "latest AS (SELECT origin_id, dead_letter_id, error_type, failed_at, ROW_NUMBER() OVER "
            "(PARTITION BY origin_id ORDER BY failed_at DESC, dead_letter_id DESC) AS n FROM family), "
            "shown AS (SELECT *, ROW_NUMBER() OVER (PARTITION BY origin_id ORDER BY CASE WHEN dead_letter_id = "
            "origin_id THEN 0 ELSE 1 END, failed_at, dead_letter_id) AS n FROM family) "
            f"SELECT {columns}, CASE WHEN p.dead_letter_id IS NOT NULL THEN 'fixed' "
            "WHEN l.dead_letter_id = l.origin_id THEN 'open' ELSE 'failed_again' END AS state, "
            "l.dead_letter_id AS latest_dead_letter_id, l.error_type AS latest_error_type, "
            "l.failed_at AS latest_failed_at "
            "FROM shown AS o JOIN latest AS l ON l.origin_id = o.origin_id AND l.n = 1 "
            f"LEFT JOIN (SELECT DISTINCT dead_letter_id FROM {replayed}) AS p ON p.dead_letter_id = l.dead_letter_id "
            "WHERE o.n = 1")
