"""Dead letters as Pub/Sub messages: payload as data, error fields as attributes within
Pub/Sub's limits."""
import json

from transforms import deadletter
from transforms.messages import Rejection
from transforms.pubsub_publish import MAX_ATTRIBUTE_VALUE_BYTES, dead_letter_message


def record(payload: bytes, message="bad", details=None, attributes=None):
    return deadletter.make_record("decode", Rejection("malformed_json", message, details), payload,
                                  attributes=attributes or {"origin": "web"}, source="pubsub:projects/p/subscriptions/s",
                                  received_at="2026-11-26T00:00:00.000Z", position="17")


def test_payload_is_the_data_and_error_fields_are_attributes():
    data, attributes = dead_letter_message(record(b'{"oops"', details={"at": 7}))
    assert data == b'{"oops"'
    assert attributes["error_stage"] == "decode" and attributes["error_type"] == "malformed_json"
    assert attributes["source"] == "pubsub:projects/p/subscriptions/s"
    assert json.loads(attributes["error_details"]) == {"at": 7}
    assert json.loads(attributes["attributes"]) == {"origin": "web"}
    assert "destination" not in attributes and "truncated" not in attributes  # None fields are left out
    assert all(isinstance(v, str) for v in attributes.values())


def test_binary_payloads_come_back_as_their_original_bytes():
    raw = b"\xff\xfe\x00binary"
    data, _ = dead_letter_message(record(raw))
    assert data == raw


def test_values_past_the_attribute_limit_are_cut_on_a_character_and_named():
    data, attributes = dead_letter_message(record(b"x", message="é" * 2000, details={"v": "y" * 5000}))
    for name in ("error_message", "error_details"):
        assert len(attributes[name].encode()) <= MAX_ATTRIBUTE_VALUE_BYTES
    assert attributes["error_message"] == "é" * (MAX_ATTRIBUTE_VALUE_BYTES // 2)
    assert attributes["truncated"] == "error_message,error_details"
