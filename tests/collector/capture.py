"""A real HTTP server on 127.0.0.1 that plays a minimal Segment-compatible collector and records
every request exactly as it arrived, so tests can state what each real SDK puts on the wire.

It answers 200 `{"success": true}` to POSTs unless a script says otherwise (`script`: a list of
(status, {header: value}) used by the first POSTs to event paths, in order); GET
/v1/projects/{key}/settings with the minimal settings analytics.js needs (pointing back at this
server); GET /sourceConfig/ with the minimal RudderStack source config; OPTIONS preflights with
permissive CORS. Every answer carries CORS headers (`Access-Control-Expose-Headers: Retry-After`
unless `expose_headers=False`), as a browser must read Retry-After on a cross-origin 429.
"""
import gzip
import json
import threading
import time
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import NamedTuple


class Captured(NamedTuple):
    at: float                 # time.monotonic() when the request was complete
    method: str
    path: str                 # without the query string
    query: dict               # parsed: name -> [values]
    headers: dict             # lower-cased name -> value (last wins)
    raw: bytes                # the body as received
    body: bytes               # the body decompressed when Content-Encoding was gzip/deflate
    status: int               # what this server answered
    client_port: int          # one port for several requests: the connection was kept alive

    def json(self):
        return json.loads(self.body)

    def events(self) -> list:
        """The events this request carried: a batch envelope's `batch`, else the body itself."""
        payload = self.json()
        return payload["batch"] if isinstance(payload, dict) and "batch" in payload else [payload]


def minimal_settings(write_key: str, api_host: str, **segment_io) -> dict:
    """What GET /v1/projects/{key}/settings must answer for analytics.js to send to `api_host`
    (host:port/v1, no scheme) over http. `metrics.sampleRate` 0 keeps analytics.js from posting
    its own counters to https://api.segment.io/v1/m every 30 s."""
    return {"integrations": {"Segment.io": {"apiKey": write_key, "apiHost": api_host, "protocol": "http",
                                            **segment_io}},
            "metrics": {"sampleRate": 0}}


class CaptureServer:
    def __init__(self, script=(), expose_headers: bool = True, settings_extra: dict = None,
                 allow_origin: bool = True, settings_status: int = 200):
        self.script = list(script)
        self.settings_status = settings_status  # not 200: the settings GET is refused with it
        self.allow_origin = allow_origin        # False: no Access-Control-Allow-Origin anywhere
        self.expose_headers = expose_headers
        self.settings_extra = settings_extra or {}   # merged into the Segment.io integration's settings
        self.requests: list = []
        self.lock = threading.RLock()  # wait_for's predicate reads under it
        self.changed = threading.Condition(self.lock)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _cors(self) -> dict:
                if not server.allow_origin:
                    return {}
                headers = {"Access-Control-Allow-Origin": self.headers.get("Origin") or "*",
                           "Vary": "Origin"}
                if server.expose_headers:
                    headers["Access-Control-Expose-Headers"] = "Retry-After, X-RateLimit-Reset"
                return headers

            def _answer(self, status: int, payload, headers: dict, raw: bytes):
                body = b"" if payload is None else json.dumps(payload).encode()
                path, _, query = self.path.partition("?")
                lowered = {k.lower(): v for k, v in self.headers.items()}
                encoding = lowered.get("content-encoding", "").lower()
                try:
                    decoded = (gzip.decompress(raw) if encoding == "gzip"
                               else zlib.decompress(raw) if encoding == "deflate" else raw)
                except (OSError, zlib.error):
                    decoded = raw
                captured = Captured(time.monotonic(), self.command, path, urllib.parse.parse_qs(query),
                                    lowered, raw, decoded, status, self.client_address[1])
                self.send_response(status)
                for name, value in {**self._cors(), **headers}.items():
                    self.send_header(name, value)
                if body:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.wfile.flush()
                # Recorded once answered, so a waiting test sees the request with the answer sent.
                with server.changed:
                    server.requests.append(captured)
                    server.changed.notify_all()

            def do_OPTIONS(self):
                self._answer(204, None, {
                    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": self.headers.get("Access-Control-Request-Headers")
                    or "Authorization, Content-Type, X-Retry-Count",
                    "Access-Control-Max-Age": "600"}, b"")

            def do_GET(self):
                path = self.path.partition("?")[0]
                parts = path.strip("/").split("/")
                if len(parts) == 4 and parts[:2] == ["v1", "projects"] and parts[3] == "settings":
                    if server.settings_status != 200:
                        return self._answer(server.settings_status, {"success": False, "code": "refused",
                                                                     "message": "scripted"}, {}, b"")
                    payload = minimal_settings(urllib.parse.unquote(parts[2]), f"127.0.0.1:{server.port}/v1",
                                               **server.settings_extra)
                    self._answer(200, payload, {}, b"")
                elif path.rstrip("/") == "/sourceConfig":
                    self._answer(200, {"source": {"id": "capture", "name": "capture", "config": {},
                                                  "destinations": [], "enabled": True}}, {}, b"")
                else:
                    self._answer(404, {"success": False, "code": "not_found", "message": path}, {}, b"")

            def do_POST(self):
                raw = self._body()
                with server.lock:
                    status, headers = server.script.pop(0) if server.script else (200, {})
                payload = ({"success": True} if 200 <= status < 300
                           else {"success": False, "code": f"status_{status}", "message": "scripted"})
                self._answer(status, payload, headers, raw)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    # --- reading what arrived ---------------------------------------------------------------

    def posts(self, path_prefix: str = "/") -> list:
        with self.lock:
            return [r for r in self.requests if r.method == "POST" and r.path.startswith(path_prefix)]

    def delivered_ids(self) -> list:
        """messageIds of the events in POSTs answered 2xx, in arrival order (with repeats)."""
        return [event.get("messageId") for r in self.posts() if 200 <= r.status < 300 for event in r.events()]

    def wait_for(self, predicate, timeout: float = 10.0):
        """Block until predicate(self) is true (re-checked as requests arrive); raise on timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"capture server: condition not met in {timeout} s; got "
                                       f"{[(r.method, r.path, r.status) for r in self.requests]}")
                self.changed.wait(left)
