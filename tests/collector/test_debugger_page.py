"""The debugger's page in headless Chromium (Debian's, driven by playwright), on a real collector
(`serve --sink DIR` with a contracts directory): events sent by segment-analytics-python and
analytics.js appear in the live list; pause holds new ones back with a count and resume shows them; a filter narrows
the list; a contract violation shows its pointer and message; a property holding markup is
shown as text and runs nothing."""
import contextlib
import json
import threading
import time

import pytest

from tests.collector import sdks
from tests.collector.serving import SOURCES
from tests.destinations.receiver import Receiver

pytestmark = [pytest.mark.browser, pytest.mark.slow]

HOSTILE = "<img src=x onerror=\"window.__pwned = 1\"><script>window.__pwned = 2</script>"
CONTRACT = {"title": "Order Completed", "type": "object",
            "properties": {"properties": {"type": "object", "properties": {"total": {"type": "number"}}}}}
DEADLINE_MS = 15_000   # a hang guard, not a timing: the stream shows an entry as soon as it is inspected


@pytest.fixture
def page(start_collector, tmp_path, request):
    """The page open on a collector: `--sink DIR` by default; `embedded` (indirect parameter):
    `--warehouse duckdb:///...` forwarding Order Completed to a webhook that answers 400."""
    if not sdks.chromium_available():
        pytest.skip("needs Debian's chromium (make chromium) and analytics.js (npm ci)")
    from playwright.sync_api import sync_playwright
    (tmp_path / "contracts" / "track").mkdir(parents=True)
    (tmp_path / "contracts" / "track" / "order_completed.json").write_text(json.dumps(CONTRACT))
    document = {"sources": SOURCES, "contracts": {"directory": str(tmp_path / "contracts")}}
    with contextlib.ExitStack() as stack:
        if getattr(request, "param", None) == "embedded":
            hook = stack.enter_context(Receiver(default_status=400))
            document["destinations"] = [{"name": "crm", "type": "webhook", "url": hook.url, "events": ["Order *"],
                                         "allow_private_network": True, "retry": {"max_attempts": 1}}]
            where = ["--warehouse", f"duckdb:///{tmp_path / 'w.duckdb'}"]
        else:
            where = ["--sink", str(tmp_path / "spool")]
        config = tmp_path / "debugged.yaml"
        config.write_text(json.dumps(document))
        collector = start_collector(["--config", str(config)] + where)
        sinkhole = sdks._Sinkhole()   # nothing leaves loopback
        stack.callback(sinkhole.close)
        errors = []
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=sdks.CHROMIUM, headless=True,
                                                 args=sdks.CHROMIUM_ARGS + sinkhole.args())
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 800})
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.goto(collector.url + "/debugger", wait_until="load")
                page.wait_for_selector("#connection.live", timeout=DEADLINE_MS)
                page.collector, page.shots = collector, tmp_path
                yield page
            finally:
                browser.close()
    assert not errors, errors


def send(collector, *events) -> None:
    sdks.send_segment_python(collector.url, "key-server", [{"userId": "u1", **e} for e in events])


def rows(page) -> list:
    return page.eval_on_selector_all("#list tbody tr", "rows => rows.map(r => r.children[3].textContent)")


def test_the_live_list_pause_filter_contract_and_escaping(page):
    collector = page.collector
    send(collector, {"type": "track", "event": "Order Completed", "messageId": "p-1",
                     "properties": {"total": "12", "note": HOSTILE}})
    page.wait_for_selector('#list tr[data-id] >> text="Order Completed"', timeout=DEADLINE_MS)

    page.click('#list tr >> text="Order Completed"')
    page.wait_for_selector("#contract .violations", timeout=DEADLINE_MS)
    violation = page.text_content("#contract .violations li")
    assert "/properties/total" in violation and "is not of type 'number'" in violation and "kept" in violation
    assert page.eval_on_selector_all("#payload .violation", "nodes => nodes.map(n => n.textContent)") == ['"12"']
    pretty = page.text_content("#payload")
    assert pretty.startswith('analytics.track("Order Completed", {') and json.dumps(HOSTILE)[1:-1] in pretty
    page.click('.tabs button[data-view="raw"]')
    assert json.dumps(HOSTILE)[1:-1] in page.text_content("#payload")   # the markup, as text
    assert page.locator("img").count() == 0 and page.locator("#detail script").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.screenshot(path=str(page.shots / "debugger.png"))

    page.click("#live")   # pause: what comes meanwhile is counted, not shown
    send(collector, {"type": "track", "event": "Held Back", "messageId": "p-2"})
    page.wait_for_selector('#waiting >> text="1 new"', timeout=DEADLINE_MS)
    assert "Held Back" not in rows(page)
    page.click("#live")   # resume
    page.wait_for_selector('#list tr >> text="Held Back"', timeout=DEADLINE_MS)
    assert rows(page)[:2] == ["Held Back", "Order Completed"] and page.is_hidden("#waiting")

    send(collector, {"type": "identify", "messageId": "p-3", "traits": {"plan": "pro"}})
    page.wait_for_selector('#list td >> text="identify"', timeout=DEADLINE_MS)
    sent = []   # analytics.js in a browser of its own, on a thread (playwright's sync API: one a thread)
    browser_sdk = threading.Thread(target=lambda: sent.append(sdks.send_analytics_js(
        collector.url, "key-server", [{"type": "track", "userId": "u2", "event": "Signed Up",
                                       "properties": {"plan": "free"}}])))
    browser_sdk.start()
    browser_sdk.join(90)
    assert sent, "analytics.js did not deliver (its error is above)"
    page.wait_for_selector('#list tr >> text="Signed Up"', timeout=DEADLINE_MS)   # from a browser's SDK too
    page.fill('#filters input[name="event"]', "Held Back")
    deadline = time.monotonic() + DEADLINE_MS / 1000
    while rows(page) != ["Held Back"] and time.monotonic() < deadline:   # reloaded from the API
        page.wait_for_timeout(50)
    assert rows(page) == ["Held Back"]


def test_the_page_needs_what_the_api_needs(page):
    from tests.collector.serving import request
    status, headers, body = request(page.collector.url + "/debugger")
    assert status == 200 and b"/debugger/page.js" in body
    assert "script-src 'self'" in headers["content-security-policy"] and headers["referrer-policy"] == "no-referrer"
    status, _, _ = request(page.collector.url + "/debugger", headers={"Host": "rebound.example"})
    assert status == 403


@pytest.mark.parametrize("page", ["embedded"], indirect=True)
def test_the_fate_changes_when_the_load_is_done(page):
    send(page.collector, {"type": "track", "event": "Order Completed", "messageId": "f-1", "properties": {"total": 3}})
    page.wait_for_selector('#list tr >> text="Order Completed"', timeout=DEADLINE_MS)
    page.click('#list tr >> text="Order Completed"')
    assert page.text_content("#fate h2").startswith("Fate pending")
    page.wait_for_selector("#fate .badge.stored", timeout=60_000)   # the embedded loader: a few seconds
    assert page.text_content("#fate h2") == "Fate stored in order_completed"
    assert page.text_content("#list tr .badge") == "stored"
    crm = page.text_content("#fate .destinations li")   # the webhook answered 400
    assert crm.startswith("crm failed") and "400" in crm, crm
