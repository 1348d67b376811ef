"""The debugger's memory: the last entries of each source, bounded whatever the rate.

Bounds, each counted (stats()) rather than trusted:
- per source, a ring of at most `max_events_per_source` entries (oldest evicted first), and one
  more ring for refused requests that name no known source (a wrong write key);
- per source, at most `max_events_per_second` entries kept, sustained (a token bucket holding
  `max_events_per_source`, so a test suite's burst of a few hundred events is kept whole): the
  events past it are counted as `skipped` and never inspected, which also bounds the time the
  contract checks take (collector.debugger.inspect);
- each entry's payload is its JSON as bytes, at most `max_payload_bytes`: a larger event keeps
  a cut preview (a string) with `payload_truncated`; a refused request keeps at most a short
  preview with the write key removed (collector.debugger.inspect.preview);
- at most MAX_VIOLATIONS contract violations an entry (collector.debugger.inspect).

So memory is at most (sources + 1) x max_events_per_source x (max_payload_bytes + an entry's
fixed part) however fast events come: 500 entries of 16 KiB are 8 MiB a source at most.

Entries are keyed by message_id too, so a load's outcomes (collector.debugger.fates) can
update them. Thread-safe: entries are added on the event loop, fates come from the loader's
thread; listeners (the page's stream) are called with each change, under no lock of theirs.
"""
import heapq
import itertools
import threading
import time
from collections import deque

import orjson

from collector.debugger.settings import DebuggerSettings

UNKNOWN_SOURCE = "(unknown)"   # refusals that name no source this collector knows
MAX_VIOLATIONS = 50
STATUSES = ("pending", "stored", "dead_lettered", "dropped", "refused")


def pending_fate() -> dict:
    return {"status": "pending", "table": None, "error_type": None, "error_message": None, "policy": None,
            "destinations": {}}


class Entry:
    """One event as the debugger shows it (or one refused request). `payload` is JSON bytes, or
    a str preview when cut or refused; `as_json` is DESIGN.md's entry shape."""
    __slots__ = ("id", "received_at", "source", "type", "event", "user_id", "anonymous_id", "message_id",
                 "bytes", "payload", "payload_truncated", "http_status", "reason", "contract", "fate",
                 "timestamp")

    def __init__(self, received_at: str, source: str, payload, size: int, http_status: int = 200, *,
                 type=None, event=None, user_id=None, anonymous_id=None, message_id=None, truncated=False,
                 reason=None, contract=None, fate=None, timestamp=None):
        self.id = 0   # set by the store, in arrival order
        self.received_at, self.source, self.payload, self.bytes = received_at, source, payload, size
        self.http_status, self.type, self.event = http_status, type, event
        self.user_id, self.anonymous_id, self.message_id = user_id, anonymous_id, message_id
        self.payload_truncated, self.reason, self.contract = truncated, reason, contract
        self.fate = fate or pending_fate()
        self.timestamp = timestamp   # the normalized event's `timestamp` (ISO): its warehouse partition

    def kept_bytes(self) -> int:
        return len(self.payload) if self.payload is not None else 0

    def as_json(self) -> dict:
        payload = self.payload
        return {"id": self.id, "received_at": self.received_at, "source": self.source, "type": self.type,
                "event": self.event, "user_id": self.user_id, "anonymous_id": self.anonymous_id,
                "message_id": self.message_id, "bytes": self.bytes,
                "payload": orjson.Fragment(payload) if type(payload) is bytes else payload,
                "payload_truncated": self.payload_truncated, "http_status": self.http_status,
                "reason": self.reason, "contract": self.contract, "fate": self.fate}

    def text(self) -> bytes:
        """What free-text search looks in: the payload, and a refusal's reason."""
        payload = self.payload if type(self.payload) is bytes else (self.payload or "").encode()
        if self.reason:
            payload += b" " + orjson.dumps(self.reason)
        return payload


class _Bucket:
    """Entries a source may still keep now: refilled at `rate` a second, holding at most `burst`."""
    __slots__ = ("tokens", "at")

    def __init__(self, burst: float, now: float):
        self.tokens, self.at = burst, now


class Store:
    def __init__(self, settings: DebuggerSettings = DebuggerSettings(), clock=time.monotonic):
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._rings = {}        # source -> deque of Entry, oldest first
        self._by_message = {}   # message_id -> [Entry, ...] (usually one; a resend adds one)
        self._buckets = {}      # source -> _Bucket
        self._skipped = {}      # source -> events not kept (rate)
        self._received = {}     # source -> events seen (kept or not)
        self._payload_bytes = 0
        self._last_id = 0
        self.pending_entries = 0  # entries whose fate is pending: none, and a load need not be read
        self.listeners = []     # callables (kind, data): "entry" / "fate" with an entry's JSON, "reset" with None

    # -- sampling ----------------------------------------------------------------------------
    def admit(self, source: str, events: int) -> int:
        """How many of `events` just received for `source` may be kept; the rest are counted as
        skipped. Called before anything is inspected, so skipped events cost nothing more."""
        settings = self.settings
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(source)
            burst = float(settings.max_events_per_source)
            if bucket is None:
                bucket = self._buckets[source] = _Bucket(burst, now)
            else:
                bucket.tokens = min(burst, bucket.tokens + (now - bucket.at) * settings.max_events_per_second)
                bucket.at = now
            kept = min(events, int(bucket.tokens))
            self._received[source] = self._received.get(source, 0) + events
            bucket.tokens -= kept
            if kept < events:
                self._skipped[source] = self._skipped.get(source, 0) + events - kept
        return kept

    # -- entries -----------------------------------------------------------------------------
    def add(self, entry: Entry) -> Entry:
        limit = self.settings.max_events_per_source
        with self._lock:
            entry.id = self._last_id = next(self._ids)
            ring = self._rings.get(entry.source)
            if ring is None:
                ring = self._rings[entry.source] = deque()
            while len(ring) >= limit:
                self._forget(ring.popleft())
            ring.append(entry)
            self._payload_bytes += entry.kept_bytes()
            self.pending_entries += entry.fate["status"] == "pending"
            if entry.message_id is not None:
                self._by_message.setdefault(entry.message_id, []).append(entry)
        self._tell("entry", entry)
        return entry

    def _forget(self, entry: Entry) -> None:
        self._payload_bytes -= entry.kept_bytes()
        self.pending_entries -= entry.fate["status"] == "pending"
        if entry.message_id is not None:
            same = self._by_message.get(entry.message_id)
            if same is not None:
                same[:] = [e for e in same if e is not entry]
                if not same:
                    del self._by_message[entry.message_id]

    def pending(self, message_ids, after: int = 0) -> dict:
        """{message_id: (type, event name)} of those of `message_ids` whose entries still wait for a
        fate (only entries added after entry id `after`, when given)."""
        with self._lock:
            found = {}
            for message_id in message_ids:
                for entry in self._by_message.get(message_id, ()):
                    if entry.fate["status"] == "pending" and entry.id > after:
                        found[message_id] = (entry.type, entry.event)
            return found

    def last_id(self) -> int:
        """The id of the newest entry added so far (0: none)."""
        return self._last_id

    def pending_after(self, after: int) -> bool:
        """Whether an entry added after entry id `after` still waits for a fate."""
        with self._lock:
            return any(e.id > after and e.fate["status"] == "pending" for ring in self._rings.values() for e in ring)

    def waiting(self) -> list:
        """(message_id, type, event name, received_at, timestamp) of every pending entry with a
        message id, newest first (a warehouse lookup polling for them: collector.debugger.bigquery_fates)."""
        with self._lock:
            found = [(e.id, e.message_id, e.type, e.event, e.received_at, e.timestamp)
                     for ring in self._rings.values() for e in ring
                     if e.message_id is not None and e.fate["status"] == "pending"]
        found.sort(reverse=True)
        return [row[1:] for row in found]

    def entry(self, message_id: str):
        """The newest entry of a message id, or None."""
        with self._lock:
            same = self._by_message.get(message_id)
            return same[-1] if same else None

    def settle(self, fates: dict, one_stored: bool = False) -> int:
        """Set the fate of each message id's pending entries ({message_id: fate dict}); how many
        entries changed. one_stored: the warehouse keeps one row a message id (the embedded one's
        _sluice_message_keys), so of several sends settled `stored` at once only the oldest is
        the row; the others are its duplicates (stored, policy `duplicate`)."""
        changed = []
        with self._lock:
            for message_id, fate in fates.items():
                first = True
                for entry in self._by_message.get(message_id, ()):   # oldest first
                    if entry.fate["status"] == "pending":
                        entry.fate = fate if first or not one_stored or fate["status"] != "stored" else {
                            **fate, "policy": "duplicate"}
                        first = False
                        changed.append(entry)
                        self.pending_entries -= fate["status"] != "pending"
        for entry in changed:
            self._tell("fate", entry)
        return len(changed)

    def add_destinations(self, outcomes: dict) -> int:
        """Destination outcomes found after an entry was settled ({message_id: {destination:
        outcome}}: a streaming job may record a delivery after the event's row), merged into the
        fate of each message id's stored entries; how many entries changed."""
        changed = []
        with self._lock:
            for message_id, per in outcomes.items():
                for entry in self._by_message.get(message_id, ()):
                    known = entry.fate.get("destinations") or {}
                    merged = {d: {**known.get(d, {}), **o} for d, o in per.items()}   # a failure's error stays
                    if entry.fate["status"] == "stored" and any(known.get(d) != m for d, m in merged.items()):
                        entry.fate = {**entry.fate, "destinations": {**known, **merged}}
                        changed.append(entry)
        for entry in changed:
            self._tell("fate", entry)
        return len(changed)

    def reset(self) -> None:
        """Every entry and count gone (POST /debugger/api/reset, between a test suite's tests)."""
        with self._lock:
            self._rings, self._by_message, self._skipped, self._buckets, self._received = {}, {}, {}, {}, {}
            self._payload_bytes = self.pending_entries = 0
        self._tell("reset", None)

    # -- reading -----------------------------------------------------------------------------
    def query(self, source=None, type=None, event=None, status=None, q=None, limit: int = 100) -> list:
        """Entries newest first, each filter exact (q: a case-insensitive substring of the payload
        or of a refusal's reason)."""
        needle = q.lower().encode() if q else None
        with self._lock:
            rings = [self._rings.get(source, ())] if source else list(self._rings.values())
            candidates = [e for ring in rings for e in ring
                          if (type is None or e.type == type) and (event is None or e.event == event)
                          and (status is None or e.fate["status"] == status)]
        if needle is not None:   # outside the lock: the ingest path must not wait on a search
            candidates = [e for e in candidates if needle in e.text().lower()]
        return heapq.nlargest(limit, candidates, key=lambda e: e.id)

    def stats(self) -> dict:
        with self._lock:
            sources = {name: {"received": received, "entries": len(self._rings.get(name, ())),
                              "skipped": self._skipped.get(name, 0)} for name, received in self._received.items()}
            return {"entries": sum(len(r) for r in self._rings.values()), "payload_bytes": self._payload_bytes,
                    "received": sum(self._received.values()), "skipped": sum(self._skipped.values()),
                    "sources": sources,
                    "max_events_per_source": self.settings.max_events_per_source,
                    "max_events_per_second": self.settings.max_events_per_second,
                    "max_payload_bytes": self.settings.max_payload_bytes}

    def _tell(self, kind: str, entry) -> None:
        for listener in list(self.listeners):
            listener(kind, entry)
