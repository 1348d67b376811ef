"""Consent, rules and the UDF through the real job: input file to tables, drops and dead letters."""
import json

import pytest

from pipeline.summary import format_table
from tests.conftest import rows, run_file_job

SALT = "pepper-for-tests"
CONFIG = """
consent:
  missing_consent: allow
  warehouse: [analytics]
transforms:
  - name: drop-tests
    types: [track]
    events: ["Test *"]
    drop_event: true
  - name: rename-signup
    events: [Signed Up]
    rename_event: Sign Up
  - name: hash-email
    hash: {paths: [traits.email, context.traits.email], salt_env: SLUICE_TEST_SALT, lowercase: true}
  - name: anonymize-ip
    anonymize_ip: true
"""


def track(message_id, name, **extra):
    return {"type": "track", "event": name, "userId": "u1", "messageId": message_id,
            "timestamp": "2026-11-02T09:00:00Z", **extra}


def consent(analytics):
    return {"consent": {"categoryPreferences": {"analytics": analytics}}, "ip": "198.51.100.23"}


def run_job(tmp_path, lines, config=CONFIG, udf=None):
    return run_file_job(tmp_path, lines, config, *(["--udf", udf] if udf else []))


@pytest.fixture(autouse=True)
def salt(monkeypatch):
    monkeypatch.setenv("SLUICE_TEST_SALT", SALT)


def test_consent_and_rules_route_every_event(tmp_path):
    identify = {"type": "identify", "userId": "u2", "messageId": "id1", "traits": {"email": " Ann@Example.com"},
                "context": consent(True)}
    malformed = track("bad-consent", "Order Completed", context={"consent": {"categoryPreferences": {"analytics": "yes"}}})
    summary, conn = run_job(tmp_path, [
        track("kept", "Order Completed", context=consent(True)),
        track("no-consent", "Order Completed", context=consent(False)),
        track("missing", "Order Completed"),
        malformed,
        track("test", "Test Purchase", context=consent(True)),
        track("signup", "Signed Up", context=consent(True)),
        identify,
    ])
    assert summary["stored"] == 4
    assert summary["dropped"] == {"consent": 1, "filtered:drop-tests": 1}
    assert summary["dead_lettered"] == {"invalid_consent": 1}
    assert summary["consent"] == {"present": 5, "missing": 1}
    assert summary["transforms"]["drop-tests"] == {"matched": 1, "applied": 1}
    # four events reach the rule; the one without an IP address is left as it was
    assert summary["transforms"]["anonymize-ip"] == {"matched": 4, "applied": 3}
    assert summary["transforms"]["rename-signup"] == {"matched": 1, "applied": 1}
    assert summary["transforms"]["hash-email"] == {"matched": 4, "applied": 1}  # only the identify has one
    table = format_table(summary).splitlines()
    at = table.index(next(line for line in table if line.startswith("rule anonymize-ip: applied")))
    assert table[at].split()[-1] == "3" and table[at + 1].split() == ["of", "events", "matched", "4"]
    assert {r["message_id"] for r in rows(conn, "SELECT message_id FROM tracks")} == {"kept", "missing", "signup"}
    assert rows(conn, "SELECT event, event_text FROM sign_up") == [{"event": "sign_up", "event_text": "Sign Up"}]
    assert {r["context_ip"] for r in rows(conn, "SELECT context_ip FROM tracks")} == {"198.51.100.0", None}
    # sha256(SALT + the trimmed, lower-cased email), computed once outside the project's code:
    #     printf '%s' "pepper-for-tests" "ann@example.com" | sha256sum
    expected = "195fddf4fa3a03ca0fb608a78812f558a5501f5318d11da73f5d88eb42640615"
    assert rows(conn, "SELECT email FROM identifies") == [{"email": expected}]
    assert rows(conn, "SELECT id, email FROM users") == [{"id": "u2", "email": expected}]
    [letter] = rows(conn, "SELECT error_stage, error_type, error_details, payload FROM _dead_letters")
    assert (letter["error_stage"], letter["error_type"]) == ("consent", "invalid_consent")
    assert json.loads(letter["error_details"])["pointer"] == "/context/consent/categoryPreferences/analytics"
    assert json.loads(letter["payload"]) == malformed  # untouched, replayable


def test_udf_outcomes_each_land_where_they_should(tmp_path):
    envelope = {"batch": [track("explode", "Explode", properties={"plan": "pro"}),
                          track("kept", "Order Completed", properties={"plan": "pro"})]}
    summary, conn = run_job(tmp_path, [
        envelope,
        track("internal", "Order Completed", properties={"plan": "internal"}),
        track("no-identity", "Lose Identity"),
        track("string", "Return String"),
        track("set", "Return Set"),
    ], config="transforms: []\n", udf="tests.pipeline.udfs:tag_plan")
    assert summary["stored"] == 1
    assert summary["dropped"] == {"udf": 1}
    assert summary["dead_lettered"] == {"transform_failed": 4}
    assert rows(conn, "SELECT message_id, plan, udf FROM order_completed") == [
        {"message_id": "kept", "plan": "pro", "udf": "seen"}]
    letters = {r["message_id"]: r for r in rows(conn, "SELECT * FROM _dead_letters")}
    explode = letters["explode"]
    assert explode["error_message"] == "the UDF tests.pipeline.udfs:tag_plan raised: ValueError: cannot handle Explode"
    details = json.loads(explode["error_details"])
    assert details["exception"] == "ValueError: cannot handle Explode"
    assert details["raised_at"].startswith("tests/pipeline/udfs.py:") and details["batch_index"] == 0
    # The UDF changed its copy before raising; the dead letter keeps the event as it arrived.
    assert json.loads(explode["payload"]) == envelope["batch"][0]
    assert "userId" in letters["no-identity"]["error_message"]
    assert "returned str" in letters["string"]["error_message"]
    assert "not JSON" in letters["set"]["error_message"]
    assert {r["error_stage"] for r in letters.values()} == {"transform"}


def test_rules_that_remove_identity_are_dead_letters(tmp_path):
    config = "transforms:\n  - name: strip-ids\n    drop: [userId, anonymousId]\n"
    summary, conn = run_job(tmp_path, [track("a", "Order Completed"),
                                       {**track("b", "Order Completed"), "anonymousId": "anon"}], config)
    assert summary["dead_lettered"] == {"transform_failed": 2} and summary["stored"] == 0
    [message] = {r["error_message"] for r in rows(conn, "SELECT error_message FROM _dead_letters")}
    assert message.startswith("the transformation rules left an invalid event: track needs a userId")


def test_consent_for_destinations_only_keeps_events_for_forwarding(tmp_path):
    """Without warehouse consent an event a destination may have is counted once as the
    consent drop (the warehouse's), after the rules ran; per-destination denials are counted."""
    config = ("consent:\n  warehouse: [analytics]\n  destinations:\n    crm: [marketing]\n    ads: [ads]\n"
              "transforms:\n  - name: drop-internal\n    when: {path: properties.internal, op: eq, value: true}\n"
              "    drop_event: true\n")
    prefs = {"analytics": False, "marketing": True, "ads": False}
    summary, _ = run_job(tmp_path, [
        track("crm-only", "A", context={"consent": {"categoryPreferences": prefs}}),
        track("internal", "A", properties={"internal": True}, context={"consent": {"categoryPreferences": prefs}}),
        track("crm-off", "A", integrations={"crm": False}, context={"consent": {"categoryPreferences": prefs}}),
    ], config)
    assert summary["stored"] == 0
    assert summary["dropped"] == {"consent": 2, "filtered:drop-internal": 1}
    assert summary["not_forwarded"] == {"ads": {"consent": 3}, "crm": {"integrations": 1}}
