"""Fates of the debugger's pending entries in --sink mode, looked up in BigQuery by message id.

In production the collector only writes (`--sink pubsub://...`, gs:// or a spool directory)
and a separate job (Dataflow, or a batch run over the files) writes the events into BigQuery.
With `debugger.warehouse: bigquery://PROJECT/DATASET`, a thread of the collector polls that
dataset every `poll_seconds` while entries are pending, so the event loop never waits on it:

- one query (a UNION ALL, one job) over the primary tables of the pending entries' types
  (tracks, identifies, pages, screens, groups, aliases: the tables the job writes an event's
  first row to, collector.debugger.fates.PRIMARY) and `_dead_letters`, with the ids as an
  array parameter (`message_id IN UNNEST(@ids_0)`). A primary table is partitioned by day on
  `timestamp`: each branch bounds it by the pending entries' own normalized timestamps
  (grouped so a branch spans at most a day or two: an old backfilled event does not widen
  the others' bound), so BigQuery reads the `message_id`, `timestamp` (and for tracks `event`)
  columns of those days' partitions only. `_dead_letters` is partitioned on `failed_at`, which
  is after the event arrived: bounded from the oldest pending arrival (less SKEW for clocks);
- for the ids that query found stored, and those stored earlier still in their window (a
  streaming job may record a delivery after the row), one query on `_deliveries` (partitioned
  on `requested_at`, bounded the same way), unnesting its `message_ids`;
- the rows are read as in embedded mode (fates.stored / dead_letters / deliveries): stored in
  the event's own table, dead-lettered with its error, each destination's outcome.

Polls query only while someone looks (a page open, or the API asked within `lookup_minutes`:
a collector nobody watches costs no query). An entry is looked up for `lookup_minutes` after it
arrived; past that it stays pending and costs nothing more (an event a policy dropped, or one
the job has not loaded: without the job's run, unlike embedded mode, they look the same). Each query carries
`maximum_bytes_billed`: one that would scan more fails unbilled. A failure (no credentials, a
quota, a query refused) is logged and counted (sluice_debugger_fate_lookup_failures_total), the
entries stay pending and the next poll tries again: the collector never notices.
"""
import logging
import threading
from datetime import datetime, timedelta, timezone

from collector.debugger import fates as shared

_LOG = logging.getLogger("sluice.collector.debugger")
MAX_IDS = 5000                  # newest pending entries per poll: parameters stay far below BigQuery's 1 MB query
SKEW = timedelta(minutes=5)     # the collector's clock against the job's workers' (failed_at, requested_at)
SPAN = timedelta(days=1)        # pending timestamps within this of each other share one branch (one or two partitions)
# Either side of a branch's timestamps. A streaming job takes Pub/Sub's publish time as receivedAt
# (not the collector's), which moves `timestamp` by the publish delay: seconds, more under retries.
# Pruning is by day, so the margin costs nothing but near midnight (the next day's partition).
MARGIN = timedelta(minutes=10)
QUERY_TIMEOUT = 60.0            # seconds a poll's query may take before it counts as failed
RETRY_DEADLINE = 10.0           # seconds an API call is retried (the next poll tries again anyway)
LOG_EVERY = 60                  # failures in a row between two log lines of a lasting failure


def parse_warehouse(url: str) -> tuple:
    """(project, dataset) of bigquery://PROJECT/DATASET (the config schema checked its form)."""
    project, _, dataset = url[len("bigquery://"):].partition("/")
    return project, dataset


def _time(text):
    """An ISO time as normalize writes it, or None (the caller falls back to the arrival)."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def spans(items: list) -> list:
    """[(first, last, [message_id, ...])]: (time, message_id) items grouped in time order, each
    group within SPAN of its first: one branch of the query, a bound that prunes to its days."""
    groups = []
    for at, message_id in sorted(items):
        if groups and at - groups[-1][0] <= SPAN:
            groups[-1][1] = at
            groups[-1][2].append(message_id)
        else:
            groups.append([at, at, [message_id]])
    return [tuple(g) for g in groups]


class BigQueryFates:
    def __init__(self, store, settings, watched=lambda: True, retry_deadline: float = RETRY_DEADLINE):
        """store: the debugger's Store; settings: its DebuggerSettings (warehouse, bigquery_endpoint,
        bigquery_location, poll_seconds, lookup_minutes, max_bytes_billed); watched: () -> whether
        anyone looks at the debugger now (Debugger.watched): when not, no poll queries."""
        self.store, self.settings, self.retry_deadline = store, settings, retry_deadline
        self.watched = watched
        self.project, self.dataset = parse_warehouse(settings.warehouse)
        self.lookups = self.failures = self.settled = self.bytes_processed = 0
        self._client = None
        self._known = set()     # tables seen to exist (they are never dropped by the job)
        self._stored = {}       # message_id -> arrival: settled as stored, their deliveries still asked for
        self._stop = threading.Event()
        self._thread = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> "BigQueryFates":
        self._thread = threading.Thread(target=self._run, name="sluice-debugger-fates", daemon=True)
        self._thread.start()
        _LOG.info("debugger: fates looked up in %s every %gs, for %g minutes after each event",
                  self.settings.warehouse, self.settings.poll_seconds, self.settings.lookup_minutes)
        return self

    def stop(self) -> None:
        """Ask the thread to end (a query under way is not waited for: the thread is a daemon)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _run(self) -> None:
        streak = 0
        while not self._stop.wait(self.settings.poll_seconds):
            if not self.watched():
                continue
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the collector must never notice; logged, counted
                self.failures += 1
                streak += 1
                self._known.clear()   # a table may have gone: look again
                if streak == 1 or streak % LOG_EVERY == 0:   # a lasting failure is not a line every poll
                    _LOG.warning("debugger: looking fates up in %s failed (%d in a row); the entries stay pending: "
                                 "%s", self.settings.warehouse, streak, exc, exc_info=streak == 1)
                continue
            if streak:
                _LOG.info("debugger: looking fates up in %s works again, after %d failures",
                          self.settings.warehouse, streak)
                streak = 0

    def _open(self):
        if self._client is None:
            from google.cloud.bigquery.retry import DEFAULT_JOB_RETRY, DEFAULT_RETRY

            from transforms.warehouse.bigquery_backend import bigquery_client
            self._retry = DEFAULT_RETRY.with_deadline(self.retry_deadline)
            self._job_retry = DEFAULT_JOB_RETRY.with_deadline(self.retry_deadline)
            self._client = bigquery_client(self.project, self.settings.bigquery_location,
                                           self.settings.bigquery_endpoint)
        return self._client

    # -- one poll ------------------------------------------------------------------------------
    def poll(self) -> int:
        """Look the pending entries up once, and the later deliveries of those stored within their
        window; how many entries changed. Raises when a query fails."""
        horizon = datetime.now(timezone.utc) - timedelta(minutes=self.settings.lookup_minutes)
        self._stored = {m: at for m, at in self._stored.items()   # in the window, and still shown
                        if at >= horizon and self.store.entry(m) is not None}
        pending = {}   # message_id -> (type, timestamp, arrival): the newest entry of an id decides
        for message_id, kind, _, received_at, timestamp in self.store.waiting():
            arrived = _time(received_at)
            if arrived is None or arrived < horizon or message_id in pending or kind not in shared.PRIMARY:
                continue
            pending[message_id] = (kind, _time(timestamp) or arrived, arrived)
            if len(pending) >= MAX_IDS:
                break
        if not pending and not self._stored:
            return 0
        client = self._open()
        fates, destinations, queried = {}, {}, False
        sql, params = self._events_query(client, pending) if pending else (None, None)
        if sql is not None:
            rows = list(self._query(client, sql, params))
            queried = True
            for table in shared.PRIMARY.values():
                shared.stored([(r["message_id"], r["name"]) for r in rows if r["found_in"] == table], table, fates)
            shared.dead_letters([(r["message_id"], r["error_type"], r["error_message"], r["destination"])
                                 for r in rows if r["found_in"] == shared.DEAD_LETTERS], fates, destinations)
        stored_now = {m: pending[m][2] for m, fate in fates.items() if fate["status"] == "stored"}
        # A streaming job may record a delivery after the event's row: stored entries are asked
        # for again while in their window (one query for them all, only once _deliveries exists).
        watch = {**self._stored, **stored_now}
        if watch and self._exists(client, shared.DELIVERIES):
            sql = (f"SELECT d.destination, d.status, d.http_status, d.attempts, d.latency_ms, m AS message_id "
                   f"FROM `{self._ref(shared.DELIVERIES)}` AS d, UNNEST(d.message_ids) AS m "
                   f"WHERE d.requested_at >= @since AND m IN UNNEST(@ids)")
            shared.deliveries([(r["destination"], r["status"], r["http_status"], r["attempts"], r["latency_ms"],
                                [r["message_id"]]) for r in self._query(client, sql, [
                                    _array("ids", sorted(watch)),
                                    _scalar("since", "TIMESTAMP", min(watch.values()) - SKEW)])],
                              set(watch), destinations)
            queried = True
        for message_id, fate in fates.items():
            fate["destinations"] = destinations.get(message_id, {})
        self.lookups += queried
        changed = self.store.settle(fates)   # only stored or dead-lettered: the rest stays pending
        self.settled += changed
        changed += self.store.add_destinations({m: destinations[m] for m in self._stored if m in destinations})
        self._stored.update(stored_now)
        return changed

    def _events_query(self, client, pending: dict) -> tuple:
        """(SQL, parameters) of the UNION ALL over the primary tables and _dead_letters, or
        (None, None) when none of them exists yet."""
        branches, params = [], []
        for kind, table in shared.PRIMARY.items():
            items = [(at, m) for m, (k, at, _) in pending.items() if k == kind]
            if not items or not self._exists(client, table):
                continue
            name = "event" if kind == "track" else "CAST(NULL AS STRING)"
            for first, last, ids in spans(items):
                n = len(params) // 3
                branches.append(f"SELECT '{table}' AS found_in, message_id, {name} AS name, CAST(NULL AS STRING) AS "
                                f"error_type, CAST(NULL AS STRING) AS error_message, CAST(NULL AS STRING) AS "
                                f"destination FROM `{self._ref(table)}` WHERE timestamp BETWEEN @first_{n} AND "
                                f"@last_{n} AND message_id IN UNNEST(@ids_{n})")
                params += [_array(f"ids_{n}", ids), _scalar(f"first_{n}", "TIMESTAMP", first - MARGIN),
                           _scalar(f"last_{n}", "TIMESTAMP", last + MARGIN)]
        if self._exists(client, shared.DEAD_LETTERS):
            branches.append(f"SELECT '{shared.DEAD_LETTERS}' AS found_in, message_id, CAST(NULL AS STRING) AS name, "
                            f"error_type, error_message, destination FROM `{self._ref(shared.DEAD_LETTERS)}` "
                            f"WHERE failed_at >= @since AND message_id IN UNNEST(@ids)")
            since = min(arrived for _, _, arrived in pending.values()) - SKEW
            params += [_array("ids", sorted(pending)), _scalar("since", "TIMESTAMP", since)]
        if not branches:
            return None, None
        return " UNION ALL ".join(branches), params

    def _query(self, client, sql: str, params: list):
        from google.cloud import bigquery
        config = bigquery.QueryJobConfig(query_parameters=params,
                                         maximum_bytes_billed=self.settings.max_bytes_billed)
        rows = client.query_and_wait(sql, job_config=config, wait_timeout=QUERY_TIMEOUT, retry=self._retry,
                                     job_retry=self._job_retry)
        self.bytes_processed += rows.total_bytes_processed or 0
        return rows

    def _exists(self, client, table: str) -> bool:
        """Whether the job has created `table` yet (tables.get, free; a table found is not asked again)."""
        if table in self._known:
            return True
        from google.api_core import exceptions
        try:
            client.get_table(self._ref(table), retry=self._retry, timeout=QUERY_TIMEOUT)
        except exceptions.NotFound:
            return False
        self._known.add(table)
        return True

    def _ref(self, table: str) -> str:
        return f"{self.project}.{self.dataset}.{table}"


def _array(name: str, values: list):
    from google.cloud import bigquery
    return bigquery.ArrayQueryParameter(name, "STRING", list(values))


def _scalar(name: str, kind: str, value):
    from google.cloud import bigquery
    return bigquery.ScalarQueryParameter(name, kind, value)
