"""Generated tracking code called against the real SDKs: every helper typegen writes, sending
with segment-analytics-python, @segment/analytics-node (one node process) or analytics.js (in
headless chromium) to a capture server on 127.0.0.1. What arrives must be each helper's event
with its type, ids, names and properties, and valid under its contracts. mypy and tsc accepted
Python helpers that passed the group id as the user id and a page's properties as its category,
which the client refused at run time; only a real call shows that."""
import importlib.util
import inspect
import json
import subprocess
import sys

import pytest

from pipeline import typegen
from tests.collector import sdks
from tests.collector.capture import CaptureServer
from tests.conftest import ROOT
from transforms.contracts.lint import check_directory, validator_class
from transforms.warehouse import naming

CONTRACTS, _ = check_directory(str(ROOT / "samples" / "contracts"))
TSC = ROOT / "node_modules" / ".bin" / "tsc"
ORDER = {"orderId": "o-1", "total": 12.5, "currency": "EUR", "products": [{"productId": "sku-1", "price": 12.5}]}

# (helper, its arguments after the client and user id, what must arrive beside userId). identify
# first: analytics.js takes the user from it, so calls made before it may or may not carry it.
CALLS = [
    ("identify", ({"email": "a@example.com", "plan": "pro"},),
     {"type": "identify", "traits": {"email": "a@example.com", "plan": "pro"}}),
    ("track", ("Order Completed", ORDER), {"type": "track", "event": "Order Completed", "properties": ORDER}),
    ("track", ("Video Played", {"videoId": "v-1", "position": 3}),
     {"type": "track", "event": "Video Played", "properties": {"videoId": "v-1", "position": 3}}),
    ("track", ("Button Clicked", {"buttonText": "Buy"}),
     {"type": "track", "event": "Button Clicked", "properties": {"buttonText": "Buy"}}),
    ("track", ("Product Viewed", {"productId": "sku-1"}),
     {"type": "track", "event": "Product Viewed", "properties": {"productId": "sku-1"}}),
    ("group", ("g-1", {"name": "Acme", "employees": 12}),
     {"type": "group", "groupId": "g-1", "traits": {"name": "Acme", "employees": 12}}),
    ("page", ("Pricing", {"path": "/pricing"}, "Docs"),
     {"type": "page", "name": "Pricing", "category": "Docs", "properties": {"path": "/pricing"}}),
    ("page", ("Home", {"path": "/"}), {"type": "page", "name": "Home", "properties": {"path": "/"}}),
    ("screen", ("Settings", {"title": "Settings"}, "Account"),
     {"type": "screen", "name": "Settings", "category": "Account", "properties": {"title": "Settings"}}),
    ("screen", ("Inbox", {"path": "/inbox"}), {"type": "screen", "name": "Inbox", "properties": {"path": "/inbox"}}),
]


def arrived(server) -> list:
    return [event for request in server.posts() for event in request.events()]


def assert_arrived(events, sdk: str):
    """Each call's event, in order, carrying what the call gave and valid under its contracts.
    The JS SDKs (their analytics-core event factory) also copy a page's category into its
    properties; analytics.js adds the page's own (path, url, title...)."""
    assert len(events) == len(CALLS), events
    by_name = {c.name: c for c in CONTRACTS}
    for event, (helper, args, expected) in zip(events, CALLS):
        if sdk != "analytics-python" and helper == "page" and "category" in expected:
            expected = {**expected, "properties": {**expected["properties"], "category": expected["category"]}}
        got = {k: event.get(k) for k in [*expected, "userId"]}
        if sdk == "analytics-next" and helper in ("page", "screen"):
            got["properties"] = {k: v for k, v in got["properties"].items() if k in expected["properties"]}
        assert {**expected, "userId": "u-1"} == got, (helper, args, event)
        assert "category" in expected or event.get("category") is None, event
        contract = by_name[f"track/{naming.table_name(event['event'])}" if helper == "track" else helper]
        for schema in (contract.schema, by_name["common"].schema):
            validator_class(schema)(schema).validate(event)


def load(path):
    spec = importlib.util.spec_from_file_location("tracking", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_python_helper_sends_its_event(tmp_path):
    from segment.analytics import Client
    (tmp_path / "tracking.py").write_text(typegen.generate(CONTRACTS, "python"))
    tracking = load(tmp_path / "tracking.py")
    # sync_mode: each call is posted in the caller's thread and a refused one raises here.
    with CaptureServer() as server:
        client = Client(write_key="k", host=server.base_url, sync_mode=True, gzip=False)
        called = set()
        for helper, args, _ in CALLS:
            name = f"track_{naming.table_name(args[0])}" if helper == "track" else helper
            getattr(tracking, name)(client, "u-1", *args[1:] if helper == "track" else args)
            called.add(name)
        events = arrived(server)
    helpers = {n for n, f in vars(tracking).items() if inspect.isfunction(f) and f.__module__ == tracking.__name__}
    assert called == helpers  # every generated helper was called
    assert_arrived(events, "analytics-python")


NODE_USAGE = """import { Analytics } from "@segment/analytics-node";
import { AnalyticsBrowser } from "@segment/analytics-next";
import * as node from "./tracking_node";
import * as browser from "./tracking_browser";
declare const process: { argv: string[]; exitCode: number };

// The real SDKs' types must fit the generated interfaces (checked by tsc, never run).
export function inBrowser(analytics: AnalyticsBrowser): void {
  browser.track(analytics, "Order Completed", { orderId: "o-1", total: 1, currency: "EUR" });
  browser.identify(analytics, "u-1", { email: "a@example.com" });
  browser.group(analytics, "g-1", { name: "Acme" });
  browser.page(analytics, "Home", { path: "/" });
  browser.screen(analytics, "Inbox", { path: "/inbox" }, "Mail");
}

const calls: Array<[string, unknown[]]> = JSON.parse(process.argv[3]);
const analytics = new Analytics({ writeKey: "k", host: process.argv[2], maxRetries: 0 });
const errors: string[] = [];
analytics.on("error", (err) => errors.push(String((err as { reason?: unknown }).reason ?? err.code)));
const helpers = node as unknown as Record<string, (...args: unknown[]) => void>;
for (const [helper, args] of calls) helpers[helper](analytics, "u-1", ...args);
analytics.closeAndFlush({ timeout: 20000 }).then(() => {
  console.log(JSON.stringify({ errors, helpers: Object.keys(node).filter((k) => typeof helpers[k] === "function") }));
  process.exitCode = errors.length ? 1 : 0;
});
"""


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Both TypeScript flavours and usage.ts, compiled to JavaScript with one tsc run."""
    if not (TSC.exists() and sdks.node_available()):
        pytest.fail("node_modules is missing tsc or @segment/analytics-node: `make test` installs them (npm ci)")
    directory = tmp_path_factory.mktemp("typescript")
    (directory / "tracking_node.ts").write_text(typegen.generate(CONTRACTS, "typescript", "analytics-node"))
    (directory / "tracking_browser.ts").write_text(typegen.generate(CONTRACTS, "typescript", "analytics-next"))
    (directory / "usage.ts").write_text(NODE_USAGE)
    (directory / "node_modules").symlink_to(ROOT / "node_modules")  # where tsc and node resolve the SDKs
    done = subprocess.run([str(TSC), "--strict", "--skipLibCheck", "--target", "es2020", "--module", "commonjs",
                           "--outDir", str(directory / "out"), *sorted(str(p) for p in directory.glob("*.ts"))],
                          capture_output=True, text=True, cwd=directory)
    assert done.returncode == 0, done.stdout + done.stderr
    return directory


@pytest.mark.node
def test_every_analytics_node_helper_sends_its_event(compiled):
    with CaptureServer() as server:
        done = subprocess.run(["node", str(compiled / "out" / "usage.js"), server.base_url,
                               json.dumps([[helper, list(args)] for helper, args, _ in CALLS])],
                              capture_output=True, text=True, timeout=60, cwd=compiled)
        events = arrived(server)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert sorted(result["helpers"]) == sorted({helper for helper, _, _ in CALLS})
    assert_arrived(events, "analytics-node")


# In the page: the compiled helpers (CommonJS: they fill `exports`) called with window.analytics.
# A source middleware gives each event the messageId the driver waits for (the helpers, like a
# site's code, pass none); it is registered before the first call.
BROWSER_CALLS = """async (calls) => {
  const exports = {};
  new Function("exports", %s)(exports);
  const ids = calls.map((c) => c.messageId);
  await window.analytics.addSourceMiddleware(({ payload, next }) => {
    payload.obj.messageId = ids.shift();
    next(payload);
  });
  const uncalled = Object.keys(exports)
    .filter((k) => typeof exports[k] === "function" && !calls.some((c) => c.helper === k));
  if (uncalled.length) throw new Error("helpers the test does not call: " + uncalled);
  for (const c of calls) exports[c.helper](window.analytics, ...c.args);
}"""


@pytest.mark.node
@pytest.mark.browser
def test_every_analytics_js_helper_sends_its_event(compiled):
    if not sdks.chromium_available():
        pytest.skip("Debian's chromium is not installed (make test installs it)")  # as the collector's browser tests
    script = BROWSER_CALLS % json.dumps((compiled / "out" / "tracking_browser.js").read_text())
    # analytics.js's helpers take no user but identify's: the rest go as the browser's current user.
    calls = [{"helper": helper, "args": ["u-1", *args] if helper == "identify" else list(args)}
             for helper, args, _ in CALLS]
    with CaptureServer() as server:
        ids = sdks.send_analytics_js(server.base_url, "k", calls, timeout=30, call=script)
        by_id = {event["messageId"]: event for event in arrived(server)}
    assert_arrived([by_id[i] for i in ids], "analytics-next")


def test_an_sdk_the_language_has_no_code_for_is_one_line():
    done = subprocess.run([sys.executable, "-m", "pipeline.contracts", "typegen", "samples/contracts",
                           "--lang", "python", "--sdk", "analytics-node"], capture_output=True, text=True, cwd=ROOT)
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", "contracts: error: --sdk: no python code for analytics-node: use analytics-python\n")
