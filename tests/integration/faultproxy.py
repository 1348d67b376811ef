"""A fault-injecting HTTP/1.1 reverse proxy for integration tests (standard library only).

The real emulators answer every request correctly, so they cannot show how the pipeline copes
with transient failures: 503/429 storms, connection resets, a request that landed but whose
answer was lost. FaultProxy wraps the real server rather than replacing it: every request is
forwarded unchanged to the upstream on 127.0.0.1 unless a queued fault claims it, so whatever is
not a fault still exercises the real thing. `match` gets the method and the request target
(path and query); queued faults come before fail_for() windows; bodies are buffered whole.
"""
import http.client
import itertools
import json
import socket
import struct
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional
from urllib.parse import urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "proxy-connection"}
GOOGLE_ERRORS = {  # HTTP status -> (google.rpc status, errors[].reason), as Google APIs send them
    408: ("DEADLINE_EXCEEDED", "timeout"), 429: ("RESOURCE_EXHAUSTED", "rateLimitExceeded"),
    500: ("INTERNAL", "internalError"), 502: ("UNAVAILABLE", "badGateway"),
    503: ("UNAVAILABLE", "backendError"), 504: ("DEADLINE_EXCEEDED", "timeout")}
LINGER_0 = struct.pack("ii", 1, 0)  # close() then sends RST, not FIN: the peer sees a reset
Match = Optional[Callable[[str, str], bool]]


@dataclass(frozen=True)
class Fault:
    kind: str  # "status", "reset", "delay" or "after_forward_reset"
    code: int = 0
    retry_after: Optional[int] = None
    body: object = None  # dict: sent as JSON; str: text/plain; bytes: as is; None: Google error
    seconds: float = 0.0

    status = classmethod(lambda cls, code, retry_after=None, body=None:
                         cls("status", code, retry_after, body))
    reset = classmethod(lambda cls: cls("reset"))
    delay = classmethod(lambda cls, seconds: cls("delay", seconds=seconds))
    after_forward_reset = classmethod(lambda cls: cls("after_forward_reset"))
    of = classmethod(lambda cls, fault: cls.status(fault) if isinstance(fault, int) else fault)

    @property
    def name(self) -> str:
        return str(self.code) if self.kind == "status" else self.kind

    def response(self):
        """(headers, body) of a status fault."""
        status, reason = GOOGLE_ERRORS.get(self.code, ("UNKNOWN", "unknown"))
        body = self.body if self.body is not None else {"error": {
            "code": self.code, "message": "injected by FaultProxy", "status": status,
            "errors": [{"reason": reason, "message": "injected"}]}}
        ctype = "text/plain" if isinstance(body, str) else "application/json"
        body = json.dumps(body).encode() if isinstance(body, dict) else body
        body = body.encode() if isinstance(body, str) else body
        retry = [] if self.retry_after is None else [("Retry-After", str(self.retry_after))]
        return [("Content-Type", ctype), *retry], body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like urllib3
    disable_nagle_algorithm = True  # headers and body go out in two writes

    def setup(self):
        super().setup()
        self.upstream = http.client.HTTPConnection(*self.server.proxy.upstream_addr, timeout=60)

    def finish(self):
        self.upstream.close()
        super().finish()

    def log_message(self, *args):  # quiet
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _forward(self, body: bytes):
        drop = HOP_BY_HOP | {"host", "content-length", "expect"} | {
            t.strip().lower() for t in self.headers.get("Connection", "").split(",")}
        has_body = "Content-Length" in self.headers or "Transfer-Encoding" in self.headers
        with self.server.proxy.one_at_a_time:
            return self._exchange(drop, has_body, body)

    def _exchange(self, drop: set, has_body: bool, body: bytes):
        for attempt in (0, 1):  # the upstream may have closed an idle keep-alive connection
            reused = self.upstream.sock is not None
            try:
                self.upstream.putrequest(self.command, self.path, skip_accept_encoding=True)
                for k, v in self.headers.items():
                    if k.lower() not in drop:
                        self.upstream.putheader(k, v)
                if has_body:
                    self.upstream.putheader("Content-Length", str(len(body)))
                self.upstream.endheaders(body if has_body else None)
                resp = self.upstream.getresponse()
                return resp, resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.upstream.close()
                if attempt or not reused:
                    raise

    def _send(self, status: int, reason: str, headers, body: bytes, bodiless=False):
        self.send_response_only(status, reason)  # not send_response(): no Server/Date of ours
        for k, v in headers + ([] if bodiless else [("Content-Length", str(len(body)))]):
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(b"" if bodiless else body)

    def _reset(self):
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
        self.close_connection = True
        self.rfile.close()  # wfile holds no reference to the socket, so close() is the last one
        self.connection.close()

    def _handle(self):
        body, proxy = self._read_body(), self.server.proxy
        fault = proxy._take(self.command, self.path)
        if fault and fault.kind in ("status", "reset"):
            proxy._log(self.command, self.path, fault.name)
            if fault.kind == "reset":
                return self._reset()
            return self._send(fault.code, self.responses.get(fault.code, ("Error",))[0], *fault.response())
        if fault and fault.kind == "delay":
            time.sleep(fault.seconds)
        try:
            resp, data = self._forward(body)
        except OSError as exc:
            proxy._log(self.command, self.path, "upstream_error")
            return self._send(502, "Bad Gateway", [("Content-Type", "text/plain")],
                              f"FaultProxy: upstream failed: {exc!r}".encode())
        proxy._log(self.command, self.path, fault.name if fault else "forwarded")
        if fault and fault.kind == "after_forward_reset":
            return self._reset()
        bodiless = self.command == "HEAD" or resp.status in (204, 304) or resp.status < 200
        drop = HOP_BY_HOP | {t.strip().lower() for t in (resp.getheader("Connection") or "").split(",")}
        drop |= set() if bodiless else {"content-length"}  # HEAD: keep the upstream's length
        self._send(resp.status, resp.reason, [(k, v) for k, v in resp.getheaders() if k.lower() not in drop],
                   data, bodiless)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


class _Server(ThreadingHTTPServer):
    stopping = False

    def process_request(self, request, client_address):  # in the serve_forever thread
        with self.lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        if self.stopping and request.fileno() >= 0:  # abort: no TIME_WAIT left on the proxy's port
            request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_0)
            self.close_request(request)
        else:
            super().shutdown_request(request)
        with self.lock:
            self.connections.discard(request)


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FaultProxy:
    """serialize=True forwards one request at a time: for an upstream (the DuckLake-backed
    BigQuery emulator) whose concurrent commits fail in ways the real service's do not."""

    def __init__(self, upstream: str, serialize: bool = False):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "localhost") or not parts.port:
            raise ValueError(f"FaultProxy forwards only to http://127.0.0.1:PORT, not {upstream!r}")
        self.upstream_addr, self.url, self.requests = ("127.0.0.1", parts.port), "", []
        self._lock, self._queue, self._windows = threading.Lock(), [], []  # queue: (match, Fault)
        self._server = self._thread = None
        self.one_at_a_time = threading.Lock() if serialize else _NoLock()

    def start(self) -> "FaultProxy":
        self._server = server = _Server(("127.0.0.1", 0), _Handler)
        server.proxy, server.lock, server.connections = self, threading.Lock(), set()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        self._thread.join()
        server.stopping = True
        server.server_close()
        deadline = time.monotonic() + 5  # wake the handlers waiting on idle keep-alive connections
        while server.connections and time.monotonic() < deadline:
            with server.lock:
                for conn in server.connections:
                    try:
                        conn.shutdown(socket.SHUT_RD)  # sends nothing; their recv() returns b""
                    except OSError:
                        pass
            time.sleep(0.005)

    __enter__ = start

    def __exit__(self, *exc) -> None:
        self.stop()

    def inject(self, *faults, match: Match = None) -> None:
        with self._lock:
            self._queue.extend((match, Fault.of(f)) for f in faults)

    def fail_for(self, seconds: float, *faults_cycle, match: Match = None) -> None:
        cycle = itertools.cycle([Fault.of(f) for f in faults_cycle or (503,)])
        with self._lock:
            self._windows.append((time.monotonic() + seconds, match, cycle))

    def clear(self) -> None:
        with self._lock:
            self._queue.clear(), self._windows.clear(), self.requests.clear()

    def _take(self, method: str, path: str) -> Optional[Fault]:
        with self._lock:
            for i, (match, fault) in enumerate(self._queue):
                if match is None or match(method, path):
                    return self._queue.pop(i)[1]
            self._windows = [w for w in self._windows if w[0] > time.monotonic()]
            for _, match, cycle in self._windows:
                if match is None or match(method, path):
                    return next(cycle)
        return None

    def _log(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            self.requests.append((method, path, outcome))
