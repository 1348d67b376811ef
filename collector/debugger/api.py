"""The debugger's HTTP: the test API and the page's live stream (docs/debugger.md).

    GET  /debugger                                                     the page (page/: HTML, CSS, JS)
    GET  /debugger/api/events?source=&type=&event=&status=&q=&limit=   newest first
    POST /debugger/api/reset                                           every entry and count gone
    GET  /debugger/stream                                              server-sent events

Access: with `debugger.token` set, every request needs it, on loopback too, sent as
`Authorization: Bearer TOKEN` or `?token=TOKEN` (401 otherwise); without one (loopback only)
the Host header must name loopback too, so a web page that rebinds its own name to 127.0.0.1
cannot read the entries (403), a request a proxy forwarded (Forwarded, X-Forwarded-*,
X-Real-IP, Via; or any once collector.trusted_proxies is set) is refused (403). Whatever the
method and token, a request another site's page made (Sec-Fetch-Site cross-site or same-site,
or an Origin that is not this Host) is refused (403 cross_origin). Nothing
here sends CORS headers: other origins' pages cannot read the answers. The page's script and
style hold no data and are answered without the token (the page passes its `?token=` on).
"""
import asyncio
import hmac
import logging
import os
import threading
from collections import deque
from urllib.parse import parse_qs, urlsplit

import orjson

from collector.debugger.settings import is_loopback
from collector.debugger.store import STATUSES

JSON = b"application/json"
DEFAULT_LIMIT = 100
MAX_STREAMS = 16             # pages open at once; each holds a bounded queue
STREAM_QUEUE_BYTES = 1024 * 1024   # a slow page's messages waiting, at most; past it it is told to reload
STREAM_POLL_SECONDS = 1.0    # how soon a stream notices the collector draining
KEEP_ALIVE_SECONDS = 15.0
_FILTERS = ("source", "type", "event", "status", "q")
# what a reverse proxy adds (RFC 7239, the de facto X-Forwarded-*, nginx's X-Real-IP, RFC 9110's Via)
_PROXY_HEADERS = ("forwarded", "x-real-ip", "via")
_streams = set()
_PAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "page")
_ASSETS = {"/debugger": ("index.html", b"text/html; charset=utf-8"),
           "/debugger/page.js": ("page.js", b"text/javascript; charset=utf-8"),
           "/debugger/page.css": ("page.css", b"text/css; charset=utf-8")}
# Whatever an event holds, the page runs only its own script: defense in depth beside page.js
# putting every value in as text. no-referrer: a ?token= in the page's address goes nowhere else.
_PAGE_HEADERS = [(b"content-security-policy", b"default-src 'none'; script-src 'self'; style-src 'self'; "
                  b"connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
                 (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                 (b"cache-control", b"no-store")]


# an answer holding events is data, never a document: a browser must not sniff it into HTML nor
# run or load anything from it if someone opens it directly
_JSON_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"content-security-policy", b"default-src 'none'")]
_LOG = logging.getLogger("sluice.collector.debugger")


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


async def answer(debugger, scope, receive, send) -> None:
    """The app's hook for /debugger paths (outside the app's own error handling, so a failure
    here is answered here: 500 JSON, logged, never a traceback to the client)."""
    started = [False]

    async def tracked(message):
        started[0] = started[0] or message["type"] == "http.response.start"
        await send(message)

    try:
        await _answer(debugger, scope, receive, tracked)
    except Exception:  # noqa: BLE001 - answered and logged; the collector goes on
        _LOG.exception("debugger: %s %s failed", scope.get("method"), scope.get("path"))
        if not started[0]:
            await _json(send, 500, {"success": False, "code": "internal_error",
                                    "message": "the debugger failed to answer (logged)"})


async def _answer(debugger, scope, receive, send) -> None:
    method, path = scope["method"], scope["path"].rstrip("/")
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    query = parse_qs(scope["query_string"].decode("latin-1"))
    try:
        if not debugger.on:
            raise _Refused(403, "debugger_off", "the debugger is off: " + debugger.why_off)
        _same_origin(headers)
        if path in _ASSETS and path != "/debugger":
            _method(method, "GET")
            return await _asset(send, path, method == "HEAD")
        _authorize(debugger, headers, query)
        if path == "/debugger":
            _method(method, "GET")
            await _asset(send, path, method == "HEAD")
        elif path == "/debugger/api/events":
            _method(method, "GET")
            await _json(send, 200, events(debugger, query))
        elif path == "/debugger/api/reset":
            _method(method, "POST")
            debugger.store.reset()
            await _json(send, 200, {"reset": True})
        elif path == "/debugger/stream":
            _method(method, "GET", head=False)   # a stream has no end to show the headers of
            await stream(debugger, receive, send)
        else:
            raise _Refused(404, "not_found", "no such debugger path: /debugger/api/events, /debugger/api/reset "
                                             "(POST), /debugger/stream")
    except _Refused as refused:
        await _json(send, refused.status, {"success": False, "code": refused.code, "message": refused.message},
                    refused.headers)


def events(debugger, query: dict) -> dict:
    """The answer to GET /debugger/api/events: the matching entries, newest first, and the
    store's counts (`sampling`: entries kept, events skipped by the rate bound, per source)."""
    filters = {name: query[name][-1] for name in _FILTERS if query.get(name) and query[name][-1] != ""}
    status = filters.get("status")
    if status is not None and status not in STATUSES:
        raise _Refused(400, "invalid_status", f"status must be one of {', '.join(STATUSES)}")
    limit = query.get("limit", [str(DEFAULT_LIMIT)])[-1]
    # isdecimal, not isdigit: "²" is a digit int() cannot read; ASCII only, and not of any length
    if not (limit.isascii() and limit.isdecimal() and len(limit) <= 9) or int(limit) < 1:
        raise _Refused(400, "invalid_limit", "limit must be a positive integer")
    found = debugger.store.query(limit=int(limit), **filters)
    return {"events": [entry.as_json() for entry in found], "count": len(found), "sampling": debugger.store.stats()}


def _authorize(debugger, headers: dict, query: dict) -> None:
    token = debugger.token
    if token is None:   # loopback only: the Host must say so as well (DNS rebinding) ...
        if not is_loopback(_hostname(headers.get("host", ""))):
            raise _Refused(403, "host_not_loopback", "the debugger answers only requests addressed to a loopback "
                                                     "host (localhost, 127.0.0.1, [::1]) without a token")
        # ... and no proxy may have passed it on: a reverse proxy on the same host connects from
        # and names loopback, so without this the debugger would answer whoever reached the proxy
        forwarded = [name for name in headers if name in _PROXY_HEADERS or name.startswith("x-forwarded-")]
        if forwarded:
            raise _Refused(403, "proxied_without_token", f"the debugger without a token answers only direct requests "
                                                         f"on loopback; this one came through a proxy "
                                                         f"({forwarded[0]}): set debugger.token")
        if debugger.collector.limits.trusted_proxies:
            raise _Refused(403, "proxied_without_token", "collector.trusted_proxies is set, so requests may come "
                                                         "through a proxy: the debugger needs debugger.token")
        return
    given = None
    authorization = headers.get("authorization", "")
    scheme, _, credentials = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        given = credentials.strip()
    elif query.get("token"):
        given = query["token"][-1]
    if not given or not hmac.compare_digest(given.encode(), token.encode()):
        raise _Refused(401, "invalid_debugger_token" if given else "missing_debugger_token",
                       "the debugger needs its token (debugger.token): Authorization: Bearer TOKEN or ?token=TOKEN",
                       {"www-authenticate": 'Bearer realm="sluice debugger"'})


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _same_origin(headers: dict) -> None:
    """Only the debugger's own page (or a client that is no browser page) is answered, whatever
    the method: another site's page, though it cannot read the answers, could time them (how
    long ?q= takes says whether an event holds a string) or hold the stream's slots (no-cors
    fetches of /debugger/stream, so the real page gets 503). Browsers say where a request comes
    from in Sec-Fetch-Site and, for most of them, Origin."""
    site = headers.get("sec-fetch-site", "").strip().lower()
    if site in ("cross-site", "same-site"):
        raise _Refused(403, "cross_origin", f"the debugger answers only its own page, not another site's "
                                            f"(Sec-Fetch-Site: {site})")
    origin = headers.get("origin")
    if origin is not None and urlsplit(origin.strip()).netloc != headers.get("host"):
        raise _Refused(403, "cross_origin", "the debugger answers only its own page, not another site's "
                                            "(its Origin is not this host)")


def _method(method: str, allowed: str, head: bool = True) -> None:
    if method != allowed and not (head and allowed == "GET" and method == "HEAD"):
        raise _Refused(405, "method_not_allowed", f"use {allowed}", {"allow": allowed})


async def _asset(send, path: str, head: bool) -> None:
    name, content_type = _ASSETS[path]
    with open(os.path.join(_PAGE_DIR, name), "rb") as handle:   # a few KB, read when asked: edits show at once
        body = handle.read()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
                + _PAGE_HEADERS})
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _json(send, status: int, value, headers: dict = None) -> None:
    body = orjson.dumps(value)
    extra = [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", JSON), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store")] + _JSON_HEADERS + extra})
    await send({"type": "http.response.body", "body": body})


# -- the live stream -------------------------------------------------------------------------

LAGGED = b"event: lagged\ndata: {}\n\n"


class _Stream:
    """One page's messages not yet sent, bounded in bytes (the messages themselves are shared
    by every stream: _Hub serialises each once). Past STREAM_QUEUE_BYTES what waits is dropped
    for one `lagged` message, and nothing more is queued until the page has been sent it."""
    __slots__ = ("messages", "bytes", "lagged", "ready")

    def __init__(self):
        self.messages, self.bytes, self.lagged, self.ready = deque(), 0, False, asyncio.Event()

    def put(self, message: bytes) -> None:
        if self.lagged:
            return
        if self.bytes + len(message) > STREAM_QUEUE_BYTES:
            self.messages.clear()
            message, self.lagged = LAGGED, True
            self.bytes = 0
        self.messages.append(message)
        self.bytes += len(message)
        self.ready.set()

    async def get(self, timeout: float) -> bytes:
        if not self.messages:
            self.ready.clear()
            await asyncio.wait_for(self.ready.wait(), timeout)
        message = self.messages.popleft()
        self.bytes -= len(message)
        if message is LAGGED:
            self.lagged = False
        return message


class _Hub:
    """The store's one listener while any page's stream is open: each change is serialised once,
    on the thread that made it, and handed to every stream on the event loop."""

    def __init__(self, loop):
        self.loop, self.streams, self._loop_thread = loop, set(), threading.get_ident()

    def listener(self, kind: str, entry) -> None:   # on the event loop (entries) or the loader's thread (fates)
        data = orjson.dumps(entry.as_json()) if entry is not None else b"{}"
        message = b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
        if threading.get_ident() == self._loop_thread:   # no wake-up of the loop for each entry
            self._fan_out(message)
        else:
            self.loop.call_soon_threadsafe(self._fan_out, message)

    def _fan_out(self, message: bytes) -> None:
        for queue in self.streams:
            queue.put(message)


def _hub(debugger) -> _Hub:
    hub = getattr(debugger, "stream_hub", None)
    if hub is None:
        hub = debugger.stream_hub = _Hub(asyncio.get_running_loop())
    return hub


async def stream(debugger, receive, send) -> None:
    """Server-sent events: `entry` (a new entry's JSON), `fate` (an entry whose fate is now
    known), `reset`, and `lagged` when this page fell more than STREAM_QUEUE_BYTES behind
    (what it missed is in /debugger/api/events). Ends when the client goes or the collector
    drains (a stream must not hold the drain up)."""
    if len(_streams) >= MAX_STREAMS:
        raise _Refused(503, "too_many_streams", f"at most {MAX_STREAMS} debugger pages at once",
                       {"retry-after": "5"})
    hub = _hub(debugger)
    queue = _Stream()
    gone = asyncio.Event()

    async def watch_client():
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.ensure_future(watch_client())
    _streams.add(queue)
    hub.streams.add(queue)
    if len(hub.streams) == 1:   # the store's listeners say whether a page looks (Debugger.watched)
        debugger.store.listeners.append(hub.listener)
    try:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-store"),
                                (b"x-accel-buffering", b"no")]})
        await send({"type": "http.response.body", "more_body": True,
                    "body": b"event: hello\ndata: " + orjson.dumps(debugger.store.stats()) + b"\n\n"})
        idle = 0.0
        while not gone.is_set() and not debugger.app.draining:
            try:
                message = await queue.get(STREAM_POLL_SECONDS)
            except asyncio.TimeoutError:
                idle += STREAM_POLL_SECONDS
                if idle < KEEP_ALIVE_SECONDS:
                    continue
                message, idle = b": keep-alive\n\n", 0.0
            else:
                idle = 0.0
            await send({"type": "http.response.body", "body": message, "more_body": True})
        if not gone.is_set():
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:   # the page went while a message was on its way: nothing to answer
        pass
    finally:
        hub.streams.discard(queue)
        if not hub.streams and hub.listener in debugger.store.listeners:
            debugger.store.listeners.remove(hub.listener)
        _streams.discard(queue)
        queue.messages.clear()
        watcher.cancel()
