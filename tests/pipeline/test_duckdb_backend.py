"""The DuckDB backend against a real database file."""
import threading

import apache_beam as beam
import duckdb
import pytest

from pipeline.config import validate
from pipeline.graph import warehouse_settings
from pipeline.main import run
from tests.conftest import run_file_job
from transforms.messages import Event
from transforms.normalize import normalize_event
from transforms.warehouse.duckdb_backend import KEYS_TABLE, DuckDBWarehouse
from transforms.warehouse.sink import opened_backend

NOW = "2026-11-23T10:00:00.000000Z"


def event(body):
    return Event(normalize_event(body, NOW), body, None, {}, "test", NOW)


def track(message_id, props, name="Order Completed", user="u"):
    return event({"type": "track", "event": name, "userId": user, "messageId": message_id, "properties": props})


def query(path, sql):
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def open_warehouse(tmp_path, **kwargs):
    return DuckDBWarehouse(str(tmp_path / "w.duckdb"), **kwargs).open()


def test_rows_land_and_tables_widen(tmp_path):
    warehouse = open_warehouse(tmp_path)
    result = warehouse.write_events([track("m1", {"total": 3}), track("m2", {"total": 4, "coupon": "X"})])
    warehouse.close()
    assert len(result.stored) == 2 and result.rows == {"tracks": 2, "order_completed": 2}
    path = tmp_path / "w.duckdb"
    assert query(path, "SELECT message_id, total, coupon FROM order_completed ORDER BY 1") == [
        ("m1", 3, None), ("m2", 4, "X")]
    types = dict(query(path, "SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'order_completed'"))
    assert types["total"] == "BIGINT" and types["timestamp"] == "TIMESTAMP WITH TIME ZONE"


def test_rewriting_the_same_events_adds_nothing(tmp_path):
    warehouse = open_warehouse(tmp_path)
    events = [track("m1", {"a": 1}), track("m2", {"a": 2}), track("m1", {"a": 9})]
    first = warehouse.write_events(events)
    second = warehouse.write_events(events)
    warehouse.close()
    assert (len(first.stored), len(first.duplicates)) == (2, 1)
    assert (len(second.stored), len(second.duplicates)) == (0, 3)
    assert query(tmp_path / "w.duckdb", "SELECT message_id, a FROM order_completed ORDER BY 1") == [("m1", 1), ("m2", 2)]


def test_stored_events_are_keyed_by_128_bit_numbers_and_no_event_table_has_an_index(tmp_path):
    """An index lives in memory and grows with the warehouse: the stored events' keys are one
    narrow column instead; users keep their primary key (identifies are upserted by user id), and
    the small internal tables theirs (a row per dead letter, per replayed one, per forwarded batch)."""
    warehouse = open_warehouse(tmp_path)
    warehouse.write_events([track("m1", {"a": 1}), event({"type": "identify", "userId": "u", "messageId": "i1"})])
    warehouse.close()
    constraints = query(tmp_path / "w.duckdb", "SELECT table_name, constraint_column_names FROM duckdb_constraints() "
                                               "WHERE constraint_type = 'PRIMARY KEY' ORDER BY 1")
    keyed = {table: columns for table, columns in constraints if not table.startswith("_sluice_columns")}
    assert keyed == {"_dead_letters": ["dead_letter_id"], "_deliveries": ["delivery_id"],
                     "_replays": ["dead_letter_id"], "users": ["id"]}
    assert query(tmp_path / "w.duckdb", f"SELECT count(*), typeof(any_value(key)) FROM {KEYS_TABLE}") == [(2, "UHUGEINT")]


def test_the_connection_writes_within_the_configured_memory_budget(tmp_path):
    """DuckDB would cache up to most of the machine's memory: the run's memory would grow with
    the warehouse (see DEFAULT_MEMORY_LIMIT_MB)."""
    config = validate({"warehouse": {"duckdb_memory_limit_mb": 48}})
    for settings, expected in ((warehouse_settings(f"duckdb:///{tmp_path}/a.duckdb", config), "45.7 MiB"),
                               (warehouse_settings(f"duckdb:///{tmp_path}/b.duckdb", validate({})), "61.0 MiB")):
        with opened_backend(settings) as backend:  # as DuckDB reports 48 MB and the default 64 MB
            assert backend._db.conn.execute("SELECT current_setting('memory_limit')").fetchone()[0] == expected


def test_a_write_that_needs_more_memory_than_the_budget_raises_it_and_loses_nothing(tmp_path, caplog):
    """A batch adding 300 columns runs out of 16 MB in DuckDB itself (a real OutOfMemory)."""
    wide = track("w", {f"p{i}": i for i in range(300)}, name="Wide")
    warehouse = open_warehouse(tmp_path, memory_limit_mb=16)
    try:
        result = warehouse.write_events([wide])
        limit = warehouse._db.conn.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    finally:
        warehouse.close()
    assert (len(result.stored), result.failed) == (1, [])
    assert limit == "30.5 MiB" and "its budget is now 32 MB" in caplog.text  # doubled once
    assert query(tmp_path / "w.duckdb", "SELECT p7, p299 FROM wide") == [(7, 299)]


def test_a_warehouse_from_before_the_key_index_gets_it_from_its_tables_and_stores_nothing_twice(tmp_path):
    warehouse = open_warehouse(tmp_path)
    events = [track("m1", {"a": 1}), track("m2", {"a": 2}), event({"type": "page", "userId": "u", "messageId": "p1"})]
    warehouse.write_events(events)
    warehouse.close()
    with duckdb.connect(str(tmp_path / "w.duckdb")) as conn:  # as the previous release left it
        conn.execute(f"DROP TABLE {KEYS_TABLE}")
    warehouse = open_warehouse(tmp_path)
    again = warehouse.write_events(events + [track("m3", {"a": 3})])
    warehouse.close()
    assert ([e.body["messageId"] for e in again.stored], len(again.duplicates)) == (["m3"], 3)
    assert query(tmp_path / "w.duckdb", f"SELECT count(*) FROM {KEYS_TABLE}") == [(4,)]


def test_widening_and_refused_widening(tmp_path):
    warehouse = open_warehouse(tmp_path)
    warehouse.write_events([track("m1", {"position": 3}, "Video Played"), track("b1", {"big": 2 ** 60}, "Video Played")])
    warehouse.write_events([track("m2", {"position": 3.5, "big": 1.5}, "Video Played")])
    warehouse.close()
    path = tmp_path / "w.duckdb"
    types = dict(query(path, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'video_played'"))
    assert types["position"] == "DOUBLE"
    assert types["big"] == "BIGINT"  # 2**60 would lose digits as a double: not widened
    assert query(path, "SELECT position, big, _unmapped FROM video_played ORDER BY message_id") == [
        (None, 2 ** 60, None), (3.0, None, None), (3.5, None, '{"/properties/big":1.5}')]


def test_schema_survives_reopening(tmp_path):
    warehouse = open_warehouse(tmp_path)
    warehouse.write_events([track("m1", {"firstName": "A", "first_name": "B"})])
    warehouse.close()
    warehouse = open_warehouse(tmp_path)
    warehouse.write_events([track("m2", {"first_name": "D", "firstName": "C"})])
    warehouse.close()
    rows = query(tmp_path / "w.duckdb", "SELECT c.column_name, c.source FROM _sluice_columns c "
                                        "WHERE table_name = 'order_completed' AND source LIKE '/properties/%'")
    columns = dict((source, name) for name, source in rows)
    plain, suffixed = columns["/properties/firstName"], columns["/properties/first_name"]
    values = query(tmp_path / "w.duckdb", f"SELECT {plain}, {suffixed} FROM order_completed ORDER BY message_id")
    assert values == [("A", "B"), ("C", "D")]


def test_users_keep_the_newest_traits(tmp_path):
    def identify(message_id, when, traits):
        return event({"type": "identify", "userId": "u1", "messageId": message_id, "timestamp": when, "traits": traits})

    warehouse = open_warehouse(tmp_path)
    warehouse.write_events([identify("i2", "2026-02-01T00:00:00Z", {"plan": "pro"})])
    warehouse.write_events([identify("i1", "2026-01-01T00:00:00Z", {"plan": "free", "city": "Paris"})])
    warehouse.close()
    path = tmp_path / "w.duckdb"
    assert query(path, "SELECT id, plan, city FROM users") == [("u1", "pro", "Paris")]
    assert query(path, "SELECT count(*) FROM identifies") == [(2,)]


def test_one_bad_event_does_not_sink_its_batch(tmp_path):
    warehouse = open_warehouse(tmp_path)
    good = track("m1", {"a": 1})
    bad = good._replace(body={**good.body, "messageId": "m2", "timestamp": "not a time"})
    result = warehouse.write_events([good, bad, track("m3", {"a": 3})])
    warehouse.close()
    assert [e.body["messageId"] for e in result.stored] == ["m1", "m3"]
    assert len(result.failed) == 1 and result.failed[0][0] is bad and "timestamp" in result.failed[0][1].lower()


def test_concurrent_writers_in_one_process(tmp_path):
    """Bundles on several threads share one connection; new columns from all of them land."""
    errors = []

    def writer(worker):
        warehouse = open_warehouse(tmp_path)
        try:
            for batch in range(5):
                events = [track(f"w{worker}-{batch}-{i}", {f"p{worker}": i, "shared": i}) for i in range(50)]
                warehouse.write_events(events)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)
        finally:
            warehouse.close()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    path = tmp_path / "w.duckdb"
    assert query(path, "SELECT count(*), count(DISTINCT message_id) FROM order_completed") == [(1000, 1000)]
    assert query(path, "SELECT count(*) FROM tracks") == [(1000,)]
    assert query(path, "SELECT count(*) FROM order_completed WHERE p0 IS NOT NULL OR p3 IS NOT NULL") == [(500,)]


def test_dead_letters_are_stored_once(tmp_path):
    from transforms import deadletter
    from transforms.messages import Rejection
    record = deadletter.make_record("decode", Rejection("malformed_json", "bad"), b"\xff{", attributes={"a": "1"},
                                    source="file:x", received_at=NOW, position="3")
    warehouse = open_warehouse(tmp_path)
    assert warehouse.write_dead_letters([record, record]) == 1
    assert warehouse.write_dead_letters([record]) == 0
    warehouse.close()
    assert query(tmp_path / "w.duckdb", "SELECT error_type, payload, payload_encoding, attributes FROM _dead_letters") == [
        ("malformed_json", "/3s=", "base64", '{"a":"1"}')]


def test_kept_open_backends_are_reused_across_bundles_and_closed_at_the_stop(tmp_path):
    """The local streaming runner tears DoFns down after every bundle: keep_open parks the
    backend instead of closing it, the next setup takes it back, the stop closes it."""
    from transforms import parking
    from transforms.warehouse import duckdb_backend, sink
    settings = sink.WarehouseSettings(f"duckdb:///{tmp_path}/w.duckdb")
    first, second = sink.WriteDeadLettersFn(settings, keep_open=True), sink.WriteDeadLettersFn(settings, keep_open=True)
    first.setup()
    backend = first._backend
    first.teardown()
    second.setup()
    assert second._backend is backend  # parked, not reopened
    second.teardown()
    assert str(tmp_path / "w.duckdb") in duckdb_backend._DATABASES  # still open while parked
    parking.close_all()
    assert str(tmp_path / "w.duckdb") not in duckdb_backend._DATABASES  # the file is closed


def test_backends_not_kept_open_close_at_teardown(tmp_path):
    from transforms.warehouse import duckdb_backend, sink
    fn = sink.WriteDeadLettersFn(sink.WarehouseSettings(f"duckdb:///{tmp_path}/w.duckdb"))
    fn.setup()
    fn.teardown()
    assert str(tmp_path / "w.duckdb") not in duckdb_backend._DATABASES


def test_dead_letters_are_queryable_from_the_first_run(tmp_path):
    """A run with only good events leaves `_dead_letters` empty, not missing: a monitoring
    query on it works before anything has failed."""
    summary, conn = run_file_job(tmp_path, [{"type": "track", "event": "A", "userId": "u", "messageId": "m1"}], "")
    assert summary["stored"] == 1 and summary["dead_lettered"] == {}
    assert conn.execute("SELECT count(*) FROM _dead_letters").fetchall() == [(0,)]


def test_the_launch_creates_dead_letters_before_the_job_runs(tmp_path, monkeypatch):
    """The launcher does it (pipeline.main.execute), once: not left to a worker's setup."""
    class NotRun(Exception):
        pass

    def not_run(pipeline, *args, **kwargs):
        raise NotRun()
    monkeypatch.setattr(beam.Pipeline, "run", not_run)
    (tmp_path / "in.jsonl").write_text('{"type": "track", "event": "A", "userId": "u"}\n')
    with pytest.raises(NotRun):
        run(["--input_files", str(tmp_path / "in.jsonl"), "--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    assert query(tmp_path / "w.duckdb", "SELECT count(*) FROM _dead_letters") == [(0,)]


@pytest.fixture
def file_held_by_another_process(tmp_path):
    """A DuckDB file open for writing in a process of its own, as a second Sluice run holds it."""
    import subprocess
    import sys
    path = tmp_path / "w.duckdb"
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); "
                               "print('ready', flush=True); sys.stdin.read()", str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "ready"
    yield path, holder.pid
    holder.stdin.close()
    holder.wait(timeout=30)


def test_a_run_on_a_file_another_process_holds_is_one_line_and_exit_2(file_held_by_another_process, capsys):
    from pipeline.main import main
    from pipeline.query import main as query_main
    path, pid = file_held_by_another_process
    events = path.parent / "in.jsonl"
    events.write_text('{"type":"track","event":"A","userId":"u"}\n')
    assert main(["--input_files", str(events), "--warehouse", f"duckdb:///{path}"]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"sluice: error: --warehouse duckdb:///{path}: {path} is open in another process "
                           f"(PID {pid}: ") and "import duckdb" in line  # the holder's command line
    assert query_main([f"duckdb:///{path}"]) == 2  # a person's query is refused the same way
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("sluice.query: error: ") and f"(PID {pid}: " in line


@pytest.mark.parametrize("kind", ["text file", "directory"])
def test_a_warehouse_that_is_no_duckdb_database_is_one_line_and_exit_2(tmp_path, capsys, kind):
    from pipeline.main import main
    path = tmp_path / "w.duckdb"
    if kind == "directory":
        path.mkdir()
        reason = "Is a directory"
    else:
        path.write_text("not a database\n")
        reason = "not a valid DuckDB database file"
    events = tmp_path / "in.jsonl"
    events.write_text('{"type":"track","event":"A","userId":"u"}\n')
    warehouse = f"duckdb:///{path}"
    for args, named in ((["--input_files", str(events)], f"--warehouse {warehouse}: "),  # a run
                        (["replay"], "--warehouse: "), (["replay", "--dry_run"], "--warehouse: ")):
        assert main([*args, "--warehouse", warehouse]) == 2, args
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"sluice: error: {named}{path}: not readable as a DuckDB database (IO Error: ")
        assert reason in line, line
    assert path.is_dir() if kind == "directory" else path.read_text() == "not a database\n"  # left as it was
