"""The collector's ASGI app: raw ASGI, no framework on the hot path, orjson for every body.

POST to an event path: the body is read up to `max_request_bytes` (past it 413 at once, the
connection closed so the rest is never read), judged by collector.requests.handle, checked
against the source's allowed origins (a browser's Origin header), counted against the source's
rate limit (collector.ratelimit), then `await sink.put([record])`: the 200 `{"success": true}`
is sent only once the sink says the record is durable. A Refusal becomes its status, headers
and JSON body; SinkUnavailable 503 with Retry-After; any other exception 500 with a JSON body,
logged with its traceback (never the body, the query or a settings path's key: they may hold
write keys and personal data). The server keeps serving.

GET /health (alive), /ready (the sink can take records; 503 while shutting down), /metrics
(Prometheus text), /v1/projects/{writeKey}/settings (analytics.js), /sourceConfig/ (the
RudderStack JS SDK). OPTIONS: CORS preflights.

CORS. A preflight carries no write key (browsers never send Authorization on it), so the app
cannot tell which source it is for: it answers every preflight on a known path with the
listed methods and headers for the requesting origin. The source's `allowed_origins` are
enforced on the actual request, where the key names the source: a request carrying an Origin
the source does not allow is refused 403 `origin_not_allowed` and nothing is kept (a browser
always sends Origin cross-origin, so a page on another site cannot feed a source events; a
server-side SDK sends none and is not concerned). Responses to a known source from an allowed
origin carry `Access-Control-Allow-Origin` (the origin itself, or `*` when the source allows
any), `Vary: Origin` and `Access-Control-Expose-Headers: Retry-After, X-RateLimit-Reset` so
analytics.js can honour a 429's Retry-After. Refusals that name no source (400, 401, 413 before
the key is known) echo the origin: they hold nothing but the refusal. analytics.js's settings
(GET /v1/projects/{key}/settings) are answered for any key and origin: refusing them would not
stop the events (those are refused anyway) but would make analytics.js report its failure to
api.segment.io from the visitor's browser.
"""
import asyncio
import logging
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import orjson

from collector.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, UNKNOWN_SOURCE, Metrics
from collector.ratelimit import RateLimiter
from collector.requests import (Refusal, Request, basic_user, find_source, from_trusted_proxy, handle,
                                received_at, route, source_before_body, trusted_networks)
from collector.settings import CollectorSettings
from collector.sinks import Sink, SinkUnavailable
from collector.sinks.pubsub import PubSubSink

log = logging.getLogger("sluice.collector")

JSON = b"application/json"
OK_BODY = b'{"success":true}'
OK_HEADERS = [(b"content-length", b"%d" % len(OK_BODY)), (b"content-type", JSON)]
ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, Content-Encoding, X-Retry-Count"
EXPOSE_HEADERS = b"Retry-After, X-RateLimit-Reset"
# Settings and sourceConfig answers depend on the request (its Host when no public_url is set,
# its Origin): a shared cache must not keep one for other visitors.
NO_STORE = b"no-store"
PREFLIGHT_MAX_AGE = "86400"   # browsers cap it (Chrome: 2 h); a day asks for as much as they allow
# Bodies held in memory at once, across requests: past it a request is answered 503 (retried by
# every SDK) instead of buffered. With uvicorn's own buffer (64 KiB a connection before it stops
# reading) and the connection limit (collector.server), this bounds the memory requests take.
DEFAULT_BODY_BUDGET = 128 * 1024 * 1024

_SETTINGS_PREFIX, _SETTINGS_SUFFIX = "/v1/projects/", "/settings"


class App:
    """The ASGI application. `sink` has been started by the caller (collector.server), which
    also closes it after the server has drained."""

    def __init__(self, settings: CollectorSettings, sink: Sink, metrics: Metrics = None,
                 limiter: RateLimiter = None, body_budget: int = DEFAULT_BODY_BUDGET, routes: dict = None):
        self.settings, self.sink = settings, sink
        # Other POST endpoints of the same process (embedded mode: /_sluice/query): path ->
        # `async (client, headers, body) -> (status, headers dict, body)`; bodies read as events' are.
        self.routes = dict(routes or {})
        # The Pub/Sub sink publishes attributes (source, received_at, content_type); the others
        # keep only the record, which holds source and receivedAt, so they are not built for them.
        self._attributes = isinstance(sink, PubSubSink)
        self.metrics = metrics or Metrics()
        self.limiter = limiter or RateLimiter()
        self.max_bytes = settings.limits.max_request_bytes
        self.body_budget, self.body_bytes = body_budget, 0
        # collector.public_url: (host[/path], scheme) for analytics.js's settings, never the client's Host
        public = urlsplit(settings.public_url) if settings.public_url else None
        self.public = (public.netloc + public.path.rstrip("/"), public.scheme) if public else None
        self.draining = False   # set by collector.server on SIGTERM: /ready answers 503
        self.debugger = None    # collector.debugger.service.Debugger, installed once listening
        self.on_accepted = None  # (record, source name, events) once durable: the debugger's, when on

    # ------------------------------------------------------------------ ASGI entry

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "http":
            await self.http(scope, receive, send)
        elif kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def http(self, scope, receive, send):
        method, path = scope["method"], scope["path"]
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        origin = headers.get("origin")
        debugger = self.debugger
        if debugger is not None:   # its own paths; and what POSTs to event paths were refused
            if path.startswith("/debugger"):
                return await debugger.http(scope, receive, send)
            if method == "POST" and debugger.on:
                receive, send = debugger.watch(scope, headers, receive, send)
        try:
            if method == "POST":
                await self.post(scope, receive, send, path, headers, origin)
            elif method == "OPTIONS":
                await self.preflight(send, path, headers, origin)
            elif method in ("GET", "HEAD"):
                await self.get(scope, send, path, headers, origin)
            else:
                raise Refusal(405, "method_not_allowed", f"{method} is not answered here",
                              {"allow": ALLOW_METHODS})
        except Refusal as refusal:
            await self.refuse(send, refusal, UNKNOWN_SOURCE, origin)
        except Exception:  # noqa: BLE001 - the server keeps serving; the traceback is logged
            self.metrics.errors += 1
            log.exception("internal error answering %s %s", method, _loggable(path))
            await self.answer(send, 500, orjson.dumps({"success": False, "code": "internal_error",
                                                       "message": "the collector failed to handle the "
                                                                  "request; it was logged"}),
                              UNKNOWN_SOURCE, echo_cors(origin))

    # ------------------------------------------------------------------ events

    async def post(self, scope, receive, send, path, headers, origin):
        other = self.routes.get(path)
        if other is not None:
            return await self.other(other, scope, receive, send, headers)
        if route(path) is None:
            raise Refusal(404, "not_found", "no such path: events go to POST /v1/batch, /v1/track, ...")
        try:   # a key in the headers is judged before the body is read (or counted in the body budget)
            before_body = source_before_body(path, scope["query_string"].decode("latin-1"), headers, self.settings)
        except Refusal as refusal:
            refusal.headers = {**refusal.headers, "connection": "close"}   # the body is left unread
            raise
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise self._too_large(int(length))
        body = await self.read_body(receive)
        if body is None:
            return   # the client went away: nothing to answer, nothing kept
        try:
            client = scope.get("client")
            request = Request("POST", path, scope["query_string"].decode("latin-1"), headers, body,
                              client[0] if client else "")
            now = datetime.now(timezone.utc)
            accepted = handle(request, self.settings, now, before_body)
        finally:
            self.body_bytes -= len(body)
        source = accepted.source
        if source is None:      # /v1/m: answered, ignored (with CORS: else the browser reports an error)
            await self.answer(send, 200, OK_BODY, UNKNOWN_SOURCE, echo_cors(origin))
            return
        name, cors = source.name, None
        try:
            cors = self.cors(source, origin)
            if accepted.record is not None:
                self.limiter.take(source, accepted.events)
                started = time.perf_counter()
                try:
                    if self._attributes:
                        await self.sink.put([accepted.record], [{
                            "source": name, "received_at": received_at(now),
                            "content_type": headers.get("content-type", "")}])
                    else:
                        await self.sink.put([accepted.record])
                except Exception as exc:   # nothing kept: the tokens go back, for the SDK's retry
                    self.limiter.give_back(source, accepted.events)
                    if not isinstance(exc, SinkUnavailable):
                        raise
                    raise Refusal(503, "sink_unavailable", "the collector cannot store events now; "
                                  "send them again later", {"retry-after": str(max(1, int(exc.retry_after)))}) \
                        from None
                self.metrics.observe_handoff(time.perf_counter() - started)
                self.metrics.events[name] += accepted.events
                if self.on_accepted is not None:
                    self.on_accepted(accepted.record, name, accepted.events)
        except Refusal as refusal:
            await self.refuse(send, refusal, name, origin, cors)
            return
        finally:
            self.metrics.bytes[name] += len(body)
        self.metrics.requests[name, 200] += 1
        await send({"type": "http.response.start", "status": 200,
                    "headers": OK_HEADERS + cors if cors else OK_HEADERS})
        await send({"type": "http.response.body", "body": OK_BODY})

    async def other(self, handler, scope, receive, send, headers):
        body = await self.read_body(receive)
        if body is None:
            return
        try:
            client = scope.get("client")
            status, answer_headers, answer = await handler(client[0] if client else "", headers, body)
        finally:
            self.body_bytes -= len(body)
        extra = [(name.encode("latin-1"), str(value).encode("latin-1")) for name, value in answer_headers.items()
                 if name.lower() != "content-type"]
        await self.answer(send, status, answer, UNKNOWN_SOURCE, extra,
                          content_type=answer_headers.get("content-type", "application/json").encode("latin-1"))

    async def read_body(self, receive):
        """The whole body, or None when the client disconnected. Refusal 413 past max_bytes,
        503 past the app's body budget; either way the connection is closed, unread."""
        chunks, size = [], 0
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    self.body_bytes += len(chunk)
                    if size > self.max_bytes:
                        raise self._too_large(size, more=message.get("more_body", False))
                    if self.body_bytes > self.body_budget:
                        raise Refusal(503, "busy", "the collector holds too many request bodies now; "
                                      "send again later", {"retry-after": "1", "connection": "close"})
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    size = -1   # handed over: the caller gives the budget back
                    return body
        finally:
            if size > 0:
                self.body_bytes -= size

    def _too_large(self, size: int, more: bool = False) -> Refusal:
        return Refusal(413, "request_too_large",
                       f"the body is {'over ' if more else ''}{size} bytes, over the {self.max_bytes}-byte limit",
                       {"connection": "close"})

    # ------------------------------------------------------------------ CORS

    def cors(self, source, origin):
        """The CORS headers of an answer to `source` for `origin`; Refusal 403 when the source
        does not allow that origin."""
        if origin is None:
            return None
        allowed = source.allowed_origins
        if "*" in allowed:
            value = "*"
        elif origin in allowed:
            value = origin
        else:
            raise Refusal(403, "origin_not_allowed", f"source {source.name} does not accept events from "
                                                     f"this page's origin")
        return echo_cors(value)

    async def preflight(self, send, path, headers, origin):
        if not (route(path) or path.startswith(_SETTINGS_PREFIX) or path.rstrip("/") == "/sourceConfig"):
            raise Refusal(404, "not_found", "no such path")
        extra = [(b"allow", ALLOW_METHODS.encode())]
        if origin:
            # The headers asked for are allowed, whatever they are: the RudderStack JS SDK sends
            # AnonymousId, SentAt and Rsa-* retry headers, and a header an SDK upgrade adds would
            # otherwise block every event from every browser; the collector acts on none it does
            # not know, and the answer still goes only to allowed origins (checked on the request).
            asked = headers.get("access-control-request-headers", "").strip()
            extra += [(b"access-control-allow-origin", origin.encode("latin-1")),
                      (b"vary", b"Origin, Access-Control-Request-Headers"),
                      (b"access-control-allow-methods", ALLOW_METHODS.encode()),
                      (b"access-control-allow-headers", (asked or ALLOW_HEADERS).encode("latin-1")),
                      (b"access-control-max-age", PREFLIGHT_MAX_AGE.encode())]
        await self.answer(send, 204, b"", UNKNOWN_SOURCE, extra, content_type=None)

    # ------------------------------------------------------------------ GET

    async def get(self, scope, send, path, headers, origin):
        head = scope["method"] == "HEAD"
        if path == "/health":
            await self.answer(send, 200, b'{"status":"ok"}', UNKNOWN_SOURCE, None, head=head)
        elif path == "/ready":
            ready = not self.draining and await self._sink_ready()
            await self.answer(send, 200 if ready else 503,
                              b'{"ready":true}' if ready else b'{"ready":false}', UNKNOWN_SOURCE,
                              None if ready else [(b"retry-after", b"5")], head=head)
        elif path == "/metrics":
            await self.answer(send, 200, self.metrics.render(), UNKNOWN_SOURCE, None,
                              content_type=METRICS_CONTENT_TYPE.encode(), head=head)
        elif path.startswith(_SETTINGS_PREFIX) and path.endswith(_SETTINGS_SUFFIX):
            # Answered for any key and any origin, refusing only the events: analytics.js that
            # cannot load its settings (a 401, or an answer without CORS) posts an error counter
            # to api.segment.io from the visitor's browser. The answer says nothing about the key
            # (it holds only what the caller sent and where this collector is); the events an
            # unknown key, a disabled source or another origin then send are refused.
            key = path[len(_SETTINGS_PREFIX):-len(_SETTINGS_SUFFIX)]
            if not key or "/" in key:
                raise Refusal(404, "not_found", "no such path: /v1/projects/{writeKey}/settings")
            try:
                name = find_source(self.settings, key).name
            except Refusal:
                name = UNKNOWN_SOURCE
            extra = [(b"cache-control", NO_STORE)] + (echo_cors(origin) or [])
            if self.public:
                host, protocol = self.public
            else:   # reached directly (loopback, an IP address): where this request came in
                host = headers.get("x-forwarded-host") if self._from_proxy(scope) else None
                host = host or headers.get("host") or "%s:%d" % tuple(scope["server"])
                protocol = self._protocol(scope, headers)
            body = orjson.dumps({
                "integrations": {"Segment.io": {"apiKey": key, "apiHost": f"{host}/v1", "protocol": protocol}},
                "plan": {"track": {"__default": {"enabled": True}}, "identify": {"__default": {"enabled": True}},
                         "group": {"__default": {"enabled": True}}},
                "edgeFunction": {}, "analyticsNextEnabled": True, "middlewareSettings": {},
                "enabledMiddleware": {}, "metrics": {"sampleRate": 0}, "legacyVideoPluginsEnabled": False,
                "remotePlugins": []})
            await self.answer(send, 200, body, name, extra, head=head)
        elif path.rstrip("/") == "/sourceConfig":
            query = parse_qs(scope["query_string"].decode("latin-1"))
            key = (query.get("writeKey") or [None])[0]
            if not key and headers.get("authorization"):
                key = basic_user(headers["authorization"])
            source = find_source(self.settings, key)
            try:
                cors = self.cors(source, origin)
            except Refusal as refusal:
                return await self.refuse(send, refusal, source.name, origin)
            body = orjson.dumps({"isHosted": True, "source": {
                "id": source.name, "name": source.name, "config": {}, "enabled": True,
                "destinations": [], "workspaceId": "sluice",
                "sourceDefinition": {"id": "sluice", "name": "Javascript", "category": None}}})
            await self.answer(send, 200, body, source.name, [(b"cache-control", NO_STORE)] + (cors or []),
                              head=head)
        else:
            raise Refusal(404, "not_found", "no such path")

    async def _sink_ready(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.sink.ready(), 5))
        except Exception:  # noqa: BLE001 - not ready, whatever the reason; logged for the operator
            log.warning("sink readiness check failed", exc_info=True)
            return False

    def _from_proxy(self, scope) -> bool:
        client = scope.get("client")
        return from_trusted_proxy(client[0] if client else "", trusted_networks(self.settings))

    def _protocol(self, scope, headers) -> str:
        """http or https as the SDK should send: X-Forwarded-Proto from a trusted proxy (Cloud
        Run terminates TLS in front of the container), else the connection's own scheme."""
        if self._from_proxy(scope):
            forwarded = headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
            if forwarded in ("http", "https"):
                return forwarded
        return scope.get("scheme", "http")

    # ------------------------------------------------------------------ answers

    async def refuse(self, send, refusal: Refusal, source_name: str, origin, cors=None):
        self.metrics.refused[refusal.status, refusal.code] += 1
        extra = [(name.encode("latin-1"), str(value).encode("latin-1")) for name, value in refusal.headers.items()]
        extra += cors or echo_cors(origin) or []
        await self.answer(send, refusal.status, refusal.body(), source_name, extra)

    async def answer(self, send, status: int, body: bytes, source_name: str, extra, content_type=JSON,
                     head: bool = False):
        self.metrics.requests[source_name, status] += 1
        headers = [(b"content-length", str(len(body)).encode())]
        if content_type:
            headers.append((b"content-type", content_type))
        if extra:
            headers += extra
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})


def echo_cors(origin):
    """The CORS headers of an answer to `origin` (str or bytes; `*` for a source allowing any):
    an allowed source's answers, and those that name no source and hold nothing but their status
    (a refusal before the key is known, /v1/m, a 431, a 503 past the connection limit), so the
    browser's SDK can read the status and Retry-After instead of reporting a CORS error. None
    without an Origin. (A preflight's answer is built in App.preflight.)"""
    if not origin:
        return None
    return [(b"access-control-allow-origin", origin.encode("latin-1") if isinstance(origin, str) else origin),
            (b"vary", b"Origin"), (b"access-control-expose-headers", EXPOSE_HEADERS)]


def _loggable(path: str) -> str:
    """The path as logged: a settings path's write key replaced."""
    if path.startswith(_SETTINGS_PREFIX):
        return _SETTINGS_PREFIX + "<key>" + _SETTINGS_SUFFIX
    return path[:200]
