"""Queries while the collector holds the warehouse: the read-only check, the endpoint's
answers (token, loopback, limit, timeout), and `python -m pipeline.query` asking a serving
process over loopback through its serve file."""
import asyncio
import http.server
import io
import json
import os
import stat
import threading
from contextlib import redirect_stderr, redirect_stdout

import orjson
import pyarrow as pa
import pytest

from collector import query
from collector.embedded import EmbeddedLoader, spool_dir_for
from pipeline import query as query_command
from pipeline.main import FileLoads
from tests.collector.test_embedded import event, record, write_spool


@pytest.mark.parametrize("sql", [
    "SELECT 1", "  select * from tracks limit 3;", "WITH a AS (SELECT 1 AS x) SELECT x FROM a", "FROM tracks",
    "DESCRIBE tracks", "SHOW TABLES", "SUMMARIZE tracks", "PRAGMA table_info('tracks')", "pragma show_tables",
    "SELECT 1 -- a comment; DROP TABLE tracks"])
def test_reads_are_allowed(sql):
    assert query.check_read_only(sql)


@pytest.mark.parametrize("sql, code", [
    ("DELETE FROM tracks", "read_only"), ("INSERT INTO tracks VALUES (1)", "read_only"),
    ("DROP TABLE tracks", "read_only"), ("UPDATE users SET x = 1", "read_only"),
    ("CREATE TABLE t AS SELECT 1", "read_only"), ("COPY tracks TO '/tmp/x.csv'", "read_only"),
    ("ATTACH '/tmp/other.duckdb'", "read_only"), ("SET memory_limit = '1GB'", "read_only"),
    ("PRAGMA memory_limit = '1GB'", "read_only"), ("PRAGMA enable_profiling", "read_only"),
    ("EXPLAIN ANALYZE DELETE FROM tracks", "read_only"), ("CHECKPOINT", "read_only"),
    ("INSTALL httpfs", "read_only"), ("CALL pragma_version()", "read_only"), ("BEGIN TRANSACTION", "read_only"),
    ("SELECT 1; DELETE FROM tracks", "one_statement"), ("", "one_statement"), ("SELEKT 1", "invalid_sql")])
def test_anything_else_is_refused(sql, code):
    with pytest.raises(query.QueryRefused) as refused:
        query.check_read_only(sql)
    assert refused.value.code == code and refused.value.status == 400


@pytest.fixture
def held(tmp_path):
    """A warehouse held as `serve` holds it, with 30 events loaded."""
    loads = FileLoads(["--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    write_spool(spool_dir_for(loads.path), [record([event(n) for n in range(30)])])
    loader = EmbeddedLoader(spool_dir_for(loads.path), loads)
    os.makedirs(loader.loaded_dir, exist_ok=True)
    assert loader.run_once()
    yield loads
    loads.close()


def call(endpoint, body, client="127.0.0.1", token="secret", accept="application/json"):
    headers = {"accept": accept}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return asyncio.run(endpoint(client, headers, data))


def test_the_endpoint_answers_a_read_with_rows(held):
    endpoint = query.QueryEndpoint(held.cursor, "secret")
    status, headers, body = call(endpoint, {"sql": "SELECT user_id, timestamp FROM tracks ORDER BY user_id LIMIT 2"})
    assert status == 200 and headers["content-type"] == "application/json"
    answer = orjson.loads(body)
    assert answer["columns"] == ["user_id", "timestamp"] and answer["truncated"] is False
    assert [r[0] for r in answer["rows"]] == ["user-0", "user-1"] and answer["rows"][0][1].startswith("2026-12-02")


def test_the_endpoint_limits_rows(held):
    endpoint = query.QueryEndpoint(held.cursor, "secret", max_rows=10)
    answer = orjson.loads(call(endpoint, {"sql": "SELECT * FROM tracks"})[2])
    assert len(answer["rows"]) == 10 and answer["truncated"] is True
    answer = orjson.loads(call(endpoint, {"sql": "SELECT * FROM tracks", "limit": 3})[2])
    assert len(answer["rows"]) == 3 and answer["truncated"] is True
    status, headers, body = call(endpoint, {"sql": "SELECT * FROM tracks", "limit": 100},
                                 accept=query.ARROW)
    assert status == 200 and headers["x-sluice-truncated"] == "true"
    assert pa.ipc.open_stream(body).read_all().num_rows == 10


@pytest.mark.parametrize("client, token, status, code", [
    ("127.0.0.1", None, 401, "bad_token"), ("127.0.0.1", "wrong", 401, "bad_token"),
    ("10.0.0.7", "secret", 403, "not_loopback"), ("::ffff:192.168.1.2", "secret", 403, "not_loopback")])
def test_the_endpoint_wants_loopback_and_the_token(held, client, token, status, code):
    endpoint = query.QueryEndpoint(held.cursor, "secret")
    answer = call(endpoint, {"sql": "SELECT 1"}, client=client, token=token)
    assert answer[0] == status and orjson.loads(answer[2])["code"] == code
    assert call(endpoint, {"sql": "SELECT 1"}, client="::1")[0] == 200


def test_the_endpoint_changes_nothing(held):
    endpoint = query.QueryEndpoint(held.cursor, "secret")
    for sql in ("DELETE FROM tracks", "SELECT 1; DELETE FROM tracks", "SELECT nextval('x')"):
        status, _, body = call(endpoint, {"sql": sql})
        assert status == 400, body
    for bad in (b"not json", b'{"sql": 3}', b'{"sql": "SELECT 1", "limit": -1}'):
        assert call(endpoint, bad)[0] == 400
    assert held.cursor().execute("SELECT count(*) FROM tracks").fetchone()[0] == 30


def test_a_slow_query_is_stopped(held):
    endpoint = query.QueryEndpoint(held.cursor, "secret", timeout_seconds=0.5)
    status, _, body = call(endpoint, {"sql": "SELECT count(*) FROM range(10000000000) a, range(100) b"})
    assert status == 504 and orjson.loads(body)["code"] == "timeout"
    assert call(endpoint, {"sql": "SELECT 1"})[0] == 200  # the connection is still good


class _Route(http.server.BaseHTTPRequestHandler):
    """The app's route, as collector/app.py mounts it: POST /_sluice/query -> the endpoint."""
    endpoint = None

    def do_POST(self):  # noqa: N802 - the stdlib's name
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer_headers, answer = asyncio.run(self.endpoint(self.client_address[0], headers, body))
        self.send_response(status)
        for name, value in answer_headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def serving(held):
    """`held` served as the collector serves it: the route on 127.0.0.1, the serve file written."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Route)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    token = query.advertise(held.path, "127.0.0.1", server.server_address[1])
    _Route.endpoint = query.QueryEndpoint(held.cursor, token)
    yield held, token
    query.withdraw(held.path, token)
    server.shutdown()


def run_query(*argv) -> tuple:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = query_command.main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_pipeline_query_asks_the_serving_collector(serving):
    held, token = serving
    path = query.serve_file(held.path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert json.load(open(path))["pid"] == os.getpid()

    code, out, _ = run_query(f"duckdb:///{held.path}", "SELECT count(*) AS n FROM tracks")
    assert code == 0 and [line.strip("│ ") for line in out.splitlines() if line.strip("│ ").isdigit()] == ["30"]
    code, out, _ = run_query(f"duckdb:///{held.path}")
    assert code == 0 and "tracks" in out and "_dead_letters" in out
    code, _, err = run_query(f"duckdb:///{held.path}", "DROP TABLE tracks")
    assert code == 2 and "reads only" in err


def test_a_serve_file_left_by_a_killed_collector_is_ignored(held, tmp_path):
    token = query.advertise(held.path, "127.0.0.1", 9)
    info = json.load(open(query.serve_file(held.path)))
    info["pid"] = 2 ** 22 + 12345  # no such process
    with open(query.serve_file(held.path), "w") as handle:
        json.dump(info, handle)
    assert query.find_server(held.path) is None
    query.withdraw(held.path, token)
    assert not os.path.exists(query.serve_file(held.path))
