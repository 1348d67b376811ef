"""Embedded mode: the collector loads what it accepted into the DuckDB warehouse it holds.

`python -m pipeline serve --warehouse duckdb:///PATH` puts accepted records in a spool next to
the warehouse (`PATH.spool/`, rotated every 2 s) and an EmbeddedLoader, on a thread of the
same process, runs the pipeline's own batch graph (the file source, FnApiRunner, the same
config and warehouse: pipeline.main.FileLoads) over the closed spool files, so an event sent
is a row seconds later. Nothing here builds a graph: the loader is given `load(files) ->
summary`, a run of the batch job over exactly those files (collector/ does not import
pipeline/; pipeline/serve.py wires them).

A file is moved to `loaded/` only after the run that read it succeeded; a failed run keeps its
files in the spool and they are retried with backoff (a run that failed with several files
retries them one by one, so one file that keeps failing cannot hold the others back). A
process killed between a run and the move loads the files again at the next start: stored
events come back as `duplicate` drops and dead letters are stored once per line, so a file
loaded twice is still in the warehouse once. `loaded/` is kept for `retention_seconds` (10
minutes) and at most `retention_bytes` (1 GiB), oldest deleted first: enough to look at or
re-run what was just loaded, bounded at any rate of events (the warehouse and its dead
letters hold every event already).

Conservation, per run and accumulated: the lines of the files are the messages the run read,
the events they hold (counted by the pipeline's own decode rule) are the run's events, and
those events are stored, dead-lettered or dropped by a named policy. `totals()` is what
/metrics shows; `report()` the summary logged at shutdown.
"""
import asyncio
import logging
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from collector.sinks import Sink, SinkUnavailable
from transforms.decode import DecodeLimits, decode_message
from transforms.messages import RawMessage

_LOG = logging.getLogger("sluice.collector.embedded")  # under the collector's logger: its INFO lines show

LOADED_DIR = "loaded"
ROTATE_SECONDS = 2.0            # the embedded spool's age rotation (the plan's "embedded: 2 s")
POLL_SECONDS = 0.2              # how often the loader looks for closed files
MAX_RUN_BYTES = 64 << 20        # one run reads at most this much (at least one file)
RETENTION_SECONDS = 600.0
RETENTION_BYTES = 1 << 30
BACKOFF_SECONDS = (1.0, 60.0)   # first retry after 1 s, doubling, at most 60 s


def spool_dir_for(warehouse_path: str) -> str:
    """The embedded spool of a warehouse file: beside it, `<file>.spool`."""
    return os.path.abspath(warehouse_path) + ".spool"


def count_file(path: str, limits: DecodeLimits = DecodeLimits()) -> tuple:
    """(lines, events) of a spool file, read as the file source reads it (every line, split on
    b"\\n") and counted as Decode counts event units (a batch's members; one for a line refused
    before it could be split, or dropped as empty)."""
    lines = events = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(iter(handle.readline, b""), 1):
            lines += 1
            message = RawMessage(line.rstrip(b"\r\n"), {}, "", None, str(number))
            events += sum(1 for _ in decode_message(message, None, limits))
    return lines, events


def count_lines(path: str) -> int:
    """The lines of a file as count_file counts them (newlines, and a last line without one),
    without decoding a line: a backlog of gigabytes is counted at disk speed."""
    lines, last = 0, b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")


@dataclass
class Totals:
    """What the loader did since it started (accumulated over successful runs)."""
    runs: int = 0
    failed_runs: int = 0
    files: int = 0
    lines: int = 0            # records loaded (one spool line = one accepted request)
    events_in_files: int = 0  # event units the loaded files hold
    read: int = 0             # the runs' `read` counters
    events: int = 0           # the runs' `events` counters
    stored: int = 0
    dead_lettered: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    unbalanced_runs: int = 0  # runs whose conservation failed (logged as errors)
    run_seconds: float = 0.0
    last_run_seconds: float = 0.0
    last_lag_seconds: float = 0.0  # from the oldest file's last write to the end of its run
    last_error: Optional[str] = None

    @property
    def unaccounted(self) -> int:
        return self.events_in_files - self.stored - sum(self.dead_lettered.values()) - sum(self.dropped.values())


class EmbeddedLoader:
    """Loads closed spool files (`DIR/*.jsonl`) with `load(files) -> summary` (the batch job's
    summary dict, pipeline.summary.build), on a thread of its own, one run at a time."""

    def __init__(self, spool_dir: str, load: Callable[[list], dict], *, limits: DecodeLimits = DecodeLimits(),
                 poll_seconds: float = POLL_SECONDS, max_run_bytes: int = MAX_RUN_BYTES,
                 retention_seconds: float = RETENTION_SECONDS, retention_bytes: int = RETENTION_BYTES,
                 backoff: tuple = BACKOFF_SECONDS, clock=time.monotonic):
        self.spool_dir = os.path.abspath(spool_dir)
        self.loaded_dir = os.path.join(self.spool_dir, LOADED_DIR)
        self._load, self._limits = load, limits
        self._poll, self._max_run_bytes = poll_seconds, max_run_bytes
        self._retention_seconds, self._retention_bytes = retention_seconds, retention_bytes
        self._backoff, self._clock = backoff, clock
        self._lock = threading.Lock()
        self._totals = Totals()
        self._failing = {}          # path -> (failures, monotonic time of the next attempt)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self._pending = (0, 0)      # (files, bytes) waiting, as of the last look
        self._last_prune = None
        self.on_loaded = None       # (files, summary) after each successful run: the debugger's fates

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        os.makedirs(self.loaded_dir, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="sluice-embedded-loader", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for closed files now (the spool has just rotated)."""
        self._wake.set()

    def stop(self, timeout: float = 8.0) -> bool:
        """Load every closed file (retrying failures within `timeout` seconds), then stop.
        True when the spool is empty; else what is left stays there for the next start."""
        deadline = self._clock() + timeout
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        while True:  # the last pass, on this thread, now that nothing is written any more
            left = self._closed_files()
            if not left:
                return True
            if self._clock() >= deadline:
                break
            if not self.run_once(ignore_backoff=True):
                time.sleep(min(0.5, max(0.0, deadline - self._clock())))
        _LOG.error("embedded loader: %d spool files are not loaded (%s); they stay in %s and are loaded at the "
                   "next start", len(left), self._totals.last_error or "no run succeeded in time", self.spool_dir)
        return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the loop must outlive any one pass; files stay in the spool
                _LOG.exception("embedded loader: a pass failed")
            self._wake.wait(self._poll)
            self._wake.clear()

    # -- one pass ------------------------------------------------------------------------
    def _closed_files(self) -> list:
        """(path, size) of the closed spool files, oldest name first."""
        try:
            entries = [e for e in os.scandir(self.spool_dir) if e.name.endswith(".jsonl") and e.is_file()]
        except FileNotFoundError:
            return []
        return sorted((e.path, e.stat().st_size) for e in entries)

    def run_once(self, ignore_backoff: bool = False) -> bool:
        """Load the closed files that are due, in one run; True when a run succeeded."""
        closed = self._closed_files()
        self._pending = (len(closed), sum(size for _, size in closed))
        for gone in set(self._failing) - {p for p, _ in closed}:  # removed by hand meanwhile
            del self._failing[gone]
        self._prune_loaded()
        now = self._clock()
        due = [(p, s) for p, s in closed if ignore_backoff or self._failing.get(p, (0, 0))[1] <= now]
        if not due:
            return False
        if due[0][0] in self._failing:  # a file that failed runs alone (see the module docstring)
            chosen = [due[0]]
        else:
            chosen, size = [], 0
            for path, file_size in due:
                if path in self._failing or (chosen and size + file_size > self._max_run_bytes):
                    break
                chosen.append((path, file_size))
                size += file_size
        return self._run([p for p, _ in chosen])

    def _run(self, files: list) -> bool:
        started = time.perf_counter()
        try:
            written = min(os.stat(p).st_mtime for p in files)
            counts = [count_file(p, self._limits) for p in files]
            summary = self._load(files)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the files for a retry
            self._failed(files, exc)
            return False
        elapsed = time.perf_counter() - started
        lines, events = sum(c[0] for c in counts), sum(c[1] for c in counts)
        self._check(files, summary, lines, events)
        for path in files:
            os.replace(path, os.path.join(self.loaded_dir, os.path.basename(path)))
            self._failing.pop(path, None)
        with self._lock:
            t = self._totals
            t.runs += 1
            t.files += len(files)
            t.lines += lines
            t.events_in_files += events
            t.read += summary.get("read", 0)
            t.events += summary.get("events", 0)
            t.stored += summary.get("stored", 0)
            t.dead_lettered.update(summary.get("dead_lettered", {}))
            t.dropped.update(summary.get("dropped", {}))
            t.run_seconds += elapsed
            t.last_run_seconds = elapsed
            t.last_lag_seconds = max(0.0, time.time() - written)
        self._pending = (max(0, self._pending[0] - len(files)), self._pending[1])
        if self.on_loaded is not None:   # the files as moved; it never raises (collector.debugger.fates)
            self.on_loaded([os.path.join(self.loaded_dir, os.path.basename(p)) for p in files], summary)
        return True

    def _check(self, files, summary, lines, events) -> None:
        accounted = (summary.get("stored", 0) + sum(summary.get("dead_lettered", {}).values())
                     + sum(summary.get("dropped", {}).values()))
        holds = summary.get("read") == lines and summary.get("events") == events == accounted
        if not holds:
            with self._lock:
                self._totals.unbalanced_runs += 1
            # The run wrote what it wrote: loading the files again would not find the missing
            # events either, so they move on, and the accumulated `unaccounted` says how many.
            _LOG.error("embedded loader: conservation failed for %s: %d lines and %d events in the files, the run "
                       "read %s and counted %s events, %d stored + dead-lettered + dropped",
                       ", ".join(os.path.basename(f) for f in files), lines, events, summary.get("read"),
                       summary.get("events"), accounted)

    def _failed(self, files: list, exc: Exception) -> None:
        now = self._clock()
        first, ceiling = self._backoff
        for path in files:
            failures = self._failing.get(path, (0, 0))[0] + 1
            self._failing[path] = (failures, now + min(ceiling, first * 2 ** (failures - 1)))
        failures = max(self._failing[p][0] for p in files)
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        with self._lock:
            self._totals.failed_runs += 1
            self._totals.last_error = message
        _LOG.warning("embedded loader: the run over %d file(s) (%s) failed (attempt %d), kept for a retry in %.0f s: "
                     "%s", len(files), ", ".join(os.path.basename(f) for f in files[:3]), failures,
                     min(ceiling, first * 2 ** (failures - 1)), message, exc_info=failures == 1)

    def _prune_loaded(self) -> None:
        """Delete loaded files past their retention (at most every 10 s)."""
        now = time.time()
        if self._last_prune is not None and now - self._last_prune < 10:
            return
        self._last_prune = now
        try:
            entries = sorted((e.stat().st_mtime, e.path, e.stat().st_size) for e in os.scandir(self.loaded_dir)
                             if e.is_file())
        except FileNotFoundError:
            return
        total = sum(size for _, _, size in entries)
        for mtime, path, size in entries:
            if now - mtime <= self._retention_seconds and total <= self._retention_bytes:
                break
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            total -= size

    # -- what it did -----------------------------------------------------------------------
    def totals(self) -> dict:
        """Counters for /metrics: accumulated over the runs so far, plus the backlog."""
        with self._lock:
            t = self._totals
            return {"runs": t.runs, "failed_runs": t.failed_runs, "files": t.files, "lines": t.lines,
                    "events_in_files": t.events_in_files, "read": t.read, "events": t.events, "stored": t.stored,
                    "dead_lettered": dict(t.dead_lettered), "dropped": dict(t.dropped),
                    "unaccounted": t.unaccounted, "unbalanced_runs": t.unbalanced_runs,
                    "run_seconds": round(t.run_seconds, 3), "last_run_seconds": round(t.last_run_seconds, 3),
                    "last_lag_seconds": round(t.last_lag_seconds, 3),
                    "last_error": t.last_error, "pending_files": self._pending[0],
                    "pending_bytes": self._pending[1], "failing_files": len(self._failing)}

    def report(self) -> str:
        """The summary logged at shutdown: one paragraph a person can check."""
        t = self.totals()
        dead, dropped = sum(t["dead_lettered"].values()), sum(t["dropped"].values())
        verdict = ("holds" if t["unaccounted"] == 0 and not t["unbalanced_runs"]
                   else f"BROKEN: {t['unaccounted']:,} events unaccounted for")
        return (f"embedded loader: {t['runs']:,} runs ({t['failed_runs']:,} failed and retried) loaded "
                f"{t['files']:,} spool files, {t['lines']:,} requests, {t['events_in_files']:,} events: "
                f"{t['stored']:,} stored, {dead:,} dead-lettered, {dropped:,} dropped by policy; conservation "
                f"{verdict}" + (f"; {t['pending_files']} files left in the spool" if t["pending_files"] else ""))


class EmbeddedSink(Sink):
    """The sink of embedded mode: a SpoolSink in the warehouse's spool directory, rotating every
    2 s, whose closed files an EmbeddedLoader loads. close() closes the spool (its open file is
    rotated) and loads everything before it returns."""

    def __init__(self, spool, loader: EmbeddedLoader, stop_timeout: float = 8.0):
        self.spool, self.loader, self._stop_timeout = spool, loader, stop_timeout
        self.records = 0   # records put (accepted) by this process
        self.backlog = 0   # lines already in closed spool files at start (a previous run's)

    @classmethod
    def for_warehouse(cls, warehouse_path: str, load: Callable[[list], dict], **loader_options) -> "EmbeddedSink":
        from collector.sinks.spool import SpoolSink
        directory = spool_dir_for(warehouse_path)
        return cls(SpoolSink(directory, max_age_seconds=ROTATE_SECONDS), EmbeddedLoader(directory, load,
                                                                                         **loader_options))

    async def start(self) -> None:
        await self.spool.start()  # closes what a killed predecessor left open
        # counted in a thread: a previous run's backlog may be large, and the loop serves /health
        self.backlog = await asyncio.to_thread(lambda: sum(count_lines(p) for p, _ in self.loader._closed_files()))
        self.loader.start()

    async def put(self, records: list, attributes: list = None) -> None:
        if self.loader._stop.is_set():
            raise SinkUnavailable("the collector is shutting down", retry_after=5)
        await self.spool.put(records, attributes)  # a spool keeps the records only
        self.records += len(records)

    async def ready(self) -> bool:
        return await self.spool.ready()

    async def close(self) -> None:
        try:
            await self.spool.close()
        finally:  # whatever the spool could close is loaded; the rest waits in it for the next start
            await asyncio.to_thread(self.loader.stop, self._stop_timeout)
        _LOG.info("%s", self.loader.report())
        loaded = self.loader.totals()["lines"]
        if loaded != self.records + self.backlog:
            _LOG.error("embedded loader: %d requests accepted here and %d left by a previous run, %d loaded",
                       self.records, self.backlog, loaded)

    def totals(self) -> dict:
        return {**self.loader.totals(), "accepted_records": self.records, "backlog_records": self.backlog}


class LoaderMetrics:
    """The loader's totals as Prometheus metrics, read at each scrape: register it in the
    collector's registry (`app.metrics.registry.register(LoaderMetrics(sink))`)."""

    def __init__(self, sink: EmbeddedSink):
        self._sink = sink

    def describe(self):
        return []  # read at collect time only (the registry must not collect while registering)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
        t = self._sink.totals()
        prefix = "sluice_embedded_"
        yield CounterMetricFamily(prefix + "runs", "Pipeline runs that loaded spool files", t["runs"])
        yield CounterMetricFamily(prefix + "failed_runs", "Pipeline runs that failed (their files retried)",
                                  t["failed_runs"])
        yield CounterMetricFamily(prefix + "files_loaded", "Spool files loaded", t["files"])
        yield CounterMetricFamily(prefix + "records_accepted", "Records (requests) this process put in the spool",
                                  t["accepted_records"])
        yield CounterMetricFamily(prefix + "records_loaded", "Records (spool lines) loaded", t["lines"])
        yield CounterMetricFamily(prefix + "events_loaded", "Events the loaded spool files held", t["events_in_files"])
        outcomes = CounterMetricFamily(prefix + "events", "Loaded events by outcome: stored, dead_lettered "
                                       "(by error type), dropped (by policy)", labels=["outcome", "reason"])
        outcomes.add_metric(["stored", ""], t["stored"])
        for reason, value in sorted(t["dead_lettered"].items()):
            outcomes.add_metric(["dead_lettered", reason], value)
        for reason, value in sorted(t["dropped"].items()):
            outcomes.add_metric(["dropped", reason], value)
        yield outcomes
        yield GaugeMetricFamily(prefix + "unaccounted_events", "Loaded events neither stored, dead-lettered nor "
                                "dropped (conservation: 0)", t["unaccounted"])
        yield GaugeMetricFamily(prefix + "pending_files", "Closed spool files waiting to be loaded", t["pending_files"])
        yield GaugeMetricFamily(prefix + "pending_bytes", "Bytes of the closed spool files waiting", t["pending_bytes"])
        yield GaugeMetricFamily(prefix + "failing_files", "Spool files whose last run failed (retried with backoff)",
                                t["failing_files"])
        yield CounterMetricFamily(prefix + "run_seconds", "Time spent in pipeline runs", t["run_seconds"])
        yield GaugeMetricFamily(prefix + "last_run_seconds", "Duration of the last successful run",
                                t["last_run_seconds"])
        yield GaugeMetricFamily(prefix + "lag_seconds", "At the last successful run's end: the time since its "
                                "oldest file was last written", t["last_lag_seconds"])
