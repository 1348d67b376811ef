"""The collector's server process: uvicorn (httptools + uvloop, one worker) serving
collector.app, with the bounds slow and hostile clients need, and a drain on SIGTERM/SIGINT.

uvicorn was chosen over granian by benchmarks/collector.py (docs/benchmarks.md, "Collector"):
answering a bare 200 on one core at batch 1, it costs 16 to 19% less CPU per request (35 against
43 µs) and answers as many or more; and its protocol is Python that runs in this process's
event loop, which the deadlines below and the ordered drain need.

Bounds (uvicorn has none of the first three by itself):
- header deadline: a request's line and headers must arrive within HEADER_TIMEOUT seconds of
  its first byte (of the connection being opened, for the first request); a client sending
  headers byte by byte is disconnected then;
- body deadline: the body within BODY_TIMEOUT seconds of the headers;
- both deadlines are the client's: a connection whose bytes wait unread in the kernel when its
  deadline passes is kept (the server was too busy to read them: 10,000 connections on a loaded
  2-core machine), and cut at a later sweep that finds nothing unread;
- request line + headers at most MAX_HEADER_BYTES: past it 431 and the connection closed (raw
  bytes are counted as they arrive, so a header line that never ends is cut there too);
- an idle keep-alive connection is closed after KEEP_ALIVE_TIMEOUT seconds;
- at most MAX_CONNECTIONS connections at once (uvicorn's limit_concurrency: past it requests
  are answered 503 `too_many_connections` with Retry-After: 1, which SDKs retry), BACKLOG
  connections waiting to be accepted;
- bodies: at most max_request_bytes each and the app's body budget in all (collector.app).

Shutdown (SIGTERM or SIGINT): /ready answers 503, the listening socket is closed (no new
connections), idle connections are closed, requests in flight finish (their answers carry
`Connection: close`) for at most DRAIN_SECONDS, then `sink.close()` makes every accepted record
durable and handed off (embedded mode: loaded into the warehouse), and the process exits 0.
A second SIGINT stops waiting for requests in flight.
"""
import asyncio
import contextlib
import errno
import fcntl
import gc
import logging
import resource
import signal
import socket
import struct
import termios
import threading

import uvicorn
from uvicorn.protocols.http import httptools_impl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from collector.app import App, echo_cors
from collector.settings import CollectorSettings
from collector.sinks import Sink

log = logging.getLogger("sluice.collector")

HEADER_TIMEOUT = 10.0
BODY_TIMEOUT = 30.0
KEEP_ALIVE_TIMEOUT = 5
MAX_HEADER_BYTES = 16 * 1024
MAX_CONNECTIONS = 16384
BACKLOG = 4096
SWEEP_SECONDS = 1.0         # how often deadlines are checked: they hold to within this
DRAIN_SECONDS = 8           # Cloud Run's grace period is 10 s: 8 for requests, the rest for the sink

_TOO_LARGE = (b'{"success":false,"code":"headers_too_large","message":"the request line and headers '
              b'are over %d bytes"}' % MAX_HEADER_BYTES)


def _too_large_answer(origin) -> bytes:
    """The 431, with CORS headers for a browser's request (its Origin, when it came before the
    bound): without them the SDK sees a CORS error, not the status."""
    cors = b"".join(name + b": " + value + b"\r\n" for name, value in echo_cors(origin) or [])
    return (b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: %d\r\n%s\r\n" % (len(_TOO_LARGE), cors)) + _TOO_LARGE


_BUSY = (b'{"success":false,"code":"too_many_connections","message":"the collector has too many connections '
         b'now; send again later"}')


async def _too_many_connections(scope, receive, send):
    """What a request past MAX_CONNECTIONS is answered: uvicorn's own answer is a text/plain 503
    without Retry-After; this one is the collector's JSON refusal, asking to retry in a second."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(_BUSY)).encode()),
               (b"retry-after", b"1"), (b"connection", b"close")]
    origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
    headers += echo_cors(origin) or []   # so analytics.js can read the Retry-After
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _BUSY})


# uvicorn's httptools protocol serves the module's `service_unavailable` app past limit_concurrency.
httptools_impl.service_unavailable = _too_many_connections


class StartError(Exception):
    """The collector cannot start (the address is taken, the sink cannot open): one line."""


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header deadline, a body deadline and a header size
    bound (see the module docstring)."""

    header_timeout, body_timeout, max_header_bytes = HEADER_TIMEOUT, BODY_TIMEOUT, MAX_HEADER_BYTES

    # Deadlines are a time on each connection, checked by one sweep a second over the server's
    # connections (uvicorn's server_state.connections), not a timer per request: arming and
    # cancelling two timers a request cost more than the rest of this class.
    def connection_made(self, transport):
        self._header_bytes = 0
        self._refused = False
        # The head's raw bytes, for a header that never ends: httptools keeps a header's name and
        # value until its line ends and calls on_header only then, so a client sending `X-Big: `
        # and then endless `a` would be held whole (hundreds of MB) until the header deadline.
        self._in_head = True        # between a message's first byte and on_headers_complete
        self._head_raw = 0          # bytes of whole reads that were all head, of the current head
        self._whole_read_head = True
        super().connection_made(transport)
        self._deadline_at = self.loop.time() + self.header_timeout
        state = self.server_state
        if not getattr(state, "sluice_sweeping", False):
            state.sluice_sweeping = True
            self.loop.call_later(SWEEP_SECONDS, _sweep, self.loop, state)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        # A read counts towards the head when every byte of it is head: no part of an earlier
        # message (its head's end, its body) came first in it. The read in which a message began
        # after another one's bytes is not counted (one read at most: uvloop's 256 KiB); its
        # complete headers still are, by on_url/on_header.
        self._whole_read_head = True
        super().data_received(data)
        if self._in_head and self._whole_read_head and not self._refused:
            self._head_raw += len(data)
            if self._head_raw > self.max_header_bytes:
                self._refuse_431()

    def send_400_response(self, msg: str) -> None:
        if not self.transport.is_closing():
            super().send_400_response(msg)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = self._head_raw = 0
        self._in_head = True
        if self._deadline_at is None:
            self._deadline_at = self.loop.time() + self.header_timeout

    def _refuse_431(self):
        self._refused = True
        self._deadline_at = None
        if not self.transport.is_closing():
            origin = next((value for name, value in self.headers or () if name == b"origin"), None)
            self.transport.write(_too_large_answer(origin))
            self.transport.close()

    def _too_large(self):
        self._refuse_431()
        raise ConnectionAbortedError("headers too large")   # stops the parser; answered above

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            self._too_large()
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn 0.54's on_header, with the bytes counted
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header_bytes:
            self._too_large()
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = self._whole_read_head = False
        self._deadline_at = self.loop.time() + self.body_timeout
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._whole_read_head = False
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._whole_read_head = False
        self._deadline_at = None
        super().on_message_complete()


def _unread(connection) -> bool:
    """Whether bytes the client sent wait in the kernel, not yet read by this process."""
    try:
        fd = connection.transport.get_extra_info("socket").fileno()
        return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0] > 0
    except (AttributeError, OSError, ValueError):
        return False


def _sweep(loop, state):
    """Close the connections whose header or body deadline has passed; again in a second.

    One whose bytes wait unread is spared: the sweep is a timer, and libuv runs timers before it
    polls for reads, so after the loop was busy for a while (thousands of requests at once on a
    loaded machine) a request that arrived seconds before its deadline is still in the kernel.
    Closing it would drop, unanswered, a request the client sent in time (638 of 10,000 in a
    test under load). Its deadline stays passed: the next sweep cuts it if the bytes read were
    not the rest of its head or body, so a slow client gains only as long as the server lags."""
    now = loop.time()
    for connection in list(state.connections):
        deadline = getattr(connection, "_deadline_at", None)
        if deadline is not None and deadline < now and not connection.transport.is_closing() \
                and not _unread(connection):
            connection._deadline_at = None
            connection.transport.close()
    loop.call_later(SWEEP_SECONDS, _sweep, loop, state)


class _Server(uvicorn.Server):
    """uvicorn's server, except that serve() installs the signal handlers itself (uvicorn's own
    re-raise the signal after its shutdown, which would kill the process before the sink is
    closed, and are only there while uvicorn serves)."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


@contextlib.contextmanager
def _draining_on_signals(server: _Server, app: App):
    """SIGTERM/SIGINT from the start (the sink may take a while to open) to the end (the sink
    may take a while to close): each starts the drain; a second SIGINT stops waiting for the
    requests in flight (uvicorn's force_exit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(sig, frame):
        name = signal.Signals(sig).name
        if not server.should_exit:
            log.warning("collector: %s received: draining (no new connections, requests in flight "
                        "finish, then the sink is closed)", name)
        else:
            log.warning("collector: %s received while draining", name)
        app.draining = True
        server.handle_exit(sig, frame)

    original = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in original.items():
            signal.signal(sig, handler)


# The cyclic collector's young generation is examined every GC_YOUNG_THRESHOLD net allocations of
# tracked objects, each time walking the objects of the requests in flight. Python's default, 700,
# ran it about 140 times a second under the batch-1 benchmark; most of a request's objects die by
# reference counting and never count towards 10,000 (a few collections in 5 s).
GC_YOUNG_THRESHOLD = 10_000


def settle_heap() -> None:
    """Called by the process serving the collector once it listens, its modules imported (Beam's
    too with the debugger on, about 135,000 objects): they are moved out of the cyclic collector's
    reach (gc.freeze), so its full collections, which the requests' garbage triggers every few
    seconds, no longer walk them (90 ms each under load), and the young generation is examined
    less often. In the process's entry point only, never in a library call: it is process-wide."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def _raise_file_limit():
    """Each connection is a file descriptor: take the hard limit, so MAX_CONNECTIONS can be met."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


async def serve(settings: CollectorSettings, sink: Sink, host: str, port: int, describe_sink: str,
                on_listening=None) -> int:
    """Run the collector until SIGTERM/SIGINT; 0 once drained and the sink closed."""
    _raise_file_limit()
    app = App(settings, sink)
    try:
        sock = listening_socket(host, port)
    except socket.gaierror as exc:
        raise StartError(f"--host {host}: not an address to listen on ({exc.strerror})") from None
    except OSError as exc:
        option = "--host" if exc.errno == errno.EADDRNOTAVAIL else "--port"
        raise StartError(f"{option}: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    config = uvicorn.Config(
        app, loop="none", http=BoundedProtocol, ws="none", lifespan="off", interface="asgi3",
        access_log=False, log_level="warning", log_config=None, proxy_headers=False, server_header=False,
        timeout_keep_alive=KEEP_ALIVE_TIMEOUT, limit_concurrency=MAX_CONNECTIONS, backlog=BACKLOG,
        timeout_graceful_shutdown=DRAIN_SECONDS)
    server = _Server(config)
    with _draining_on_signals(server, app):
        try:
            await sink.start()
        except Exception as exc:  # noqa: BLE001 - any reason, named on one line
            sock.close()
            raise StartError(f"the sink ({describe_sink}) cannot start: {type(exc).__name__}: {exc}") from exc
        return await _serve_then_close(server, app, sock, settings, sink, describe_sink, on_listening)


async def _serve_then_close(server, app, sock, settings, sink, describe_sink, on_listening) -> int:
    try:
        address = sock.getsockname()
        where = f"http://[{address[0]}]:{address[1]}" if sock.family == socket.AF_INET6 else \
            f"http://{address[0]}:{address[1]}"
        names = ", ".join(s.name + ("" if s.enabled else " (disabled)") for s in settings.sources) or "none"
        log.info("collector listening on %s, sink %s, sources: %s", where, describe_sink, names)
        if on_listening:
            on_listening(app, address)
        await server.serve(sockets=[sock])
    finally:
        app.draining = True
        log.info("collector: requests drained; closing the sink %s", describe_sink)
        await sink.close()
    log.info("collector stopped")
    return 0


def run(settings: CollectorSettings, sink: Sink, host: str, port: int, describe_sink: str) -> int:
    import uvloop
    return uvloop.run(serve(settings, sink, host, port, describe_sink))
