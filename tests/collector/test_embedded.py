"""The embedded loader: closed spool files through the pipeline's own batch graph into the
DuckDB warehouse the process holds; failures keep files; conservation per run and in total."""
import json
import os
import subprocess
import sys
import threading
import time
import uuid

import duckdb
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from collector.embedded import EmbeddedLoader, EmbeddedSink, LOADED_DIR, count_file, count_lines, spool_dir_for
from pipeline.errors import UsageError
from pipeline.main import FileLoads
from tests.conftest import ROOT, rows
from transforms.warehouse import duckdb_backend

pytestmark = pytest.mark.slow


def event(n: int, **fields) -> dict:
    return {"type": "track", "event": "Item Viewed", "userId": f"user-{n}", "messageId": f"m-{uuid.uuid4()}",
            "receivedAt": "2026-12-02T10:00:00.000Z", "properties": {"n": n}, **fields}


def record(events: list, source: str = "web") -> bytes:
    """One accepted request as the collector spools it (collector-plan.md, "The record")."""
    events = [{**e, "source": source} if isinstance(e, dict) and "messageId" in e else e for e in events]
    return json.dumps({"batch": events, "source": source, "receivedAt": "2026-12-02T10:00:00.000Z",
                       "sentAt": "2026-12-02T09:59:59.900Z"}).encode()


_seq = iter(range(1, 1 << 30))


def write_spool(directory, records: list) -> str:
    """A closed spool file, written as the spool sink writes one: `.open`, then renamed."""
    os.makedirs(directory, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.getpid()}-{next(_seq):06d}.jsonl"
    path = os.path.join(directory, name)
    with open(path + ".open", "wb") as handle:
        handle.write(b"".join(r + b"\n" for r in records))
    os.rename(path + ".open", path)
    return path


@pytest.fixture
def loads(tmp_path):
    opened = FileLoads(["--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    yield opened
    opened.close()


def loader_for(loads, **options) -> EmbeddedLoader:
    loader = EmbeddedLoader(spool_dir_for(loads.path), loads, limits=loads.limits, **options)
    os.makedirs(loader.loaded_dir, exist_ok=True)
    return loader


def spooled(directory) -> list:
    """The files in the spool (not its loaded/ and .loading/ directories)."""
    return sorted(e.name for e in os.scandir(directory) if e.is_file())


def count(loads, sql: str):
    return loads.cursor().execute(sql).fetchone()[0]


def test_spool_files_are_stored_and_bad_events_dead_lettered(loads):
    spool = spool_dir_for(loads.path)
    first = write_spool(spool, [record([event(1), event(2)]), record([event(3), {"type": "track", "event": "x"}])])
    second = write_spool(spool, [record([event(4)], source="ios"), b'{"batch": [', record([])])
    open(os.path.join(spool, "20990101T000000-1-000001.jsonl.open"), "wb").write(record([event(9)]) + b"\n")
    loader = loader_for(loads)

    assert loader.run_once()

    assert count(loads, "SELECT count(*) FROM tracks") == 4
    assert count(loads, "SELECT count(*) FROM tracks WHERE source = 'ios'") == 1
    dead = rows(loads.cursor(), "SELECT error_type, source FROM _dead_letters ORDER BY error_type")
    staged = os.path.join(spool, ".loading", os.path.basename(second))  # where the run read it
    assert dead == [{"error_type": "malformed_json", "source": f"file:{staged}"},
                    {"error_type": "missing_identity", "source": "web"}]
    assert sorted(os.listdir(os.path.join(spool, LOADED_DIR))) == sorted(map(os.path.basename, (first, second)))
    assert spooled(spool) == ["20990101T000000-1-000001.jsonl.open"]
    totals = loader.totals()
    assert (totals["files"], totals["lines"], totals["events_in_files"]) == (2, 5, 7)
    assert totals["stored"] == 4 and totals["dead_lettered"] == {"malformed_json": 1, "missing_identity": 1}
    assert totals["dropped"] == {"empty_batch": 1}
    assert totals["unaccounted"] == 0 and totals["unbalanced_runs"] == 0
    assert "conservation holds" in loader.report()


def test_count_file_counts_as_decode_does(tmp_path):
    path = write_spool(tmp_path, [record([event(1), event(2), event(3)]), b"", b"not json", record([])])
    assert count_file(path) == (4, 6)


@pytest.mark.parametrize("data", [b"", b"\n", b"a\n\nb\n", b"a\nb", b"x" * (3 << 20) + b"\ny"])
def test_count_lines_counts_the_lines_count_file_does_without_decoding(tmp_path, data):
    """EmbeddedSink.start counts a previous run's backlog with it (decoding every line took the
    event loop for seconds on a large backlog)."""
    path = tmp_path / "f.jsonl"
    path.write_bytes(data)
    assert count_lines(path) == count_file(path)[0]


class FaultyRunner(FnApiRunner):
    """The real FnApiRunner, failing its first `failures` runs before running anything."""

    def __init__(self, failures: int):
        super().__init__()
        self.failures, self.calls = failures, 0

    def run_pipeline(self, pipeline, options):
        self.calls += 1
        if self.calls <= self.failures:
            raise RuntimeError("injected: the runner failed")
        return super().run_pipeline(pipeline, options)


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_failed_run_keeps_its_files_and_is_retried_with_backoff(loads, caplog):
    faulty = FaultyRunner(failures=2)
    loads.plan = loads.plan._replace(runner=loads.plan.runner._replace(runner=faulty))
    spool = spool_dir_for(loads.path)
    path = write_spool(spool, [record([event(n) for n in range(5)])])
    clock = Clock()
    loader = loader_for(loads, clock=clock, backoff=(1.0, 60.0))

    assert not loader.run_once()
    assert os.path.exists(path) and loader.totals()["failed_runs"] == 1
    assert "injected: the runner failed" in caplog.text
    assert not loader.run_once()          # backing off: not tried again yet
    assert faulty.calls == 1
    clock.now += 1.0
    assert not loader.run_once()          # the second failure: the next wait is 2 s
    clock.now += 1.5
    assert not loader.run_once() and faulty.calls == 2
    clock.now += 0.5
    assert loader.run_once()

    assert not os.path.exists(path)
    assert count(loads, "SELECT count(*) FROM tracks") == 5
    totals = loader.totals()
    assert (totals["runs"], totals["failed_runs"], totals["stored"], totals["unaccounted"]) == (1, 2, 5, 0)
    assert totals["last_error"] == "RuntimeError: injected: the runner failed"


def test_a_run_failing_halfway_is_retried_and_stores_each_event_once(loads, monkeypatch):
    """The dead letters' write fails after the events were stored: the run fails, the file
    stays; the retry finds the events stored (duplicate drops) and conservation holds."""
    real = duckdb_backend.DuckDBWarehouse.write_dead_letters
    calls = []

    def failing_once(self, records):
        calls.append(len(records))
        if len(calls) == 1:
            raise OSError("injected: the disk is full")
        return real(self, records)

    monkeypatch.setattr(duckdb_backend.DuckDBWarehouse, "write_dead_letters", failing_once)
    spool = spool_dir_for(loads.path)
    path = write_spool(spool, [record([event(n) for n in range(20)] + [{"type": "identify"}])])
    loader = loader_for(loads, backoff=(0.0, 0.0))

    assert not loader.run_once()
    assert os.path.exists(path)
    assert loader.run_once()

    assert count(loads, "SELECT count(*) FROM tracks") == 20
    assert count(loads, "SELECT count(*) FROM _dead_letters") == 1
    totals = loader.totals()
    assert totals["dropped"] == {"duplicate": 20} and totals["stored"] == 0
    assert totals["unaccounted"] == 0 and totals["failed_runs"] == 1


def test_a_file_that_keeps_failing_does_not_hold_the_others_back(loads):
    spool = spool_dir_for(loads.path)
    good = [write_spool(spool, [record([event(n)])]) for n in range(2)]
    bad = write_spool(spool, [record([event(9)])])
    more = write_spool(spool, [record([event(10)])])
    real = loads.__call__

    def load(files):
        if bad in files:
            raise RuntimeError("injected: this file fails")
        return real(files)

    clock = Clock()
    loader = EmbeddedLoader(spool, load, clock=clock, backoff=(5.0, 60.0))
    os.makedirs(loader.loaded_dir, exist_ok=True)
    assert not loader.run_once()          # all four together: failed
    clock.now += 5.0
    assert loader.run_once()              # then one at a time: each good one loads
    assert loader.run_once()
    assert not loader.run_once()          # the bad one fails again (and waits 10 s now)
    assert loader.run_once()              # the one after it is not held back
    assert spooled(spool) == [os.path.basename(bad)]
    assert count(loads, "SELECT count(*) FROM tracks") == 3
    assert all(not os.path.exists(p) for p in good + [more])


def test_stop_loads_everything_the_spool_holds(loads):
    spool = spool_dir_for(loads.path)
    loader = loader_for(loads)
    loader.start()
    for n in range(6):
        write_spool(spool, [record([event(n * 10 + k) for k in range(10)])])
        time.sleep(0.05)
    assert loader.stop(timeout=30)
    assert spooled(spool) == []
    assert count(loads, "SELECT count(*) FROM tracks") == 60
    assert loader.totals()["unaccounted"] == 0


def test_stop_gives_up_at_its_deadline_and_keeps_what_is_left(loads):
    spool = spool_dir_for(loads.path)
    path = write_spool(spool, [record([event(1)])])

    def load(files):
        raise RuntimeError("injected: always")

    loader = EmbeddedLoader(spool, load, backoff=(0.0, 0.0))
    loader.start()
    assert not loader.stop(timeout=1.0)
    assert os.path.exists(path)


def test_loaded_files_are_kept_for_a_bounded_time(loads):
    spool = spool_dir_for(loads.path)
    loader = loader_for(loads, retention_seconds=60)
    os.makedirs(loader.loaded_dir, exist_ok=True)
    old = os.path.join(loader.loaded_dir, "old.jsonl")
    recent = os.path.join(loader.loaded_dir, "recent.jsonl")
    for path in (old, recent):
        open(path, "wb").write(b"{}\n")
    os.utime(old, (time.time() - 120, time.time() - 120))
    write_spool(spool, [record([event(1)])])
    assert loader.run_once()
    assert not os.path.exists(old) and os.path.exists(recent)


def test_the_warehouse_is_held_while_loads_run(loads):
    """Another process cannot open the file (DuckDB's lock), not even read-only, nor serve it:
    queries go through the collector (test_query.py)."""
    for code in (f"import duckdb; duckdb.connect({loads.path!r}, read_only=True)",
                 f"from pipeline.main import FileLoads; FileLoads(['--warehouse', 'duckdb:///{loads.path}'])"):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert done.returncode != 0, done.stderr
        assert "lock" in done.stderr.lower() or "open in another process" in done.stderr, done.stderr


def test_file_loads_refuses_an_input_or_another_warehouse(tmp_path):
    with pytest.raises(UsageError, match="no --input"):
        FileLoads(["--input_files", "x.jsonl", "--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    with pytest.raises(UsageError, match="DuckDB"):
        FileLoads(["--warehouse", "bigquery://my-project/events"])


def test_the_sink_spools_rotates_and_loads_on_close(loads):
    import asyncio

    pytest.importorskip("collector.sinks.spool")
    sink = EmbeddedSink.for_warehouse(loads.path, loads, limits=loads.limits)
    events = [[event(n * 100 + k) for k in range(5)] for n in range(20)]

    async def serve():
        await sink.start()
        for batch in events:
            await sink.put([record(batch)])
            await asyncio.sleep(0.15)   # 3 s of puts: the spool rotates at least once meanwhile
        await sink.close()

    asyncio.run(serve())
    assert count(loads, "SELECT count(*) FROM tracks") == 100
    totals = sink.totals()
    assert totals["accepted_records"] == totals["lines"] == 20 and totals["unaccounted"] == 0
    assert totals["files"] >= 2
    assert spooled(spool_dir_for(loads.path)) == []


def test_events_are_queryable_while_the_loader_runs(loads):
    """Reads on cursors of the held connection, beside a loader writing: each sees a
    committed count that only grows."""
    spool = spool_dir_for(loads.path)
    loader = loader_for(loads, poll_seconds=0.05)
    loader.start()
    seen, errors = [], []

    def query():
        cursor = loads.cursor()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not seen or seen[-1] < 200):
            try:
                read = cursor.cursor()
                exists = read.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'tracks'").fetchone()[0]
                seen.append(read.execute("SELECT count(*) FROM tracks").fetchone()[0] if exists else 0)
            except duckdb.Error as exc:
                errors.append(exc)
            time.sleep(0.01)

    reader = threading.Thread(target=query)
    reader.start()
    for n in range(10):
        write_spool(spool, [record([event(n * 20 + k) for k in range(20)])])
        time.sleep(0.1)
    reader.join()
    assert loader.stop(timeout=30)
    assert not errors and seen[-1] == 200 and seen == sorted(seen)


def test_the_totals_are_prometheus_metrics(loads):
    from prometheus_client import CollectorRegistry, generate_latest

    from collector.embedded import LoaderMetrics

    spool = spool_dir_for(loads.path)
    write_spool(spool, [record([event(1), event(2), {"type": "track"}]), record([])])
    sink = EmbeddedSink(spool=None, loader=loader_for(loads))
    assert sink.loader.run_once()
    registry = CollectorRegistry()
    registry.register(LoaderMetrics(sink))
    text = generate_latest(registry).decode()
    assert 'sluice_embedded_events_total{outcome="stored",reason=""} 2.0' in text
    assert 'sluice_embedded_events_total{outcome="dead_lettered",reason="missing_identity"} 1.0' in text
    assert 'sluice_embedded_events_total{outcome="dropped",reason="empty_batch"} 1.0' in text
    assert "sluice_embedded_unaccounted_events 0.0" in text and "sluice_embedded_runs_total 1.0" in text


def test_the_graph_is_built_once_and_files_of_one_name_both_load(loads, tmp_path):
    one, two = tmp_path / "a", tmp_path / "b"
    for n, directory in enumerate((one, two)):
        directory.mkdir()
        (directory / "same.jsonl").write_bytes(record([event(n)]) + b"\n")
    first = loads([str(one / "same.jsonl")])
    built = loads._pipeline
    second = loads([str(one / "same.jsonl"), str(two / "same.jsonl")])
    assert loads._pipeline is built
    assert (first["stored"], second["stored"], second["dropped"]) == (1, 1, {"duplicate": 1})
    assert os.listdir(loads.staging) == []
    assert (one / "same.jsonl").exists() and (two / "same.jsonl").exists()  # the caller moves them


def test_the_sink_takes_the_attributes_every_sink_takes(loads):
    import asyncio

    pytest.importorskip("collector.sinks.spool")
    sink = EmbeddedSink.for_warehouse(loads.path, loads, limits=loads.limits)

    async def serve():
        await sink.start()
        await sink.put([record([event(1)])], [{"source": "web", "received_at": "2026-12-02T10:00:00.000Z",
                                                "content_type": "application/json"}])
        await sink.close()

    asyncio.run(serve())
    assert count(loads, "SELECT count(*) FROM tracks") == 1
