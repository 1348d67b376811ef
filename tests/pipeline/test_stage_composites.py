"""ValidateContracts, WriteWarehouse and ForwardToDestinations, each alone under TestPipeline
(FnApiRunner) and asserted with assert_that: against the sample contracts, a real DuckDB file,
and a real HTTP receiver on 127.0.0.1. Events come from the real Decode and Normalize stages
(and Consent, for forwarding), as in the job."""
import json
from collections import Counter
from pathlib import Path

import apache_beam as beam
import duckdb
import yaml
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline import config as config_module
from pipeline import contracts as contracts_module
from pipeline.config import Config
from tests.conftest import ROOT, rows
from tests.destinations.receiver import Receiver
from tests.pipeline import untouched
from transforms.consent import ApplyConsent
from transforms.contracts.model import ContractSettings
from transforms.contracts.stage import ValidateContracts
from transforms.decode import DecodeMessages
from transforms.destinations.stage import ForwardToDestinations, SelectDeliveries
from transforms.messages import RawMessage
from transforms.normalize import NormalizeEvents
from transforms.warehouse.sink import WarehouseSettings, WriteWarehouse

NOW = "2026-11-23T10:00:00.000000Z"
SOURCE = "file:events.jsonl"


def line(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def normalized_events(p, bodies, label="Events"):
    """The bodies as input lines through the real Decode and Normalize stages; line n is at
    position n. Returns the normalized events (a body that fails either stage fails the test)."""
    messages = p | f"{label}Read" >> beam.Create([RawMessage(line(b), {}, SOURCE, NOW, str(n))
                                                  for n, b in enumerate(bodies, 1)])
    decoded = messages | f"{label}Decode" >> DecodeMessages()
    out = decoded.events | f"{label}Normalize" >> NormalizeEvents()
    assert_that(((decoded.dead_letters, out.dead_letters) | f"{label}Refused" >> beam.Flatten()),
                equal_to([]), label=f"{label} decode and normalize take every line")
    return out.events


def letter_summary(record) -> tuple:
    """A dead letter's identity, cause and payload (the exact input line, for replay)."""
    return (record["message_id"], record["error_stage"], record["error_type"], record["source"],
            record["payload"], record["payload_encoding"])


# --- ValidateContracts, with the sample contracts (samples/contracts)

CONTRACTS = str(ROOT / "samples" / "contracts")
ORDER = {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "good",
         "timestamp": "2026-11-02T09:00:00Z", "context": {"library": {"name": "analytics.js"}},
         "properties": {"orderId": "o-1", "total": 10.5, "currency": "EUR", "products": [
             {"productId": "p-1", "price": 10.5, "quantity": 1}]}}
# Two properties break track/order_completed.json (total: a string; currency: not in its enum);
# orderId and the product are fine.
VIOLATING = {**ORDER, "messageId": "bad", "properties": {**ORDER["properties"], "total": "ten", "currency": "JPY"}}
IDENTIFY = {"type": "identify", "userId": "u1", "messageId": "who", "timestamp": "2026-11-02T09:00:00Z",
            "traits": {"email": "ann@example.com", "plan": "pro"}}
UNPLANNED = {"type": "track", "event": "Order Refunded", "userId": "u1", "messageId": "unplanned",
             "timestamp": "2026-11-02T09:00:00Z"}
CONTRACT_INPUT = [ORDER, VIOLATING, IDENTIFY, UNPLANNED]
BAD_POINTERS = [("/properties/currency", "enum"), ("/properties/total", "type")]


def contract_settings(unplanned="allow", violations="allow") -> ContractSettings:
    """The samples directory read and checked as the launcher does (pipeline.contracts.load)."""
    loaded = contracts_module.load(Config(contracts=ContractSettings(CONTRACTS, (), unplanned, violations)))
    assert "track/order_completed" in loaded.contracts.by_name()
    return loaded.contracts


def violations_of(event) -> tuple:
    return tuple(sorted((v["pointer"], v["keyword"], v["action"]) for v in event.violations or ()))


def test_validate_contracts_allow_passes_every_event_and_records_the_violations():
    with TestPipeline(runner=FnApiRunner()) as p:
        checked = normalized_events(p, CONTRACT_INPUT) | ValidateContracts(contract_settings())
        assert_that(checked.events | beam.Map(lambda e: (e.body["messageId"], violations_of(e),
                                                         e.body["properties"] if "properties" in e.body else None)),
                    equal_to([("good", (), ORDER["properties"]),
                              ("bad", tuple((p, k, "kept") for p, k in BAD_POINTERS), VIOLATING["properties"]),
                              ("who", (), None),
                              ("unplanned", (), None)]), label="events")
        assert_that(checked.events | "Contracts" >> beam.FlatMap(lambda e: {v["contract"] for v in e.violations or ()}),
                    equal_to(["track/order_completed"]), label="contract")
        assert_that(checked.dead_letters, equal_to([]), label="dead letters")


def test_validate_contracts_omit_removes_the_offending_properties_and_never_writes_the_input():
    with TestPipeline(runner=FnApiRunner()) as p:
        given = normalized_events(p, CONTRACT_INPUT) | untouched.Kept("contracts")
        checked = given | ValidateContracts(contract_settings(violations="omit_properties"))
        assert_that(checked.events | beam.Map(lambda e: (e.body["messageId"], violations_of(e),
                                                         e.body.get("properties"))),
                    equal_to([("good", (), ORDER["properties"]),
                              ("bad", tuple((p, k, "omitted") for p, k in BAD_POINTERS),
                               {"orderId": "o-1", "products": ORDER["properties"]["products"]}),
                              ("who", (), None),
                              ("unplanned", (), None)]), label="events")
        assert_that(checked.events | untouched.seen_by("contracts"), equal_to([True] * 4), label="seen")
        assert_that(checked.dead_letters, equal_to([]), label="dead letters")
    untouched.assert_untouched("contracts", 4)  # the dead-letter payload and later stages see the input


def test_validate_contracts_block_dead_letters_the_violating_event_with_its_pointers():
    with TestPipeline(runner=FnApiRunner()) as p:
        checked = normalized_events(p, CONTRACT_INPUT) | ValidateContracts(contract_settings(violations="block"))
        assert_that(checked.events | beam.Map(lambda e: (e.body["messageId"], violations_of(e))),
                    equal_to([("good", ()), ("who", ()), ("unplanned", ())]), label="events")
        assert_that(checked.dead_letters | beam.Map(letter_summary),
                    equal_to([("bad", "contracts", "contract_violation", SOURCE, line(VIOLATING).decode(), "utf-8")]),
                    label="dead letter")
        assert_that(checked.dead_letters | "Pointers" >> beam.Map(
                        lambda r: sorted((v["contract"], v["pointer"], v["keyword"], v["action"])
                                         for v in r["error_details"]["violations"])),
                    equal_to([[("track/order_completed", p, k, "blocked") for p, k in BAD_POINTERS]]),
                    label="pointers")


def test_validate_contracts_block_unplanned_dead_letters_a_track_event_without_a_contract():
    with TestPipeline(runner=FnApiRunner()) as p:
        checked = normalized_events(p, CONTRACT_INPUT) | ValidateContracts(contract_settings(unplanned="block"))
        assert_that(checked.events | beam.Map(lambda e: e.body["messageId"]), equal_to(["good", "bad", "who"]),
                    label="events")
        assert_that(checked.dead_letters | beam.Map(lambda r: (*letter_summary(r), r["error_details"])),
                    equal_to([("unplanned", "contracts", "unplanned_event", SOURCE, line(UNPLANNED).decode(), "utf-8",
                               {"event": "Order Refunded", "contract": "track/order_refunded"})]),
                    label="dead letter")


# --- WriteWarehouse, into a DuckDB file

def page(message_id, **properties):
    return {"type": "page", "name": "Home", "userId": "u1", "messageId": message_id,
            "timestamp": "2026-11-02T09:00:00Z", "properties": properties}


def run_write(url: str, bodies, refused=()):
    """One pipeline writing the bodies; asserts the returned dead letters are the insert_failed
    letters of exactly the `refused` bodies, each with its input line as payload."""
    expected = [(b["messageId"], "warehouse", "insert_failed", SOURCE, line(b).decode(), "utf-8") for b in refused]
    with TestPipeline(runner=FnApiRunner()) as p:
        failed = normalized_events(p, bodies) | WriteWarehouse(WarehouseSettings(url))
        assert_that(failed | beam.Map(letter_summary), equal_to(expected), label="dead letters")
        assert_that(failed | "Messages" >> beam.Map(lambda r: r["error_message"].startswith(
            "the warehouse refused the event: ")), equal_to([True] * len(expected)), label="messages")


def read(path: Path, sql: str) -> list:
    with duckdb.connect(str(path), read_only=True) as conn:
        return rows(conn, sql)


def test_write_warehouse_stores_events_returns_no_dead_letters_and_a_rerun_adds_nothing(tmp_path):
    path = tmp_path / "w.duckdb"
    bodies = [ORDER, {**ORDER, "messageId": "second", "properties": {**ORDER["properties"], "total": 3}},
              IDENTIFY, page("p1", path="/", title="Home")]
    run_write(f"duckdb:///{path}", bodies)
    tracks = "SELECT message_id, event, event_text, user_id FROM tracks ORDER BY 1"
    orders = "SELECT message_id, order_id, total, currency, products FROM order_completed ORDER BY 1"
    assert read(path, tracks) == [
        {"message_id": "good", "event": "order_completed", "event_text": "Order Completed", "user_id": "u1"},
        {"message_id": "second", "event": "order_completed", "event_text": "Order Completed", "user_id": "u1"}]
    stored_orders = read(path, orders)
    assert [(r["message_id"], r["order_id"], r["total"], r["currency"]) for r in stored_orders] == [
        ("good", "o-1", 10.5, "EUR"), ("second", "o-1", 3.0, "EUR")]
    assert json.loads(stored_orders[0]["products"]) == ORDER["properties"]["products"]
    assert read(path, "SELECT message_id, email, plan FROM identifies") == [
        {"message_id": "who", "email": "ann@example.com", "plan": "pro"}]
    assert read(path, "SELECT id, email, plan FROM users") == [{"id": "u1", "email": "ann@example.com", "plan": "pro"}]
    assert read(path, "SELECT message_id, path, title FROM pages") == [
        {"message_id": "p1", "path": "/", "title": "Home"}]
    assert table_sizes(path)["_dead_letters"] == 0  # WriteWarehouse returns its dead letters, writes none
    # the same events again: duplicates (a policy drop), not dead letters, and not one row more
    before = table_sizes(path)
    run_write(f"duckdb:///{path}", bodies)
    assert table_sizes(path) == before


def table_sizes(path: Path) -> dict:
    with duckdb.connect(str(path), read_only=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def test_write_warehouse_returns_a_refused_row_as_insert_failed_and_stores_its_batch_mates(tmp_path):
    """Someone retyped a column by hand (DATE, a type Sluice never writes, behind its back): the
    row carrying a value it cannot take is an insert_failed dead letter; the rest of its batch lands."""
    path = tmp_path / "w.duckdb"
    run_write(f"duckdb:///{path}", [page("p1", code="A-1")])
    with duckdb.connect(str(path)) as conn:
        conn.execute("ALTER TABLE pages ALTER code TYPE DATE USING NULL")
    refused = page("p2", code="not a date")
    run_write(f"duckdb:///{path}", [refused, page("p3", title="c"), page("p4", code="2026-11-02")], refused=[refused])
    assert [(r["message_id"], str(r["code"]) if r["code"] else None) for r in
            read(path, "SELECT message_id, code FROM pages ORDER BY 1")] == [
        ("p1", None), ("p3", None), ("p4", "2026-11-02")]


# --- ForwardToDestinations, to a real HTTP receiver

FORWARDED = [
    {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "t1", "properties": {"total": 1}},
    {"type": "track", "event": "Signed Up", "userId": "u2", "messageId": "t2"},
    {"type": "identify", "userId": "u3", "messageId": "i1", "traits": {"plan": "pro"}},
    {"type": "page", "userId": "u4", "name": "Home", "messageId": "p1"},
    {"type": "track", "event": "Order Completed", "userId": "u5", "messageId": "t3", "properties": {"total": 3}},
]
NOT_FORWARDED = [
    {"type": "group", "userId": "u1", "groupId": "g", "messageId": "g1"},  # not a type the destination takes
    {"type": "track", "event": "Private", "userId": "u1", "messageId": "opt-out", "integrations": {"crm": False}},
]


def forwarding_config(tmp_path, url: str) -> Config:
    """A config with one webhook destination, read as the launcher reads it (schema, then
    transforms/destinations/model.py); short retries so a failing run ends quickly."""
    section = [{"name": "crm", "type": "webhook", "url": url, "allow_private_network": True,
                "types": ["track", "identify", "page"],
                "batch": {"max_events": 2, "max_wait_seconds": 1},
                "retry": {"max_attempts": 2, "initial_backoff_seconds": 0.01, "max_backoff_seconds": 0.02}}]
    path = tmp_path / "sluice.yaml"
    path.write_text(yaml.safe_dump({"destinations": section}))
    config = config_module.load(str(path))
    assert [d.name for d in config.destinations] == ["crm"]
    return config


def run_forwarding(config: Config, bodies, expected_letters: list):
    """Decode, Normalize, Consent (it routes each event to the destinations it may go to), then
    SelectDeliveries and ForwardToDestinations; asserts the dead letters are `expected_letters`."""
    with TestPipeline(runner=FnApiRunner()) as p:
        routed = normalized_events(p, bodies) | ApplyConsent(config.consent)
        assert_that(routed.dead_letters, equal_to([]), label="consent takes every event")
        selected = routed.events | SelectDeliveries(config.destinations)
        assert_that(selected.dead_letters, equal_to([]), label="selection fails nothing")
        forwarded = selected.deliveries | ForwardToDestinations(config.destinations)
        assert_that(forwarded.dead_letters | beam.Map(lambda r: (*letter_summary(r), r["destination"],
                                                                 r["error_details"]["status"])),
                    equal_to(expected_letters), label="dead letters")
        # every forwarded event is in one `_deliveries` row, delivered when no dead letter says otherwise
        status = "failed" if expected_letters else "delivered"
        assert_that(forwarded.deliveries | beam.FlatMap(lambda r: [(r["destination"], r["status"], i)
                                                                   for i in r["message_ids"]]),
                    equal_to([("crm", status, b["messageId"]) for b in FORWARDED]), label="outcome rows")


def test_forward_to_a_destination_answering_200_delivers_each_event_once_and_no_dead_letters(tmp_path):
    with Receiver() as receiver:
        run_forwarding(forwarding_config(tmp_path, receiver.url), FORWARDED + NOT_FORWARDED, [])
    assert receiver.requests and all(r.status == 200 and r.path == "/hook" for r in receiver.requests)
    delivered = Counter(payload["messageId"] for payload in receiver.delivered_payloads())
    assert delivered == Counter(b["messageId"] for b in FORWARDED)  # each once; the other two never
    assert all(1 <= len(json.loads(r.body)["batch"]) <= 2 for r in receiver.requests)  # batch.max_events


def test_forward_to_a_destination_answering_400_dead_letters_each_event_once_with_its_payload(tmp_path):
    with Receiver(default_status=400) as receiver:
        run_forwarding(forwarding_config(tmp_path, receiver.url), FORWARDED + NOT_FORWARDED,
                       [(b["messageId"], "forwarding", "delivery_failed", SOURCE, line(b).decode(), "utf-8", "crm", 400)
                        for b in FORWARDED])
    # a 400 is not retried: each event was sent exactly once, and refused
    sent = Counter(p["messageId"] for r in receiver.requests for p in json.loads(r.body)["batch"])
    assert sent == Counter(b["messageId"] for b in FORWARDED)
    assert receiver.accepted() == []
