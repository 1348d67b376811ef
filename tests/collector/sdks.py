"""Drivers for the real, unmodified SDKs users send with, pointed at a collector's base URL.

Each `send_*` function takes Segment-spec events (dicts with `type` and the spec's camelCase
fields: userId, anonymousId, event, properties, traits, name, category, groupId, previousId,
context, timestamp, integrations, messageId), makes the SDK send them to `base_url` with
`write_key`, waits until the SDK reports every event delivered (its flush, callbacks, or for the
browser the collector's answers seen on the network), and returns the messageIds in the order of
`events`. A messageId is set explicitly (uuid4) when an event has none, so callers can look the
events up afterwards. Failing to deliver (the SDK gave up, or `timeout` passed) raises
SdkDeliveryError naming the messageIds concerned.

- send_segment_python: segment-analytics-python (`segment.analytics`), optionally gzip
- send_rudder_python: rudder-sdk-python (`rudderstack.analytics`), gzip by default
- send_analytics_node: @segment/analytics-node from node_modules, through analytics_node_send.js
- send_analytics_js: analytics.js (@segment/analytics-next's standalone build) in Debian's
  chromium (headless, driven by playwright), loaded by ajs_page.html from a local server

Nothing here reaches beyond 127.0.0.1: the browser sends anything not loopback to a dead proxy
that records it, and send_analytics_js fails when it recorded anything.
"""
import atexit
import copy
import datetime
import http.server
import json
import mimetypes
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NODE_SCRIPT = HERE / "analytics_node_send.js"
PAGE_TEMPLATE = HERE / "ajs_page.html"
AJS_DIST = ROOT / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
AJS_STANDALONE = AJS_DIST / "standalone.js"
CHROMIUM = "/usr/bin/chromium"

# Debian's chromium, headless. Playwright's own switches already keep the browser's services
# quiet (--disable-background-networking, --disable-component-update, --disable-sync, and a
# --disable-features list that stops network time queries to clients2.google.com and
# preconnects to www.google.com); do not pass another --disable-features here: chromium keeps
# only the last one, which silently re-enabled those calls (seen in the sinkhole). Anything not
# loopback still attempted goes to the dead proxy (see _Sinkhole) and fails the send.
CHROMIUM_ARGS = [
    "--no-sandbox", "--no-first-run", "--no-default-browser-check", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-domain-reliability",
    "--disable-client-side-phishing-detection", "--disable-breakpad", "--metrics-recording-only",
    "--safebrowsing-disable-auto-update", "--password-store=basic", "--use-mock-keychain",
]

class SdkDeliveryError(AssertionError):
    def __init__(self, sdk: str, message: str, message_ids=(), details=None):
        self.sdk = sdk
        self.message_ids = list(message_ids)
        self.details = details
        super().__init__(f"{sdk}: {message} (messageIds {self.message_ids})"
                         + (f": {details}" if details else ""))


def _with_ids(events) -> list:
    out = []
    for event in events:
        event = copy.deepcopy(event)  # the SDKs add to context in place
        event.setdefault("messageId", str(uuid.uuid4()))
        out.append(event)
    return out


# --- Python SDKs ------------------------------------------------------------------------------

_PY_ARGS = {"userId": "user_id", "anonymousId": "anonymous_id", "event": "event", "properties": "properties",
            "traits": "traits", "context": "context", "timestamp": "timestamp", "integrations": "integrations",
            "messageId": "message_id", "groupId": "group_id", "previousId": "previous_id", "name": "name",
            "category": "category"}


def _python_call(event: dict):
    """(method name, keyword arguments) of the analytics-python style client for one event."""
    kwargs = {}
    for key, value in event.items():
        if key == "type":
            continue
        if key not in _PY_ARGS:
            raise ValueError(f"the Python SDKs take no {key!r} (event {event.get('messageId')})")
        if key == "timestamp" and isinstance(value, str):
            value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        kwargs[_PY_ARGS[key]] = value
    return event["type"], kwargs


def _send_python(sdk: str, client_class, base_url, write_key, events, timeout, options) -> list:
    errors = []
    client = client_class(write_key=write_key, host=base_url,
                          on_error=lambda error, batch: errors.append((error, [m.get("messageId") for m in batch])),
                          **options)
    ids = []
    try:
        for event in _with_ids(events):
            method, kwargs = _python_call(event)
            queued, message = getattr(client, method)(**kwargs)
            if not queued:
                raise SdkDeliveryError(sdk, "the client's queue refused an event", [event["messageId"]])
            ids.append(message["messageId"])
        # flush() is the queue's join: it returns once every batch was answered 2xx or given up on
        # (on_error). It has no timeout of its own (a rate-limited client can wait 30 min).
        flushing = threading.Thread(target=client.flush, daemon=True)
        flushing.start()
        flushing.join(timeout)
        if flushing.is_alive():
            raise SdkDeliveryError(sdk, f"not flushed within {timeout} s", ids)
        client.join()  # ends the consumer threads, idle now (at most upload_interval)
    finally:
        # On failure, stop the (daemon) consumers without waiting for them: rudder's sleeps in
        # its backoff for up to minutes and cannot be interrupted. The client registered its join
        # with atexit, which would make the interpreter wait for that backoff at exit (it did:
        # pytest hung after the last test); these clients are done, so that is dropped.
        for consumer in client.consumers or ():
            consumer.pause()
        atexit.unregister(client.join)
    if errors:
        failed = [message_id for _, batch in errors for message_id in batch]
        raise SdkDeliveryError(sdk, "the SDK gave up", failed, [str(error) for error, _ in errors])
    return ids


def send_segment_python(base_url: str, write_key: str, events, gzip: bool = False, timeout: float = 60,
                        **options) -> list:
    """segment-analytics-python's Client (its own consumer thread, batching), flushed.
    `options` go to Client (max_retries, upload_size, upload_interval, max_rate_limit_duration...)."""
    from segment.analytics import Client
    return _send_python("segment-analytics-python", Client, base_url, write_key, events, timeout,
                        {"gzip": gzip, **options})


def send_rudder_python(base_url: str, write_key: str, events, gzip: bool = True, timeout: float = 60,
                       **options) -> list:
    """rudder-sdk-python's Client (host = the data plane URL), flushed. gzip is its default."""
    from rudderstack.analytics import Client
    return _send_python("rudder-sdk-python", Client, base_url, write_key, events, timeout,
                        {"gzip": gzip, **options})


# --- analytics-node ---------------------------------------------------------------------------

def node_available() -> bool:
    return shutil.which("node") is not None and (ROOT / "node_modules" / "@segment" / "analytics-node").is_dir()


def send_analytics_node(base_url: str, write_key: str, events, timeout: float = 60, **settings) -> list:
    """@segment/analytics-node 3.x in a Node process of its own: every event's callback, then
    closeAndFlush. `settings` go to `new Analytics({...})` (maxRetries, flushAt, path, ...)."""
    events = _with_ids(events)
    request = {"host": base_url, "writeKey": write_key, "events": events, "settings": settings,
               "timeoutMs": int(timeout * 1000)}
    try:
        done = subprocess.run(["node", str(NODE_SCRIPT)], input=json.dumps(request), capture_output=True,
                              text=True, timeout=timeout + 15, cwd=ROOT)
    except subprocess.TimeoutExpired:
        raise SdkDeliveryError("analytics-node", f"node did not finish within {timeout + 15} s",
                               [e["messageId"] for e in events]) from None
    if done.returncode != 0:
        raise SdkDeliveryError("analytics-node", f"node exited {done.returncode}", [e["messageId"] for e in events],
                               done.stderr.strip()[-2000:])
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["failures"]:
        raise SdkDeliveryError("analytics-node", "the SDK gave up", [f["messageId"] for f in result["failures"]],
                               sorted({f["error"] for f in result["failures"]}))
    return result["messageIds"]


# --- analytics.js in chromium -----------------------------------------------------------------

def chromium_available() -> bool:
    return Path(CHROMIUM).exists() and AJS_STANDALONE.exists()


class _Sinkhole:
    """A dead proxy on 127.0.0.1: chromium sends everything not loopback here (--proxy-server);
    it records the request line (CONNECT host:443 or GET http://...) and closes."""

    def __init__(self):
        self.attempts: list = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.dead = socket.socket()  # bound, never listening: connections to it are refused
        self.dead.bind(("127.0.0.1", 0))
        self.dead_port = self.dead.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    line = conn.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")
                except OSError:
                    line = "?"
                self.attempts.append(line)
                try:
                    conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                except OSError:
                    pass

    def args(self) -> list:
        """Chromium's switches sending it here: every host but loopback through this proxy, and
        Google's sign-in (accounts.google.com) and push messaging (GCM check-in at
        android.clients.google.com) endpoints, which Debian's build calls with the API keys its
        wrapper exports (/etc/chromium.d/apikeys), to a loopback port nothing listens on."""
        dead = f"http://127.0.0.1:{self.dead_port}"
        return [f"--proxy-server=http://127.0.0.1:{self.port}", f"--gaia-url={dead}", f"--google-apis-url={dead}",
                f"--lso-url={dead}", f"--gcm-checkin-url={dead}/checkin", f"--gcm-registration-url={dead}/register",
                f"--gcm-mcs-endpoint={dead}"]

    def close(self):
        self.sock.close()
        self.dead.close()


class StaticSite:
    """A site a test page needs, on 127.0.0.1:`port` (a free one when 0): `resolve(path)` gives
    (status, body, content type) for each GET, answered with Cache-Control: no-store."""

    def __init__(self, resolve, port: int = 0):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                status, body, kind = resolve(urllib.parse.urlsplit(self.path).path)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def _page_server(page: bytes, port: int = 0) -> StaticSite:
    """The test page, the standalone analytics.js (at the path the snippet uses) and the build's
    lazily loaded chunks: the site a user's browser would load."""

    def resolve(path: str) -> tuple:
        if path in ("/", "/index.html"):
            return 200, page, "text/html; charset=utf-8"
        if path.startswith("/analytics.js/v1/") and path.endswith("/analytics.min.js"):
            return 200, AJS_STANDALONE.read_bytes(), "application/javascript"
        if path.startswith("/analytics-next/bundles/") and "/" not in path[len("/analytics-next/bundles/"):]:
            file = AJS_DIST / path.rsplit("/", 1)[1]
            if file.is_file():
                return 200, file.read_bytes(), mimetypes.guess_type(file.name)[0] or "application/javascript"
            return 404, b"", "text/plain"
        if path == "/favicon.ico":
            return 204, b"", "image/x-icon"
        return 404, b"", "text/plain"
    return StaticSite(resolve, port)


# The page calls the real analytics object (window.analytics once analytics.js has replaced the
# snippet's stub) with the spec's arguments; identity and the rest go in the options argument,
# which analytics.js moves to the event (userId, anonymousId, timestamp, messageId) or context.
_CALL_EVENTS = """(events) => {
  const analytics = window.analytics;
  const calls = events.map((e) => {
    const options = {messageId: e.messageId};
    for (const key of ['anonymousId', 'timestamp', 'context', 'integrations']) {
      if (e[key] !== undefined) options[key] = e[key];
    }
    if (e.userId !== undefined && e.type !== 'identify' && e.type !== 'alias') options.userId = e.userId;
    switch (e.type) {
      case 'track': return analytics.track(e.event, e.properties || {}, options);
      case 'identify': return analytics.identify(e.userId, e.traits || {}, options);
      case 'page': return analytics.page(e.category, e.name, e.properties || {}, options);
      case 'screen': return analytics.screen(e.category, e.name, e.properties || {}, options);
      case 'group': return analytics.group(e.groupId, e.traits || {}, options);
      case 'alias': return analytics.alias(e.userId, e.previousId, options);
      default: throw new Error('analytics.js has no method for type ' + e.type);
    }
  });
  // Not awaited here: a call's promise may wait for retries; delivery is judged on the network.
  Promise.all(calls).then((contexts) => { window.__sluiceSent = contexts.map((ctx) => ctx.event.messageId); });
}"""


def send_analytics_js(base_url: str, write_key: str, events, timeout: float = 60, load_options: dict = None,
                      log: list = None, page_port: int = 0, call: str = _CALL_EVENTS) -> list:
    """analytics.js as a site loads it: the snippet with `analytics._cdn = base_url` (so the
    settings come from {base_url}/v1/projects/{write_key}/settings), the standalone build from
    a local page server, headless chromium. Returns once the collector answered < 400 to a
    request carrying each event (seen on the network). `load_options` become the snippet's
    `_loadOptions` (analytics.load's second argument). `log`, when given, receives what the page
    printed and every request it made, for a test to look at. The page's origin is
    http://127.0.0.1:{page_port} (a free port when 0): set it to test a source's allowed_origins.
    `call`, a JS function the page awaits with `events`, sends them (default: the spec's method
    for each); whatever it calls must send one event per entry, carrying its messageId."""
    from playwright.sync_api import sync_playwright

    events = _with_ids(events)
    wanted = {e["messageId"] for e in events}
    config = {"writeKey": write_key, "cdn": base_url.rstrip("/"), "loadOptions": load_options or {},
              "scriptSrc": f"/analytics.js/v1/{urllib.parse.quote(write_key)}/analytics.min.js"}
    page_html = PAGE_TEMPLATE.read_text(encoding="utf-8").replace("/*SLUICE_CONFIG*/null", json.dumps(config))
    collector = urllib.parse.urlsplit(base_url)
    delivered, console = set(), [] if log is None else log
    sinkhole, pages = _Sinkhole(), _page_server(page_html.encode(), page_port)
    deadline = time.monotonic() + timeout  # one budget for loading and delivering

    def left_ms() -> float:
        return max(1.0, (deadline - time.monotonic()) * 1000)

    def on_response(response):
        request = response.request
        target = urllib.parse.urlsplit(request.url)
        if request.method != "POST" or target.netloc != collector.netloc or response.status >= 400:
            return
        try:
            body = json.loads(request.post_data or "null")
        except ValueError:
            return
        batch = body.get("batch", [body]) if isinstance(body, dict) else []
        delivered.update(e.get("messageId") for e in batch if isinstance(e, dict))

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=CHROMIUM_ARGS + sinkhole.args())
            try:
                context = browser.new_context()
                page = context.new_page()
                page.on("console", lambda m: console.append(f"console.{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                page.on("request", lambda r: console.append(f"request: {r.method} {r.url}"))
                page.on("response", on_response)
                page.goto(pages.url, wait_until="load", timeout=left_ms())
                # Loaded: the snippet's stub replaced by an initialized Analytics. Failed: analytics.js
                # logs "[analytics.js] Failed to load Analytics.js" (settings refused, CORS...).
                while not page.evaluate("!!(window.analytics && window.analytics.initialized === true)"):
                    failed = any("Failed to load Analytics.js" in line for line in console)
                    if failed or time.monotonic() > deadline:
                        if failed:
                            page.wait_for_timeout(500)  # what it does next (see _Sinkhole) is recorded too
                        raise SdkDeliveryError("analytics.js", "did not load" if failed else
                                               f"not loaded within {timeout} s", sorted(wanted),
                                               [*console[-12:], *(f"beyond 127.0.0.1: {attempt}"
                                                                  for attempt in sinkhole.attempts)])
                    page.wait_for_timeout(25)
                page.evaluate("""() => { window.__sluiceFailures = [];
                    window.analytics.on('error', (e) => window.__sluiceFailures.push(
                        {messageId: e.ctx && e.ctx.event.messageId, code: e.code, reason: String(e.reason)})); }""")
                page.evaluate(call, events)
                while not wanted <= delivered:
                    failures = page.evaluate("window.__sluiceFailures")
                    if failures:
                        raise SdkDeliveryError("analytics.js", "the SDK gave up", [f["messageId"] for f in failures],
                                               failures)
                    if time.monotonic() > deadline:
                        raise SdkDeliveryError("analytics.js", f"not delivered within {timeout} s",
                                               sorted(wanted - delivered), console[-20:])
                    page.wait_for_timeout(25)  # lets playwright dispatch the network events meanwhile
                ids = [e["messageId"] for e in events]
            finally:
                browser.close()
    finally:
        pages.close()
        sinkhole.close()
    if sinkhole.attempts:
        raise SdkDeliveryError("analytics.js", "chromium tried to reach beyond 127.0.0.1", [], sinkhole.attempts)
    return ids
