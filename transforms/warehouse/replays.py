"""What replay needs from a warehouse: the dead letters a selection names, and a record of
which were replayed (`_replays`), so no dead letter is replayed twice.

A selection: error types, a failed_at range, a source glob, and `before` (the replay's start:
dead letters written during the replay, such as a record failing again, are not part of it).
Dead letters already in `_replays` are never selected. Both backends share the SQL; the
source glob is applied in Python (BigQuery has no GLOB).
"""
import fnmatch
import json
from datetime import datetime
from typing import NamedTuple, Optional

from transforms.timeutil import format_time
from transforms.warehouse import planner

REPLAYS_TABLE = "_replays"
REPLAYS_COLUMNS = (("dead_letter_id", planner.STRING), ("replayed_at", planner.TIMESTAMP),
                   ("replay_run", planner.STRING))


class Selection(NamedTuple):
    before: str                        # ISO-8601: only dead letters that failed before this
    error_types: tuple = ()            # empty: every type
    since: Optional[str] = None        # failed_at >= since
    until: Optional[str] = None        # failed_at < until
    source: Optional[str] = None       # a glob on the dead letter's source, e.g. file:gs://b/2026-11-*

    def where(self) -> tuple:
        """(SQL conditions joined by AND with @name parameters, {name: (type, value)})."""
        conditions = ["failed_at < @before",
                      f"dead_letter_id NOT IN (SELECT dead_letter_id FROM {REPLAYS_TABLE})"]
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
