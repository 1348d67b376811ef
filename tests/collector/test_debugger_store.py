"""The debugger's parts without a server: the store's bounds (entries, payload bytes, the
message index) whatever is pushed, its sampling, the contract result against the pipeline's own
enforcer, the refused request's preview without the write key, and who may read it."""
import gzip
import json

import orjson
import pytest

from collector.debugger.inspect import Inspector
from collector.debugger.preview import PREVIEW_CHARS, preview
from collector.debugger.settings import DebuggerSettings, access, is_loopback
from collector.debugger.store import MAX_VIOLATIONS, UNKNOWN_SOURCE, Entry, Store
from transforms.contracts.enforce import ContractEnforcer
from transforms.contracts.model import Contract, ContractSettings

STAMP = "2026-12-03T01:00:00.000Z"


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def record(events: list, source: str = "web") -> bytes:
    """A record as the collector writes it (collector.requests._record)."""
    for event in events:
        if isinstance(event, dict):
            event.setdefault("receivedAt", STAMP)
    return orjson.dumps({"batch": events, "source": source, "receivedAt": STAMP})


def track(n: int, **extra) -> dict:
    return {"type": "track", "event": "Order Completed", "userId": f"u{n}", "messageId": f"m{n}",
            "properties": {"total": n}, **extra}


def test_a_hundred_thousand_entries_keep_the_store_within_its_bounds():
    settings = DebuggerSettings(max_events_per_source=500, max_events_per_second=1e12, max_payload_bytes=2048)
    store = Store(settings)
    sources = ("web", "server", "ios", UNKNOWN_SOURCE)
    for n in range(100_000):
        source = sources[n % 4]
        assert store.admit(source, 1) == 1
        store.add(Entry(STAMP, source, b'{"n":%d,"pad":"%s"}' % (n, b"x" * 2000), 2020, message_id=f"m{n}"))
    stats = store.stats()
    kept = [e for s in sources for e in store.query(source=s, limit=10**6)]
    assert stats["entries"] == len(kept) == 4 * 500
    assert stats["payload_bytes"] == sum(e.kept_bytes() for e in kept) <= 4 * 500 * 2048
    assert len(store._by_message) == store.pending_entries == 4 * 500   # the index forgets what the rings evicted
    assert store.query(limit=1)[0].message_id == "m99999"
    assert store.query(source="web", limit=1)[0].message_id == "m99996"


def test_an_entry_holds_about_its_payloads_bytes_not_the_buffer_it_was_written_in():
    """orjson's bytes keep the buffer they were written in (16 KiB for a 1.5 KB event): kept as
    is, 500 entries a source held 8 MB instead of the 1.6 MB their payloads are."""
    import gc
    import tracemalloc
    store = Store(DebuggerSettings(max_events_per_source=500, max_events_per_second=1e12, max_payload_bytes=2048))
    inspector = Inspector(store)
    records = [record([track(n * 100 + i, properties={"pad": "x" * 1500}) for i in range(100)]) for n in range(6)]
    inspector.accepted(records[0])   # what the first inspection allocates once (caches) is not an entry's
    store.reset()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for one in records[1:]:
            inspector.accepted(one)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    stats = store.stats()
    assert stats["entries"] == 500 and stats["payload_bytes"] >= 500 * 1500
    fixed = (held - stats["payload_bytes"]) / 500   # 1.3-1.5 KB measured: the entry, its strings and dicts
    assert fixed < 3072, f"{held / 500:,.0f} bytes an entry, {fixed:,.0f} besides its payload"


def test_payloads_are_cut_to_their_bound():
    store = Store(DebuggerSettings(max_payload_bytes=2048))
    inspector = Inspector(store)
    inspector.accepted(record([track(n, properties={"blob": "é" * 10_000}) for n in range(3)] + [track(9)]))
    inspector.refused(STAMP, 401, "invalid_write_key", "unknown key", None, "/v1/track", "y" * 50_000)
    cut = store.query(event="Order Completed", limit=10)
    assert [e.payload_truncated for e in cut] == [False, True, True, True]
    assert all(len(e.payload.encode()) <= 2048 + len("…".encode()) and e.bytes > 20_000 for e in cut[1:])
    assert len(store.query(source=UNKNOWN_SOURCE)[0].payload) <= PREVIEW_CHARS + 1


def test_a_high_rate_is_sampled_and_the_skipped_events_counted():
    clock = Clock()
    store = Store(DebuggerSettings(max_events_per_source=100, max_events_per_second=10), clock)
    inspector = Inspector(store)
    assert inspector.accepted(record([track(n) for n in range(150)])) == 100   # a burst up to the ring
    assert store.stats()["sources"]["web"] == {"received": 150, "entries": 100, "skipped": 50}
    clock.now += 2.0   # 20 more may be kept
    assert inspector.accepted(record([track(n) for n in range(1000, 1030)])) == 20
    stats = store.stats()
    assert stats["skipped"] == 60 and stats["entries"] == 100 and stats["received"] == 180
    assert store.query(limit=1)[0].message_id == "m1019"   # the first of a request are kept
    store.reset()
    assert store.stats()["entries"] == store.stats()["skipped"] == 0
    assert inspector.accepted(record([track(1)])) == 1   # a reset refills the allowance


CONTRACTS = (
    Contract("track/order_completed", "track/order_completed.json", {
        "type": "object", "required": ["properties"],
        "properties": {"properties": {"type": "object", "additionalProperties": False,
                                      "properties": {"total": {"type": "number"}, "note": {"type": "string"}}}}},
        "Order Completed"),
    Contract("common", "common.json", {"type": "object", "properties": {"context": {"type": "object"}}}),
)


@pytest.mark.parametrize("violations,unplanned", [("allow", "allow"), ("omit_properties", "allow"),
                                                  ("block", "block")])
def test_the_contract_result_is_the_pipelines_verdict(violations, unplanned):
    settings = ContractSettings("contracts", CONTRACTS, unplanned, violations)
    store = Store(DebuggerSettings())
    inspector = Inspector(store, settings)
    events = [track(1), track(2, properties={"total": "12", "colour": "red", "note": 5}),
              {"type": "track", "event": "Unknown Thing", "userId": "u", "messageId": "m3"}]
    inspector.accepted(record(events))
    by_id = {e.message_id: e for e in store.query()}
    enforcer = ContractEnforcer(settings)
    from transforms.normalize import normalize_event
    for message_id in ("m1", "m2", "m3"):
        entry = by_id[message_id]
        verdict = enforcer.check(normalize_event(orjson.loads(entry.payload), STAMP))
        assert entry.contract["violations"] == (verdict.violations or [])
        assert entry.contract["planned"] is (not verdict.unplanned)
        assert entry.contract["result"] == ("blocked" if verdict.rejection else "passed" if message_id == "m1" else
                                            "omitted" if violations == "omit_properties" and message_id == "m2"
                                            else "allowed")
    pointers = {(v["pointer"], v["keyword"], v["action"]) for v in by_id["m2"].contract["violations"]}
    action = {"allow": "kept", "omit_properties": "omitted", "block": "blocked"}[violations]
    assert pointers == {("/properties/total", "type", action), ("/properties/note", "type", action),
                        ("/properties/colour", "additionalProperties", action)}
    assert all(v["contract"] == "track/order_completed" and v["message"] for v in by_id["m2"].contract["violations"])
    if unplanned == "block":
        assert by_id["m3"].contract == {"planned": False, "violations": [], "result": "blocked",
                                        "unplanned_policy": "block", "error_type": "unplanned_event"}


def test_many_violations_are_cut_to_a_bounded_list():
    settings = ContractSettings("contracts", CONTRACTS, "allow", "allow")
    store = Store(DebuggerSettings())
    Inspector(store, settings).accepted(record([track(1, properties={f"p{i}": i for i in range(500)})]))
    contract = store.query()[0].contract
    assert len(contract["violations"]) == MAX_VIOLATIONS and contract["violations_not_shown"] == 500 - MAX_VIOLATIONS


def test_events_decode_or_normalize_refuse_are_dead_lettered_at_once_and_the_rest_pending():
    store = Store(DebuggerSettings())
    Inspector(store).accepted(record([{"type": "track", "event": "No One", "messageId": "m1"},
                                      {"type": "bogus", "userId": "u", "messageId": "m2"}, "not an event", track(4)]))
    fates = {e.message_id: e.fate for e in store.query()}
    assert fates["m1"]["status"] == "dead_lettered" and fates["m1"]["error_type"] == "missing_identity"
    assert fates["m2"]["error_type"] == "unknown_type"
    assert fates[None]["error_type"] == "not_an_object"
    assert fates["m4"]["status"] == "pending" and store.query(source="web", status="pending")[0].message_id == "m4"
    assert store.pending(["m1", "m4", "nope"]) == {"m4": ("track", "Order Completed")}
    assert store.pending_entries == 1
    assert store.settle({"m4": {"status": "stored", "table": "order_completed"}}) == 1
    assert store.query(status="stored")[0].fate["table"] == "order_completed"
    assert store.pending_entries == 0


def test_filters_and_search():
    store = Store(DebuggerSettings())
    inspector = Inspector(store)
    inspector.accepted(record([track(1), {"type": "page", "name": "Home", "anonymousId": "a", "messageId": "p1"}]))
    inspector.accepted(record([track(2, properties={"coupon": "WINTER-Sale"})], "ios"))
    assert [e.message_id for e in store.query()] == ["m2", "p1", "m1"]
    assert [e.message_id for e in store.query(type="page")] == ["p1"]
    assert [e.message_id for e in store.query(source="ios")] == ["m2"]
    assert [e.message_id for e in store.query(event="Order Completed", limit=1)] == ["m2"]
    assert [e.message_id for e in store.query(q="winter-SALE")] == ["m2"]
    assert store.query(source="nowhere") == []


def test_an_entry_is_designs_json_shape():
    store = Store(DebuggerSettings())
    Inspector(store).accepted(record([track(1)]))
    shape = json.loads(orjson.dumps(store.query()[0].as_json()))
    assert {"id", "received_at", "source", "type", "event", "user_id", "anonymous_id", "message_id", "bytes",
            "payload", "http_status", "contract", "fate"} <= set(shape)
    assert set(shape["contract"]) >= {"planned", "violations"}
    assert set(shape["fate"]) == {"status", "table", "error_type", "error_message", "policy", "destinations"}
    assert shape["payload"]["properties"] == {"total": 1} and shape["http_status"] == 200


def test_a_refused_bodys_preview_never_holds_the_write_key():
    body = json.dumps({"writeKey": "sekrit-key-1", "batch": [{"type": "track", "writeKey": "sekrit-key-2"}]}).encode()
    text, key = preview(body, None, True)
    assert "sekrit" not in text and key == "sekrit-key-1" and json.loads(text) == {"batch": [{"type": "track"}]}
    for cut in range(1, len(body)):   # only its first bytes, cut anywhere: not JSON, the key replaced
        text, _ = preview(body[:cut], None, False)
        assert "sekrit-key" not in text, cut
    text, key = preview(gzip.compress(body), "gzip", True)
    assert "sekrit" not in text and key == "sekrit-key-1"
    text, _ = preview(b'{"a": 1, "writeKey" : "sekrit\\"key", ' + b"x" * 10_000, None, False)
    assert "sekrit" not in text and len(text) <= PREVIEW_CHARS + 1
    assert preview(b"\x1f\x8bnot gzip", "gzip", True)[0] == "(a gzip body that does not inflate)"


def test_who_may_read_the_debugger():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1")
    assert not is_loopback("example.com") and not is_loopback("")
    open_ = DebuggerSettings()
    assert access(open_, "127.0.0.1") == (True, None)           # loopback: no token needed
    assert access(open_, "0.0.0.0") == (False, None)            # everywhere without a token: off
    with_token = DebuggerSettings(token="t0k3n")
    assert access(with_token, "0.0.0.0") == (True, "t0k3n")
    assert access(with_token, "::") == (True, "t0k3n")
    assert access(with_token, "127.0.0.1") == (True, "t0k3n")   # a proxy on the same host: loopback proves nothing
    assert access(DebuggerSettings(enabled=False, token="t"), "127.0.0.1")[0] is False


def test_entry_payload_as_text_or_json():
    entry = Entry(STAMP, "web", b'{"a":1}', 7)
    assert orjson.loads(orjson.dumps(entry.as_json()))["payload"] == {"a": 1}
    entry = Entry(STAMP, "web", "cut…", 70_000, truncated=True)
    assert orjson.loads(orjson.dumps(entry.as_json()))["payload"] == "cut…"


def test_a_large_batch_is_inspected_in_steps():
    store = Store(DebuggerSettings())
    inspector = Inspector(store)
    steps = list(inspector.steps(record([track(n) for n in range(100)]), every=32))
    assert steps == [32, 64, 96, 100] and store.stats()["entries"] == 100
    assert list(inspector.steps(record([track(1)]), every=32)) == [1]


def test_the_debugger_off_imports_no_pipeline_stage():
    """serve --sink need not import Beam: what the collector imports for a debugger that is off
    (settings, store, preview, api, service) imports none of it; the checks come once it is on."""
    import subprocess
    import sys
    stages = ("apache_beam", "transforms.decode", "transforms.normalize")
    code = ("import sys, collector.debugger.service, collector.debugger.api, collector.debugger.preview; "
            f"print(sorted(m for m in {stages!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=str(__import__("pathlib").Path(__file__).resolve().parents[2]))
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
