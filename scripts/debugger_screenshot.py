"""docs/images/debugger.png, again: a real embedded collector (contracts that block, a rule that
drops pings), a few events from segment-analytics-python and one wrong key, the page in
headless Chromium once every fate is known, the blocked order selected.

    .venv/bin/python scripts/debugger_screenshot.py [OUT.png]
"""
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402

from tests.collector import sdks  # noqa: E402
from tests.collector.serving import SOURCES, Collector, basic, request  # noqa: E402

CONTRACT = {"title": "Order Completed", "type": "object", "properties": {"properties": {
    "type": "object", "required": ["total"],
    "properties": {"total": {"type": "number"}, "currency": {"type": "string"}}}}}


def main(out: str) -> None:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "contracts" / "track").mkdir(parents=True)
    (tmp / "contracts" / "track" / "order_completed.json").write_text(json.dumps(CONTRACT))
    config = tmp / "config.yaml"
    config.write_text(json.dumps({
        "sources": SOURCES + [{"name": "ios", "write_key": "key-ios"}],
        "contracts": {"directory": str(tmp / "contracts"), "violations": "block"},
        "transforms": [{"name": "no-pings", "events": ["Internal Ping"], "drop_event": True}]}))
    collector = Collector(["--config", str(config), "--warehouse", f"duckdb:///{tmp / 'w.duckdb'}"], tmp).wait_ready()
    sinkhole = sdks._Sinkhole()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=sdks.CHROMIUM, headless=True,
                                                 args=sdks.CHROMIUM_ARGS + sinkhole.args())
            page = browser.new_page(viewport={"width": 1440, "height": 820})
            page.goto(collector.url + "/debugger")
            page.wait_for_selector("#connection.live")
            user = "u_1042"
            sdks.send_segment_python(collector.url, "key-server", [
                {"type": "identify", "userId": user, "traits": {"email": "ada@example.com", "plan": "pro"}},
                {"type": "track", "event": "Product Viewed", "userId": user,
                 "properties": {"sku": "TEE-RED-M", "price": 19.0}},
                {"type": "track", "event": "Order Completed", "userId": user,
                 "properties": {"total": 42.5, "currency": "EUR"}},
                {"type": "track", "event": "Order Completed", "userId": "u_2210",
                 "properties": {"total": "42.50", "currency": "EUR"}},
                {"type": "track", "event": "Internal Ping", "userId": user}])
            sdks.send_segment_python(collector.url, "key-ios", [
                {"type": "screen", "name": "Checkout", "anonymousId": "a-77f1", "properties": {"step": 2}}])
            request(collector.url + "/v1/track", "POST", b'{"type": "track", "event": "Signed Up", "userId": "u_9"}',
                    {"Authorization": basic("key-typo")})
            deadline = time.monotonic() + 60
            while json.loads(request(collector.url + "/debugger/api/events?status=pending")[2])["count"]:
                if time.monotonic() > deadline:
                    raise SystemExit("fates still pending after 60 s")
                time.sleep(0.3)
            page.wait_for_timeout(500)   # the stream's last fates reach the page
            page.click('#list tr:has-text("u_2210")')
            page.wait_for_selector("#payload .violation")
            page.screenshot(path=out)
            browser.close()
    finally:
        sinkhole.close()
        collector.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs" / "images" / "debugger.png"))
