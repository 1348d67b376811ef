import json

import pytest

from transforms.decode import DecodeLimits, Dropped, Refused, decode_message
from transforms.messages import Event, RawMessage

NOW = "2026-11-23T10:00:00.000000Z"


def decode(data: bytes, limits=DecodeLimits()):
    return list(decode_message(RawMessage(data, {"k": "v"}, "file:x", None, "7"), NOW, limits))


def only_error(data, limits=DecodeLimits()):
    [outcome] = decode(data, limits)
    assert isinstance(outcome, Refused), outcome
    return outcome.rejection.error_type


def test_single_event_keeps_its_exact_bytes():
    data = b'{"type":"track","event":"A","userId":"u"}'
    [event] = decode(data)
    assert isinstance(event, Event)
    assert event.payload == data and event.body["event"] == "A"
    assert (event.source, event.position, event.received_at, event.attributes) == ("file:x", "7", NOW, {"k": "v"})


def test_batch_is_split_and_envelope_fields_fill_gaps():
    envelope = {"batch": [{"type": "track", "event": "A", "userId": "u"},
                          {"type": "identify", "userId": "u", "context": {"ip": "1.2.3.4"}}],
                "sentAt": "2026-01-01T00:00:00Z", "context": {"library": {"name": "x"}}}
    first, second = decode(json.dumps(envelope).encode())
    assert first.batch_index == 0 and second.batch_index == 1
    assert first.body["sentAt"] == "2026-01-01T00:00:00Z" and first.body["context"] == {"library": {"name": "x"}}
    assert second.body["context"] == {"ip": "1.2.3.4"}  # the event's own context wins
    assert "sentAt" not in first.original  # the original stays as it was sent


@pytest.mark.parametrize("data, error_type", [
    (b'{"type": "track", "ev', "malformed_json"),
    (b'{"type": "track", "x": NaN}', "malformed_json"),
    (b'\xc3\x28{"a": 1}', "malformed_json"),
    (b"[1, 2]", "not_an_object"),
    (b'"text"', "not_an_object"),
    (b'{"batch": {"type": "track"}}', "invalid_batch"),
])
def test_bad_messages(data, error_type):
    assert only_error(data) == error_type


@pytest.mark.parametrize("data, byte, reason", [
    (b'{"type": "track", "event": "caf\xc3", "userId": "u"}', 0xc3, "invalid continuation byte"),
    (b'\xff{"type": "track"}', 0xff, "invalid start byte"),
    # a long run of digits takes the stdlib parser: it says the same
    (b'{"type": "track", "id": 12345678901234567890123, "e": "\xe9"}', 0xe9, "invalid continuation byte"),
])
def test_invalid_utf8_is_described_as_such(data, byte, reason):
    [outcome] = decode(data)
    assert outcome.rejection.error_type == "malformed_json"
    assert outcome.rejection.message == (f"not valid JSON: not UTF-8 text: byte 0x{byte:02x} at offset "
                                         f"{data.index(bytes([byte]))} ({reason}); JSON must be UTF-8")
    assert outcome.payload == data  # kept byte for byte, to replay once fixed


@pytest.mark.parametrize("data, message", [
    # UTF-8 text the stdlib, given bytes, would take for UTF-16 (a NUL byte); its long digit run
    # sends it down that path (it was internal_error: the UTF-8 check found nothing to name)
    (b"\x00" + b"1" * 20, "Expecting value: line 1 column 1 (char 0)"),
    (b'\x00{"type": "track", "id": 12345678901234567890123}', "Expecting value: line 1 column 1 (char 0)"),
])
def test_utf8_that_is_not_json_on_the_exact_path_is_malformed_json(data, message):
    [outcome] = decode(data)
    assert outcome.rejection.error_type == "malformed_json"
    assert message in outcome.rejection.message


def test_size_limits():
    limits = DecodeLimits(max_event_bytes=100, max_batch_bytes=1000)
    big_event = json.dumps({"type": "track", "event": "A", "userId": "u", "p": "x" * 200}).encode()
    assert only_error(big_event, limits) == "payload_too_large"
    big_batch = json.dumps({"batch": [{"type": "track", "event": "A", "userId": "u", "p": "x" * 50}] * 30}).encode()
    assert only_error(big_batch, limits) == "batch_too_large"
    mixed = json.dumps({"batch": [{"type": "track", "userId": "u", "p": "x" * 200},
                                  {"type": "track", "userId": "u"}]}).encode()
    too_big, fine = decode(mixed, limits)
    assert too_big.rejection.error_type == "payload_too_large" and too_big.batch_index == 0
    assert isinstance(fine, Event)


def test_bad_batch_members_are_refused_one_by_one():
    outcomes = decode(b'{"batch": [{"type": "track", "userId": "u", "event": "A"}, 42, "s"]}')
    assert [type(o) for o in outcomes] == [Event, Refused, Refused]
    assert outcomes[1].payload == b"42" and outcomes[1].batch_index == 1


@pytest.mark.parametrize("data, policy", [(b"   ", "empty_message"), (b"", "empty_message"),
                                          (b'{"batch": []}', "empty_batch")])
def test_policy_drops(data, policy):
    assert decode(data) == [Dropped(policy)]


def test_utf8_bom_is_tolerated():
    [event] = decode(b'\xef\xbb\xbf{"type":"track","event":"A","userId":"u"}')
    assert isinstance(event, Event)


def test_dead_letter_records_match_their_schema():
    import jsonschema

    import schemas
    from transforms import deadletter
    from transforms.messages import Rejection
    validator = jsonschema.Draft202012Validator(schemas.load("dead_letter.schema.json"))
    for payload in (b'{"a": 1}', b"\xff\xfe"):
        record = deadletter.make_record("decode", Rejection("malformed_json", "bad\nline", {"x": 1}), payload,
                                        attributes={}, source="file:x", received_at=NOW, position="1")
        validator.validate(record)
        assert deadletter.decode_payload(record["payload"], record["payload_encoding"]) == payload
        assert "\n" not in record["error_message"]


def test_dead_letter_ids_are_fixed_vectors():
    """The id is the dead-letter table's dedupe key (a re-run or a redelivery of the same failure
    is one row): if its format changes, every failure of a re-run is stored again. These are the
    first 32 hex digits of sha256(stage NUL error_type NUL source NUL position NUL payload),
    computed once outside the project's code, e.g.
        printf 'decode\\0malformed_json\\0file:x\\0001\\0{"a": 1}' | sha256sum | cut -c1-32
    (`\\0001` is printf's NUL followed by the position 1). Change them on purpose only."""
    from transforms import deadletter
    from transforms.messages import Rejection

    def letter_id(position):
        return deadletter.make_record("decode", Rejection("malformed_json", "bad"), b'{"a": 1}', attributes={},
                                      source="file:x", received_at=NOW, position=position)["dead_letter_id"]
    assert letter_id("1") == "bcf085fba2874f2891d0d28717138d21"
    assert letter_id("2") == "1d8f68fb8b27eb7d7a64c4e40ecfcffd"  # the same bad line twice: two dead letters
    # An event from a batch envelope: its position is "<line>#<index>", its payload its own compact JSON.
    event = Event({"type": "track"}, {"type": "track"}, None, {}, "file:x", NOW, batch_index=2, position="1")
    record = deadletter.from_event("normalize", Rejection("missing_identity", "no id"), event)
    assert record["dead_letter_id"] == "7fe8a310780bb20c41c0ab0ea5fda027"


def test_a_batch_envelope_names_the_source_of_its_events_and_dead_letters():
    """The collector writes its source's name as the envelope's `source`: events and the dead
    letters of the batch carry it instead of the transport's ("file:x")."""
    envelope = {"batch": [{"type": "track", "event": "A", "userId": "u", "source": "web"}, 7],
                "source": "web", "receivedAt": "2026-11-23T10:00:00.000Z"}
    event, refused = decode(json.dumps(envelope).encode())
    assert event.source == "web" and event.body["source"] == "web"  # the event's own field is kept
    assert isinstance(refused, Refused) and refused.source == "web"
    [invalid] = decode(b'{"batch": {"type": "track"}, "source": "web"}')
    assert invalid.rejection.error_type == "invalid_batch" and invalid.source == "web"


@pytest.mark.parametrize("named", [None, "", 3, {"name": "web"}])
def test_without_a_string_source_the_transport_names_it(named):
    envelope = {"batch": [{"type": "track", "event": "A", "userId": "u"}, "x"]}
    if named is not None:
        envelope["source"] = named
    event, refused = decode(json.dumps(envelope).encode())
    assert event.source == "file:x" and refused.source == "file:x"
    [single] = decode(b'{"type": "track", "event": "A", "userId": "u", "source": "web"}')
    assert single.source == "file:x"  # only a batch envelope names the source


def test_decode_dead_letters_carry_the_envelope_source():
    from apache_beam import pvalue

    from transforms.decode import DecodeMessagesFn
    fn = DecodeMessagesFn(DecodeLimits())
    data = json.dumps({"batch": [{"type": "track", "event": "A", "userId": "u"}, [1]], "source": "web"}).encode()
    event, letter = fn.attempt(RawMessage(data, {}, "file:x", NOW, "1"))
    assert event.source == "web"
    assert isinstance(letter, pvalue.TaggedOutput) and letter.value["source"] == "web"


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth, limit, fits", [
    (2, 4, True),     # the event (1) and properties (2) and x (3+): 1 + 1 + 2 = 4 levels
    (3, 4, False),
    (1024, 64, False),  # orjson itself refuses past 1,024 levels: still too_deep, not malformed_json
    (3000, 64, False),
])
def test_nesting_past_the_limit_is_too_deep(depth, limit, fits):
    data = ('{"type":"track","event":"A","userId":"u","properties":{"x":%s}}' % deep(depth)).encode()
    outcomes = decode(data, DecodeLimits(max_depth=limit))
    if fits:
        assert isinstance(outcomes[0], Event)
    else:
        [refused] = outcomes
        assert (refused.rejection.error_type, refused.payload) == ("too_deep", data)
        assert refused.rejection.details == {"limit": limit}


def test_a_too_deep_batch_is_refused_whole_and_its_envelope_levels_do_not_count():
    member = '{"type":"track","event":"A","userId":"u","properties":{"x":%s}}'
    within = ('{"batch":[%s]}' % (member % deep(2))).encode()
    assert [type(o) for o in decode(within, DecodeLimits(max_depth=4))] == [Event]
    beyond = ('{"batch":[%s,%s]}' % (member % deep(1), member % deep(3))).encode()
    [refused] = decode(beyond, DecodeLimits(max_depth=4))
    assert (refused.rejection.error_type, refused.payload, refused.batch_index) == ("too_deep", beyond, None)
    # an envelope's context is merged into every member: it counts at the member's depth
    merged = ('{"batch":[%s],"context":{"a":{"b":{"c":{}}}}}' % (member % deep(1))).encode()
    assert only_error(merged, DecodeLimits(max_depth=4)) == "too_deep"


def test_identical_bad_members_of_two_files_stay_two_dead_letters():
    """The transport's source (the file) still tells dead letters apart once the envelope's
    source names them; a re-read of the same file keeps the same id."""
    from transforms.decode import DecodeMessagesFn
    fn = DecodeMessagesFn(DecodeLimits())
    data = b'{"batch": [7], "source": "web"}'
    letters = [fn.attempt(RawMessage(data, {}, f"file:{name}", NOW, "1"))[0].value for name in ("a", "b", "a")]
    assert [letter["source"] for letter in letters] == ["web"] * 3
    assert letters[0]["dead_letter_id"] != letters[1]["dead_letter_id"]
    assert letters[0]["dead_letter_id"] == letters[2]["dead_letter_id"]
