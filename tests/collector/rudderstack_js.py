"""A driver for the RudderStack JavaScript SDK (@rudderstack/analytics-js 3, its `bundled` UMD
build from node_modules: every plugin inside, none fetched from RudderStack's CDN) in Debian's
chromium, headless, driven by playwright, as tests/collector/sdks.py drives analytics.js.

The page (served from 127.0.0.1) loads the SDK as a site would and calls
`load(writeKey, dataPlaneUrl, {configUrl})` with both URLs the collector's: the SDK fetches
`{configUrl}/sourceConfig/?...&writeKey=K`, then sends each event to `{dataPlaneUrl}/v1/{type}`
(XHR, JSON, Basic auth, its own AnonymousId / SentAt / Rsa-* headers), or, with
`useBeacon: true`, batched to `/beacon/v1/batch?writeKey=K` by navigator.sendBeacon. The SDK
sets messageIds itself (the API takes none): the driver reads them from each call's callback.
Nothing beyond 127.0.0.1 is reached (sdks._Sinkhole fails the send otherwise).
"""
import json
import time
import urllib.parse
from pathlib import Path

from tests.collector.sdks import CHROMIUM, CHROMIUM_ARGS, ROOT, SdkDeliveryError, StaticSite, _Sinkhole

RS_BUNDLED = ROOT / "node_modules" / "@rudderstack" / "analytics-js" / "dist" / "npm" / "modern" / "bundled" \
    / "umd" / "index.js"

# What a site writes (the npm package's setup, as a script tag): the SDK's UMD build exposes
# `rudderanalytics.RudderAnalytics`; load's third argument points the config at the collector.
_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Sluice RudderStack JS test page</title>
<script>
  // Playwright does not show a sendBeacon's body (a Blob): the page keeps a copy of each, so the
  // driver can tell which events the collector's answers to /beacon/ acknowledged. Its slot is
  // taken as the beacon is sent (the Blob is read later): the count of beacons is never behind.
  window.__sluiceBeacons = [];
  var realSendBeacon = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = function (url, data) {
    var queued = realSendBeacon(url, data);
    if (queued) {
      var slot = window.__sluiceBeacons.push(null) - 1;
      new Response(data).text().then(function (text) { window.__sluiceBeacons[slot] = text; });
    }
    return queued;
  };
</script>
<script src="/rudder-analytics.js"></script>
<script>
  var CONFIG = %s;
  var analytics = new rudderanalytics.RudderAnalytics();
  analytics.load(CONFIG.writeKey, CONFIG.dataPlaneUrl, Object.assign({configUrl: CONFIG.configUrl},
                                                                      CONFIG.loadOptions));
  analytics.ready(function () { window.__sluiceReady = true; });
</script></head><body><p>RudderStack JS test page</p></body></html>"""

# Each call's callback receives the event as queued, messageId included, synchronously.
_CALL_EVENTS = """(events) => {
  const ra = window.rudderanalytics, ids = [];
  const done = (event) => { ids.push(event.messageId); };
  for (const e of events) {
    const options = {};
    for (const key of ['anonymousId', 'context', 'integrations']) {
      if (e[key] !== undefined) options[key] = e[key];
    }
    switch (e.type) {
      case 'track': ra.track(e.event, e.properties || {}, options, done); break;
      case 'identify': ra.identify(e.userId, e.traits || {}, options, done); break;
      case 'page': ra.page(e.category, e.name, e.properties || {}, options, done); break;
      case 'group': ra.group(e.groupId, e.traits || {}, options, done); break;
      case 'alias': ra.alias(e.userId, e.previousId, options, done); break;
      default: throw new Error('the RudderStack JS SDK has no method for type ' + e.type);
    }
  }
  return ids;
}"""


def available() -> bool:
    return RS_BUNDLED.exists() and Path(CHROMIUM).exists()


def _site(page: bytes, port: int = 0) -> StaticSite:
    """The site: the page and the SDK's file, on 127.0.0.1:`port` (a free one when 0)."""

    def resolve(path: str) -> tuple:
        if path == "/":
            return 200, page, "text/html; charset=utf-8"
        if path == "/rudder-analytics.js":
            return 200, RS_BUNDLED.read_bytes(), "application/javascript"
        return 404, b"", "text/plain"
    return StaticSite(resolve, port)


def send_rudderstack_js(base_url: str, write_key: str, events, timeout: float = 30, load_options: dict = None,
                        log: list = None, page_port: int = 0, deliver_timeout: float = 60) -> list:
    """The events sent by the RudderStack JS SDK in chromium from a page on
    http://127.0.0.1:{page_port}; returns their messageIds (the SDK's) once the collector answered
    < 400 to a request carrying each (seen on the network). Supported: track, identify, page,
    group, alias with their spec fields and anonymousId, context, integrations (a userId comes
    from identify, as in the SDK). `log` receives the page's console and every request and answer.
    Hang guards: `timeout` seconds for chromium to start and the SDK to be ready, then
    `deliver_timeout` seconds more for the events to be answered (each its own: a loaded machine
    slow to start chromium leaves the delivery its full time)."""
    from playwright.sync_api import sync_playwright

    config = {"writeKey": write_key, "dataPlaneUrl": base_url.rstrip("/"), "configUrl": base_url.rstrip("/"),
              "loadOptions": {"polyfillIfRequired": False, **(load_options or {})}}
    site, sinkhole = _site((_PAGE % json.dumps(config)).encode(), page_port), _Sinkhole()
    collector = urllib.parse.urlsplit(base_url).netloc
    delivered, console = set(), [] if log is None else log
    deadline = time.monotonic() + timeout

    beacons_acknowledged = [0]

    def take(body: bytes):
        try:
            body = json.loads(body)
        except ValueError:
            return
        batch = body.get("batch", [body]) if isinstance(body, dict) else []
        delivered.update(e.get("messageId") for e in batch if isinstance(e, dict))

    def on_response(response):
        request = response.request
        console.append(f"response: {response.status} {request.method} {request.url}")
        target = urllib.parse.urlsplit(request.url)
        if request.method != "POST" or target.netloc != collector or response.status >= 400:
            return
        if target.path.startswith("/beacon/"):
            beacons_acknowledged[0] += 1
        elif request.post_data_buffer:
            take(request.post_data_buffer)

    def take_beacons(page) -> list:
        """Every beacon acknowledged 2xx and read: the events of every beacon sent so far are
        delivered. The beacons' bodies as read so far (None: not yet)."""
        sent = page.evaluate("window.__sluiceBeacons")
        if beacons_acknowledged[0] and beacons_acknowledged[0] >= len(sent) and None not in sent:
            for body in sent:
                take(body.encode())
        return sent

    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=CHROMIUM_ARGS + sinkhole.args())
            try:
                page = browser.new_context().new_page()
                page.on("console", lambda m: console.append(f"console.{m.type}: {m.text}"))
                page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
                page.on("request", lambda r: console.append(f"request: {r.method} {r.url}"))
                page.on("response", on_response)
                page.goto(site.url, wait_until="load", timeout=max(1.0, (deadline - time.monotonic()) * 1000))
                while not page.evaluate("window.__sluiceReady === true"):
                    # A refused /sourceConfig/ ends the SDK on this page: it never becomes ready.
                    refused = any(line.startswith("response: 4") and "/sourceConfig/" in line for line in console)
                    if refused or time.monotonic() > deadline:
                        if refused:
                            page.wait_for_timeout(500)   # what it does next is recorded too
                        raise SdkDeliveryError("RudderStack JS", "its source config was refused" if refused
                                               else f"not ready within {timeout} s", [],
                                               [*console[-12:], *(f"beyond 127.0.0.1: {attempt}"
                                                                  for attempt in sinkhole.attempts)])
                    page.wait_for_timeout(25)
                ids = page.evaluate(_CALL_EVENTS, list(events))
                if len(ids) != len(events):
                    raise SdkDeliveryError("RudderStack JS", "not every call was queued", ids, console[-12:])
                deadline = time.monotonic() + deliver_timeout
                while not set(ids) <= delivered:
                    beacons = take_beacons(page)
                    if time.monotonic() > deadline:
                        raise SdkDeliveryError(
                            "RudderStack JS", f"not delivered within {deliver_timeout} s of the calls",
                            sorted(set(ids) - delivered),
                            [f"beacons: {len(beacons)} sent, {beacons_acknowledged[0]} answered 2xx: {beacons}",
                             *console[-20:]])
                    page.wait_for_timeout(25)   # lets playwright dispatch the network events meanwhile
            finally:
                browser.close()
    finally:
        site.close()
        sinkhole.close()
    if sinkhole.attempts:
        raise SdkDeliveryError("RudderStack JS", "chromium tried to reach beyond 127.0.0.1", [], sinkhole.attempts)
    return ids
