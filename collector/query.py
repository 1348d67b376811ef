"""Queries while the collector holds the warehouse (embedded mode).

DuckDB lets one process open a database file for writing, and while it is open no other
process can open it at all, not even read-only. The serving collector therefore answers
`python -m pipeline.query` itself: at start it writes `<warehouse>.serve.json` (mode 0600:
host, port, pid, a random token) and removes it at exit; pipeline.query finds that file and
sends its SQL to `POST /_sluice/query` over loopback with the token.

The endpoint answers only loopback peers presenting the token, runs one read-only statement
(SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE, and PRAGMAs that only read) on a fresh cursor
of the process's own connection (it sees committed loads and never waits for the loader),
inside a transaction that is rolled back, returns at most `max_rows` rows, and interrupts a
query still running after `timeout_seconds`. The token keeps other local users out (they
cannot read the 0600 file); the statement check keeps an accident (a DELETE typed into the
wrong window) from changing the warehouse the loader writes.

Answers: JSON `{"columns": [...], "types": [...], "rows": [[...]], "truncated": bool}`, or
with `Accept: application/vnd.apache.arrow.stream` the rows as an Arrow IPC stream (types
kept; pipeline.query prints it as DuckDB would); errors `{"success": false, "code", "message"}`.
"""
import asyncio
import base64
import hmac
import ipaddress
import json
import os
import re
import secrets
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from typing import Callable, NamedTuple

import duckdb
import orjson
import pyarrow as pa

PATH = "/_sluice/query"
ARROW = "application/vnd.apache.arrow.stream"
MAX_ROWS = 10_000
TIMEOUT_SECONDS = 30.0
MAX_CONCURRENT = 4
MAX_SQL_BYTES = 64 * 1024
_READ_TYPES = {duckdb.StatementType.SELECT}
# PRAGMAs that only look (DuckDB reads `PRAGMA name = value` as SET, refused anyway).
_READ_PRAGMAS = {"table_info", "show", "show_tables", "show_tables_expanded", "show_databases", "database_list",
                 "database_size", "storage_info", "metadata_info", "functions", "collations", "version",
                 "platform", "user_agent", "rtti"}
_PRAGMA_NAME = re.compile(r"\s*pragma\s+([a-z_][a-z0-9_]*)", re.IGNORECASE)


class QueryRefused(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def answer(self) -> tuple:
        return self.status, {"content-type": "application/json"}, orjson.dumps(
            {"success": False, "code": self.code, "message": self.message})


def serve_file(warehouse_path: str) -> str:
    return os.path.abspath(warehouse_path) + ".serve.json"


def advertise(warehouse_path: str, host: str, port: int) -> str:
    """Write `<warehouse>.serve.json` (0600) for pipeline.query; return the token it holds."""
    token = secrets.token_urlsafe(32)
    path = serve_file(warehouse_path)
    temporary = f"{path}.{os.getpid()}.tmp"
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"host": host if host not in ("0.0.0.0", "::", "") else "127.0.0.1", "port": port,
                   "pid": os.getpid(), "token": token, "path": PATH,
                   "started_at": datetime.now(timezone.utc).isoformat()}, handle)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return token


def withdraw(warehouse_path: str, token: str) -> None:
    """Remove the serve file, if it is still this process's (its token)."""
    path = serve_file(warehouse_path)
    try:
        with open(path) as handle:
            if json.load(handle).get("token") == token:
                os.remove(path)
    except (OSError, ValueError):
        pass


# -- the endpoint (in the collector) -------------------------------------------------------
def check_read_only(sql: str) -> str:
    """The one statement of `sql` if it only reads; else QueryRefused (400)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(400, "invalid_sql", str(exc).splitlines()[0]) from None
    if len(statements) != 1:
        raise QueryRefused(400, "one_statement", f"send exactly one statement (got {len(statements)})")
    statement = statements[0]
    if statement.type == duckdb.StatementType.PRAGMA:
        match = _PRAGMA_NAME.match(statement.query)
        if match and match.group(1).lower() in _READ_PRAGMAS:
            return statement.query
    elif statement.type in _READ_TYPES:
        return statement.query
    kind = str(statement.type).rsplit(".", 1)[-1]
    raise QueryRefused(400, "read_only", f"the serving collector answers reads only (SELECT, WITH, DESCRIBE, "
                                         f"SHOW, read-only PRAGMAs), not {kind}; stop it to change the warehouse")


def _is_loopback(client: str) -> bool:
    try:
        address = ipaddress.ip_address((client or "").split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


class QueryEndpoint:
    """`POST /_sluice/query`: `await endpoint(client, headers, body) -> (status, headers, body)`.
    cursor_factory: a fresh DuckDB connection to the held warehouse (pipeline.main.FileLoads.cursor)."""

    def __init__(self, cursor_factory: Callable, token: str = None, max_rows: int = MAX_ROWS,
                 timeout_seconds: float = TIMEOUT_SECONDS, max_concurrent: int = MAX_CONCURRENT):
        self._cursor_factory, self.token = cursor_factory, token
        self._max_rows, self._timeout = max_rows, timeout_seconds
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._base = None
        self._base_lock = threading.Lock()

    async def __call__(self, client: str, headers: dict, body: bytes) -> tuple:
        try:
            sql, limit, arrow = self._check(client, headers, body)
            if not self._slots.acquire(blocking=False):
                raise QueryRefused(503, "busy", "too many queries at once; try again")
            try:
                table, truncated = await asyncio.to_thread(self._run, sql, limit)
            finally:
                self._slots.release()
        except QueryRefused as refused:
            return refused.answer()
        if arrow:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            return 200, {"content-type": ARROW, "x-sluice-truncated": str(truncated).lower()}, \
                sink.getvalue().to_pybytes()
        return 200, {"content-type": "application/json"}, orjson.dumps(
            {"columns": table.column_names, "types": [str(t) for t in table.schema.types],
             "rows": [list(row.values()) for row in table.to_pylist()], "truncated": truncated},
            default=_json_default, option=orjson.OPT_NON_STR_KEYS)

    def _check(self, client: str, headers: dict, body: bytes) -> tuple:
        if not _is_loopback(client):
            raise QueryRefused(403, "not_loopback", "queries are answered on loopback only")
        given = headers.get("authorization", "")
        if not (self.token and given.startswith("Bearer ")
                and hmac.compare_digest(given[len("Bearer "):].encode(), self.token.encode())):
            raise QueryRefused(401, "bad_token", "the serve file's token is required (Authorization: Bearer ...)")
        if len(body) > MAX_SQL_BYTES:
            raise QueryRefused(413, "too_large", f"a query is at most {MAX_SQL_BYTES} bytes")
        try:
            request = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise QueryRefused(400, "not_json", 'send {"sql": "...", "limit": N}') from None
        if not isinstance(request, dict) or not isinstance(request.get("sql"), str):
            raise QueryRefused(400, "no_sql", 'send {"sql": "...", "limit": N}')
        limit = request.get("limit", self._max_rows)
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise QueryRefused(400, "bad_limit", "limit: a number of rows, 0 or more")
        return check_read_only(request["sql"]), min(limit, self._max_rows), ARROW in headers.get("accept", "")

    def _run(self, sql: str, limit: int) -> tuple:
        with self._base_lock:
            if self._base is None:  # one connection for queries, apart from the loader's
                self._base = self._cursor_factory()
            cursor = self._base.cursor()
        timer = threading.Timer(self._timeout, cursor.interrupt)
        timer.start()
        started = time.monotonic()
        try:
            cursor.execute("BEGIN TRANSACTION")
            try:
                relation = cursor.sql(sql)
                # A statement without a result has none; else at most one row past the limit,
                # computed (DuckDB stops a LIMIT's input early) and fetched whole.
                table = relation.limit(limit + 1).to_arrow_table() if relation is not None else pa.table({})
            finally:
                cursor.execute("ROLLBACK")
        except duckdb.InterruptException:
            raise QueryRefused(504, "timeout", f"the query ran past {self._timeout:g} s and was stopped") from None
        except duckdb.Error as exc:
            if time.monotonic() - started >= self._timeout:
                raise QueryRefused(504, "timeout", f"the query ran past {self._timeout:g} s and was stopped") from None
            raise QueryRefused(400, "query_failed", str(exc).splitlines()[0]) from None
        finally:
            timer.cancel()
            cursor.close()
        return table.slice(0, limit), table.num_rows > limit


def _json_default(value):
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)  # Decimal, UUID, intervals, ...


# -- the client (pipeline.query) ----------------------------------------------------------
class Served(NamedTuple):
    host: str
    port: int
    pid: int
    token: str
    path: str = PATH


def find_server(warehouse_path: str):
    """The collector serving this warehouse (from its serve file), or None when there is no
    serve file or its process is gone (a killed collector leaves the file behind)."""
    try:
        with open(serve_file(warehouse_path)) as handle:
            info = json.load(handle)
        served = Served(info["host"], int(info["port"]), int(info["pid"]), info["token"], info.get("path", PATH))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    try:
        os.kill(served.pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, someone else's
    return served


class RemoteError(Exception):
    pass


def ask(served: Served, sql: str, limit: int = MAX_ROWS, timeout: float = TIMEOUT_SECONDS + 5) -> tuple:
    """(arrow table, truncated) for `sql`, from the collector; RemoteError naming its refusal,
    ConnectionError when nothing answers."""
    request = urllib.request.Request(
        f"http://{served.host}:{served.port}{served.path}", data=orjson.dumps({"sql": sql, "limit": limit}),
        headers={"Authorization": f"Bearer {served.token}", "Content-Type": "application/json", "Accept": ARROW},
        method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
    try:
        with opener.open(request, timeout=timeout) as response:
            data = response.read()
            truncated = response.headers.get("x-sluice-truncated") == "true"
    except urllib.error.HTTPError as exc:
        try:
            message = orjson.loads(exc.read()).get("message")
        except (orjson.JSONDecodeError, AttributeError):
            message = None
        raise RemoteError(message or f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ConnectionError(str(getattr(exc, "reason", exc))) from None
    return pa.ipc.open_stream(data).read_all(), truncated
