"""No stage can wedge a job: an exception a stage did not anticipate is a dead letter
`internal_error` (the untouched input, the exception's type, message and line), the run goes
on, and conservation holds.

The faults are injected by wrapping the real functions each stage calls, raising for one
marked event each: no real input makes a correct stage raise, which is the point."""
import json

import pytest
import yaml

from pipeline.main import run
from tests.conftest import rows
from tests.destinations.receiver import Receiver
from transforms import consent, decode, normalize
from transforms.contracts.enforce import ContractEnforcer
from transforms.destinations.senders import WebhookSender
from transforms.experiments.extract import Reader
from transforms.rules.stage import ApplyTransformsFn
from transforms.warehouse.duckdb_backend import DuckDBWarehouse

STAGES = ("decode", "normalize", "contracts", "consent", "transform", "experiments", "warehouse")


class Injected(RuntimeError):
    """The fault: raised only for the event marked for a stage."""


def marked(stage: str) -> dict:
    return {"type": "track", "event": "Order Completed", "userId": "u-" + stage, "messageId": "boom-" + stage,
            "properties": {"order_id": "o-" + stage, "total": 1}}


def boom_if(stage: str, found) -> None:
    if found:
        raise Injected(f"injected into {stage}")


@pytest.fixture
def faults(monkeypatch):
    """Each stage's own call, wrapped so that it raises for its marked event only."""
    def wrap(owner, name, stage, is_marked):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            boom_if(stage, is_marked(*args, **kwargs))
            return real(*args, **kwargs)
        monkeypatch.setattr(owner, name, wrapper)

    wrap(decode, "decode_message", "decode", lambda message, *_: b'"boom-decode"' in message.data)
    wrap(normalize, "normalize_event", "normalize", lambda body, *_: body.get("messageId") == "boom-normalize")
    wrap(ContractEnforcer, "check", "contracts", lambda self, body: body.get("messageId") == "boom-contracts")
    wrap(consent, "route", "consent", lambda body, _: body.get("messageId") == "boom-consent")
    wrap(ApplyTransformsFn, "_transform", "transform", lambda self, event: event.body["messageId"] == "boom-transform")
    wrap(Reader, "read", "experiments", lambda self, body: body["messageId"] == "boom-experiments")
    wrap(DuckDBWarehouse, "prepare_events", "warehouse",  # write_events calls it too
         lambda self, batch, *_: any(e.body["messageId"] == "boom-warehouse" for e in batch))
    real_attempt = WebhookSender.attempt

    def attempt(self, payloads, key):
        send = real_attempt(self, payloads, key)
        return (lambda: boom_if("forwarding", True)) if any(b"boom-forwarding" in p for p in payloads) else send
    monkeypatch.setattr(WebhookSender, "attempt", attempt)


def test_an_unexpected_exception_in_any_stage_is_a_dead_letter_and_the_run_goes_on(tmp_path, faults):
    good = [{"type": "track", "event": "Order Completed", "userId": f"u{i}", "messageId": f"good-{i}",
             "properties": {"order_id": f"o{i}", "total": i}} for i in range(6)]
    lines = [json.dumps(e, separators=(",", ":")) for e in good + [marked(s) for s in STAGES + ("forwarding",)]]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "contracts").mkdir()  # none: a batch graph has a Contracts stage only when the section is there
    with Receiver() as receiver:
        config = {"contracts": {"directory": str(tmp_path / "contracts")}, "consent": {"destinations": {"crm": []}},
                  "warehouse": {"batch_size": 1},  # one event per write: the fault takes only its own event
                  "destinations": [{"name": "crm", "type": "webhook", "url": receiver.url,
                                    "allow_private_network": True, "batch": {"max_events": 1}}]}
        (tmp_path / "sluice.yaml").write_text(yaml.safe_dump(config))
        summary = run(["--input_files", str(tmp_path / "in.jsonl"), "--config", str(tmp_path / "sluice.yaml"),
                       "--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    assert summary["conservation"]["holds"], summary
    assert summary["events"] == len(lines)
    assert summary["dead_lettered"] == {"internal_error": len(STAGES)}
    assert summary["stored"] == len(lines) - len(STAGES)  # the forwarding fault costs the warehouse nothing
    crm = summary["destinations"]["crm"]
    assert (crm["candidates"], crm["delivered"], crm["failed"]) == (len(lines) - 5, len(lines) - 6, 1)
    delivered = {json.loads(r.body)["batch"][0]["messageId"] for r in receiver.accepted()}
    assert "boom-forwarding" not in delivered and {e["messageId"] for e in good} <= delivered

    import duckdb
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        letters = {r["error_stage"]: r for r in rows(conn, "SELECT * FROM _dead_letters")}
    assert set(letters) == set(STAGES) | {"forwarding"}
    for stage, letter in letters.items():
        assert letter["error_type"] == "internal_error"
        assert letter["payload"] == lines[len(good) + (STAGES + ("forwarding",)).index(stage)]  # untouched
        details = json.loads(letter["error_details"])
        assert details["exception_type"] == "Injected" and details["exception_message"] == f"injected into {stage}"
        assert details["raised_at"].startswith("tests/pipeline/test_internal_errors.py:")
        assert details["raised_at"].endswith(" in boom_if")
        assert f"Injected: injected into {stage}" in letter["error_message"]
    assert letters["forwarding"]["destination"] == "crm"
    assert letters["decode"]["message_id"] is None and letters["normalize"]["message_id"] == "boom-normalize"
