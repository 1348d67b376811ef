"""Rule actions (transforms/rules/actions.py) and the rule engine (transforms/rules/engine.py)."""
import copy
from collections import Counter

import pytest

from transforms.rules.actions import RuleError, anonymize
from transforms.rules.engine import Filtered, TransformRules
from transforms.rules.paths import identical

SALT = "pepper-s3cret"


def run(rule, body, source="file:events.jsonl", counts=None):
    """`body` after the one rule named r; checks that the input was not written."""
    snapshot = copy.deepcopy(body)
    out = TransformRules([{"name": "r", **rule}]).apply(body, source, Counter() if counts is None else counts)
    assert body == snapshot
    return out


def config_error(specs) -> RuleError:
    with pytest.raises(RuleError) as caught:
        TransformRules(specs)
    return caught.value


# sha256(SALT + value) in hex, computed once outside the project's code with
#     printf '%s' "pepper-s3cret" "<value>" | sha256sum
# Fixed vectors, not the formula again: a change of the hashing (salt order, encoding, JSON
# spelling of non-strings) must fail here, because it changes every stored hash.
SHA = {
    b"019mr8mf4r": "7c7b98d52282e68d455652a5cc69e1ab01652066f48b85bd5fef3bc23fb9cbeb",
    b" PGibbons@Example.com ": "1a0af2a1949aff75f7d4b7c932edb04bfc63a283e5255ef8e4b90561d0889b4d",
    b'{"a":[true,null],"b":1}': "b66ab82d9132858eea60026a82ef7b82fdd0d6d2cef2a36ea6a8dbb249601a9f",
    b"42": "e685d3ce84d1740786a7da68901867f8816789c1e4d61f5efb39a6ab230e89ed",
    b"pgibbons@example.com": "be28e0469c694c580b05dcfe917ec47591df83ce67d1d23a3e65e798c9e6a029",
}


def sha(value: bytes) -> str:
    return SHA[value]


@pytest.fixture
def salt_env(monkeypatch):
    monkeypatch.setenv("SLUICE_TEST_SALT", SALT)
    return "SLUICE_TEST_SALT"


# --- rename, drop, set

def test_rename_moves_skips_missing_and_counts_blocked():
    counts = Counter()
    body = {"properties": {"email": "a@example.com", "plan": "pro"}, "traits": "blocked"}
    out = run({"rename": {"properties.email": "context.traits.email", "properties.absent": "x",
                          "properties.plan": "traits.plan"}}, body, counts=counts)
    assert out == {"properties": {"plan": "pro"}, "context": {"traits": {"email": "a@example.com"}},
                   "traits": "blocked"}
    assert counts == Counter({"r.matched": 1, "r.applied": 1, "r.skipped": 1})


@pytest.mark.parametrize("mapping, body, expected", [
    ({"properties.payload": "properties"}, {"properties": {"payload": {"payload": "v", "k": 1}}},
     {"properties": {"payload": "v", "k": 1}}),
    ({"properties.a": "properties.a"}, {"properties": {"a": 1}}, {"properties": {"a": 1}}),
    ({"properties": "properties.old"}, {"properties": {"a": 1}}, {"properties": {"old": {"a": 1}}}),
])
def test_rename_between_nested_paths(mapping, body, expected):
    assert run({"rename": mapping}, body) == expected


def test_drop():
    body = {"properties": {"email": "a@example.com", "plan": "pro"}, "context": {"ip": "8.8.8.8"}}
    assert run({"drop": ["properties.email", "/context/ip", "nothing.here"]}, body) == {
        "properties": {"plan": "pro"}}  # the emptied context goes too


def test_set_value_and_copy():
    counts = Counter()
    body = {"properties": {"plan": "pro", "address": {"city": "Paris"}}, "traits": "text"}
    out = run({"set": {"context.plan": {"value": "pro+"}, "traits.x": {"value": 1},
                       "context.address": {"copy": "properties.address"},
                       "context.none": {"copy": "properties.missing"}}}, body, counts=counts)
    assert out == {"properties": {"plan": "pro", "address": {"city": "Paris"}}, "traits": "text",
                   "context": {"plan": "pro+", "address": {"city": "Paris"}}}
    assert counts == Counter({"r.matched": 1, "r.applied": 1, "r.skipped": 1})


def test_copied_and_constant_objects_are_independent():
    rules = TransformRules([
        {"name": "copy", "set": {"context.traits": {"copy": "properties"}}},
        {"name": "edit", "set": {"context.traits.address.city": {"value": "Lyon"}}},
        {"name": "const", "set": {"context.tags": {"value": {"list": [1]}}}},
    ])
    body = {"properties": {"address": {"city": "Paris"}}}
    out = rules.apply(body, "", Counter())
    assert out["context"]["traits"] == {"address": {"city": "Lyon"}}
    assert out["properties"] == body["properties"] == {"address": {"city": "Paris"}}
    out["context"]["tags"]["list"].append(2)
    assert rules.apply(body, "", Counter())["context"]["tags"] == {"list": [1]}


# --- hash

def test_hash_with_salt_env(salt_env):
    body = {"userId": "019mr8mf4r", "properties": {"email": " PGibbons@Example.com ", "coupon": None,
                                                    "ids": {"b": 1, "a": [True, None]}, "n": 42}}
    out = run({"hash": {"paths": ["userId", "properties.email", "properties.coupon", "properties.ids",
                                  "properties.n", "properties.absent"], "salt_env": salt_env}}, body)
    assert out == {"userId": sha(b"019mr8mf4r"), "properties": {
        "email": sha(b" PGibbons@Example.com "), "coupon": None,
        "ids": sha(b'{"a":[true,null],"b":1}'), "n": sha(b"42")}}


def test_hash_lowercase_with_salt_file(tmp_path):
    salt_file = tmp_path / "salt.txt"
    salt_file.write_text(SALT + "\n")
    out = run({"hash": {"paths": ["properties.email"], "salt_file": str(salt_file), "lowercase": True}},
              {"properties": {"email": " PGibbons@Example.com "}})
    assert out == {"properties": {"email": sha(b"pgibbons@example.com")}}


def test_salt_errors_name_the_key_and_never_show_the_salt(monkeypatch, salt_env, tmp_path):
    monkeypatch.delenv("SLUICE_MISSING_SALT", raising=False)
    (tmp_path / "empty").write_text("\n")
    hashing = {"name": "h", "hash": {"paths": ["userId"], "salt_env": salt_env}}
    cases = [
        ([{"name": "h", "hash": {"paths": ["userId"], "salt_env": "SLUICE_MISSING_SALT"}}], "transforms[0].hash.salt_env"),
        ([{"name": "h", "hash": {"paths": ["userId"], "salt_file": str(tmp_path / "empty")}}], "transforms[0].hash.salt_file"),
        ([{"name": "h", "hash": {"paths": ["userId"], "salt_file": str(tmp_path / "nope")}}], "transforms[0].hash.salt_file"),
        ([{"name": "h", "hash": {"paths": ["userId"], "salt_env": salt_env, "salt_file": "x"}}], "transforms[0].hash"),
        ([{**hashing, "when": {"path": "userId", "op": "eq"}}], "transforms[0].when"),
        ([{**hashing, "types": ["trak"]}], "transforms[0].types"),
        ([hashing, hashing], "transforms[1].name"),
    ]
    for specs, where in cases:
        error = config_error(specs)
        assert error.where == where
        assert SALT not in str(error) and SALT not in error.message


def test_a_non_string_salt_env_is_a_config_error():
    assert config_error([{"name": "h", "hash": {"paths": ["userId"], "salt_env": 5}}]).where == "transforms[0].hash.salt_env"


# --- anonymize_ip

def test_anonymize_ip(segment_examples):
    counts = Counter()
    page = next(e for e in segment_examples if e["type"] == "page" and "context" in e)
    assert run({"anonymize_ip": True}, page, counts=counts)["context"]["ip"] == "8.8.8.0"
    body = {"context": {"ip": None}, "properties": {
        "v4": "203.0.113.77", "v6": "2001:db8:85a3:1234:5678:8a2e:370:7334", "zone": " 2001:DB8:85A3::1%eth0",
        "mapped": "::ffff:203.0.113.77", "a": "not an ip", "b": 3232235777, "c": ["1.2.3.4"], "d": "203.0.113.256"}}
    out = run({"anonymize_ip": ["context.ip", "properties.absent"] + [f"properties.{k}" for k in body["properties"]]},
              body, counts=counts)
    assert out == {"context": {"ip": None}, "properties": {
        "v4": "203.0.113.0", "v6": "2001:db8:85a3::", "zone": "2001:db8:85a3::", "mapped": "::ffff:203.0.113.0"}}
    assert counts == Counter({"r.matched": 2, "r.applied": 2, "r.invalid_ip_removed": 4})


# --- drop_event, rename_event, enrich

def test_drop_event(segment_examples):
    counts = Counter()
    assert run({"drop_event": True}, segment_examples[2], counts=counts) == Filtered("r")
    assert counts == Counter({"r.matched": 1, "r.applied": 1})  # a drop is what the rule does
    assert config_error([{"name": "r", "drop_event": "yes"}]).where == "transforms[0].drop_event"


@pytest.mark.parametrize("body, expected", [
    ({"type": "track", "event": "Signed Up"}, {"type": "track", "event": "Registered"}),
    ({"type": "page", "name": "Home"}, {"type": "page", "name": "Registered"}),
    ({"type": "screen", "name": "Home"}, {"type": "screen", "name": "Registered"}),
    ({"type": "identify", "userId": "u"}, {"type": "identify", "userId": "u"}),
])
def test_rename_event(body, expected):
    assert run({"rename_event": "Registered"}, body) == expected


def test_campaign_enrichment(segment_examples):
    url = "https://example.com/?utm_source=news&utm_campaign=spring+sale"
    out = run({"enrich": "campaign"}, {"context": {"page": {"url": url}}})
    assert out["context"]["campaign"] == {"source": "news", "name": "spring sale"}
    body = copy.deepcopy(next(e for e in segment_examples if "campaign" in e.get("context", {})))
    body["context"]["page"]["url"] = url
    assert run({"enrich": "campaign"}, body)["context"]["campaign"]["name"] == "TPS Innovation Newsletter"
    no_utm = {"context": {"page": {"url": "https://example.com/"}}}
    assert run({"enrich": "campaign"}, no_utm) == no_utm


def test_user_agent_enrichment(segment_examples):
    page = next(e for e in segment_examples if e["type"] == "page" and "context" in e)
    assert run({"enrich": "user_agent"}, page)["context"]["userAgentData"] == {
        "brands": [{"brand": "Chrome", "version": "40"}],
        "fullVersionList": [{"brand": "Chrome", "version": "40.0.2214.115"}],
        "mobile": False, "platform": "macOS", "platformVersion": "10.9.5", "model": "Mac"}
    present = next(e for e in segment_examples if "userAgentData" in e.get("context", {}))
    assert run({"enrich": "user_agent"}, present) == present
    assert config_error([{"name": "r", "enrich": "geo"}]).where == "transforms[0].enrich"


# --- scope, order, counts

TRACK = {"type": "track", "event": "Order Completed", "properties": {"total": 30}}
PAGE = {"type": "page", "name": "Order Completed"}
IDENTIFY = {"type": "identify", "userId": "u", "traits": {"name": "Order Completed"}}


@pytest.mark.parametrize("scope, body, source, applies", [
    ({"types": ["track", "page"]}, PAGE, "", True),
    ({"types": ["track"]}, PAGE, "", False),
    ({"events": ["Order *"]}, TRACK, "", True),
    ({"events": ["Order *"]}, PAGE, "", True),
    ({"events": ["*"]}, IDENTIFY, "", False),
    ({"events": ["order *"]}, TRACK, "", False),
    ({"sources": ["pubsub:*"]}, TRACK, "pubsub:projects/p/subscriptions/s", True),
    ({"sources": ["pubsub:*"]}, TRACK, "file:events.jsonl", False),
    ({"when": {"path": "properties.total", "op": "gte", "value": 30}}, TRACK, "", True),
    ({"types": ["track"], "when": {"path": "properties.total", "op": "gt", "value": 30}}, TRACK, "", False),
])
def test_rule_scope(scope, body, source, applies):
    out = run({**scope, "set": {"context.hit": {"value": True}}}, body, source, counts := Counter())
    assert counts["r.matched"] == counts["r.applied"] == int(applies)
    assert (out.get("context") == {"hit": True}) is applies


def test_order_matters():
    rename = {"name": "rename", "events": ["Order Completed"], "rename_event": "Purchase"}
    tag = {"name": "tag", "events": ["Purchase"], "set": {"properties.tagged": {"value": True}}}
    counts = Counter()
    out = TransformRules([rename, tag]).apply(TRACK, "", counts)
    assert out == {"type": "track", "event": "Purchase", "properties": {"total": 30, "tagged": True}}
    assert counts == Counter({"rename.matched": 1, "rename.applied": 1, "tag.matched": 1, "tag.applied": 1})
    assert TransformRules([tag, rename]).apply(TRACK, "", Counter())["properties"] == {"total": 30}


def test_touches_identity(salt_env):
    assert TransformRules([{"name": "a", "rename": {"properties.id": "userId"}}]).touches_identity
    assert TransformRules([{"name": "a", "hash": {"paths": ["/anonymousId"], "salt_env": salt_env}}]).touches_identity
    assert not TransformRules([{"name": "a", "drop": ["properties.userId", "context.groupId"]}]).touches_identity


# --- config errors

@pytest.mark.parametrize("specs, where", [
    ({"name": "r"}, "transforms"),
    ([{"drop": ["a"]}], "transforms[0].name"),
    ([{"name": "a", "drop": ["x"]}, {"name": "b", "drop": ["x"]}, {"name": "a", "drop": ["y"]}], "transforms[2].name"),
    ([{"name": "r"}], "transforms[0]"),
    ([{"name": "r", "drop": ["a"], "drop_event": True}], "transforms[0]"),
    ([{"name": "r", "drop": ["a"], "typs": ["track"]}], "transforms[0].typs"),
    ([{"name": "r", "drop": ["a"], "types": ["trak"]}], "transforms[0].types"),
    ([{"name": "r", "drop": ["a"], "events": []}], "transforms[0].events"),
    ([{"name": "ok", "drop": ["a"]}, {"name": "r", "drop": ["a"], "when": {"all": [{"path": "a", "op": "is"}]}}],
     "transforms[1].when.all[0].op"),
    ([{"name": "r", "drop": []}], "transforms[0].drop"),
    ([{"name": "r", "set": {"a": {"value": 1, "copy": "b"}}}], "transforms[0].set.a"),
    ([{"name": "r", "types": ["identify"], "rename_event": "X"}], "transforms[0].rename_event"),
    # protected paths: Normalize owns them
    ([{"name": "r", "rename": {"messageId": "properties.id"}}], "transforms[0].rename.messageId"),
    ([{"name": "r", "rename": {"properties.name": "event"}}], "transforms[0].rename.properties.name"),
    ([{"name": "r", "set": {"timestamp": {"value": "2020-01-01T00:00:00Z"}}}], "transforms[0].set.timestamp"),
    ([{"name": "r", "drop": ["properties.a", "type"]}], "transforms[0].drop[1]"),
    ([{"name": "r", "hash": {"paths": ["/sentAt"], "salt_env": "X"}}], "transforms[0].hash.paths[0]"),
    ([{"name": "r", "anonymize_ip": ["receivedAt"]}], "transforms[0].anonymize_ip[0]"),
])
def test_config_errors(specs, where):
    assert config_error(specs).where == where


def test_bad_types_with_rename_event_is_a_config_error():
    assert config_error([{"name": "r", "types": 5, "rename_event": "X"}]).where == "transforms[0].types"


def test_a_rule_name_with_a_trailing_newline_is_refused():
    assert config_error([{"name": "r\n", "drop": ["a"]}]).where == "transforms[0].name"


def test_segment_examples_are_never_written(segment_examples, salt_env):
    rules = TransformRules([
        {"name": "ev", "types": ["track"], "rename_event": "Renamed"},
        {"name": "mv", "rename": {"context.ip": "properties.ip", "properties.email": "traits.email"}},
        {"name": "set", "set": {"context.library.name": {"value": "x"}, "context.copy": {"copy": "context"}}},
        {"name": "hash", "hash": {"paths": ["userId", "traits.email", "context.device"], "salt_env": salt_env}},
        {"name": "ip", "anonymize_ip": ["properties.ip", "context.app"]},
        {"name": "drop", "drop": ["context.campaign.name", "integrations.All"]},
        {"name": "camp", "enrich": "campaign"},
        {"name": "ua", "enrich": "user_agent"},
    ])
    snapshot = copy.deepcopy(segment_examples)
    counts = Counter()
    outputs = [rules.apply(e, "file:x", counts) for e in segment_examples]
    assert segment_examples == snapshot
    assert outputs[1]["properties"]["ip"] == "8.8.8.0" and "ip" not in outputs[1]["context"]
    assert counts["ev.matched"] == counts["ev.applied"] == sum(e["type"] == "track" for e in snapshot)


@pytest.mark.parametrize("address, expected", [
    ("2002:cb00:7177:1234::1", "2002:cb00:7100::"),   # 6to4: the embedded IPv4 gets its last octet zeroed
    ("2001:db8:85a3:1234:5678:8a2e:370:7334", "2001:db8:85a3::"),
])
def test_anonymize_6to4_keeps_no_full_ipv4(address, expected):
    assert anonymize(address) == expected


def test_enrichment_fills_a_null_target(segment_examples):
    body = {"type": "page", "userId": "u", "context": {"campaign": None,
                                                        "page": {"url": "https://x.example/?utm_source=a"}}}
    assert run({"enrich": "campaign"}, body)["context"]["campaign"] == {"source": "a"}


def test_unknown_hash_keys_are_refused(salt_env):
    specs = [{"name": "h", "hash": {"paths": ["userId"], "salt_env": "SLUICE_TEST_SALT", "lowercse": True}}]
    assert config_error(specs).where == "transforms[0].hash.lowercse"


# --- applied counts what a rule changed; matched, what it looked at

def outcome(rule, body):
    """(applied?, the body after the rule): the rule always matches here."""
    counts = Counter()
    out = run(rule, body, counts=counts)
    assert counts["r.matched"] == 1
    return counts["r.applied"], out


@pytest.mark.parametrize("rule, body", [
    ({"rename_event": "Registered"}, {"type": "track", "event": "Signed Up"}),
    ({"rename": {"properties.a": "properties.b", "properties.x": "properties.y"}}, {"properties": {"a": 1}}),
    ({"drop": ["properties.email", "properties.absent"]}, {"properties": {"email": "e", "plan": "pro"}}),
    ({"set": {"properties.plan": {"value": "pro+"}}}, {"properties": {"plan": "pro"}}),
    ({"set": {"properties.n": {"value": 1.0}}}, {"properties": {"n": 1}}),        # 1.0 is written over 1
    ({"set": {"properties.b": {"value": True}}}, {"properties": {"b": 1}}),       # and True over 1
    ({"set": {"context.traits": {"copy": "traits"}}}, {"traits": {"a": 1}, "context": {"traits": {"a": 2}}}),
    ({"hash": {"paths": ["properties.email", "properties.absent"], "salt_env": "SLUICE_TEST_SALT"}},
     {"properties": {"email": "e"}}),
    ({"anonymize_ip": True}, {"context": {"ip": "203.0.113.77"}}),
    ({"anonymize_ip": True}, {"context": {"ip": "not an ip"}}),                   # removed: a change
    ({"enrich": "campaign"}, {"context": {"page": {"url": "https://x.example/?utm_source=a"}}}),
])
def test_a_rule_that_changes_the_event_is_applied(rule, body, salt_env):
    applied, out = outcome(rule, body)
    assert applied == 1 and not identical(out, body)


@pytest.mark.parametrize("rule, body", [
    ({"rename_event": "Registered"}, {"type": "track", "event": "Registered"}),   # the name already
    ({"rename_event": "Registered"}, {"type": "identify", "userId": "u"}),         # no name to rename
    ({"rename": {"properties.a": "properties.b"}}, {"properties": {"x": 1}}),     # source absent
    ({"rename": {"properties.a": "traits.a"}}, {"properties": {"a": 1}, "traits": "text"}),  # blocked
    ({"drop": ["properties.email", "context.ip"]}, {"properties": {"plan": "pro"}}),
    ({"set": {"properties.plan": {"value": "pro"}}}, {"properties": {"plan": "pro"}}),
    ({"set": {"properties.tags": {"value": {"a": [1, None]}}}}, {"properties": {"tags": {"a": [1, None]}}}),
    ({"set": {"context.traits": {"copy": "traits"}}}, {"traits": {"a": 1}, "context": {"traits": {"a": 1}}}),
    ({"set": {"context.x": {"copy": "properties.absent"}}}, {"properties": {}}),
    ({"set": {"traits.x": {"value": 1}}}, {"traits": "text"}),                    # blocked: skipped
    ({"hash": {"paths": ["properties.email"], "salt_env": "SLUICE_TEST_SALT"}}, {"properties": {"email": None}}),
    ({"hash": {"paths": ["properties.email"], "salt_env": "SLUICE_TEST_SALT"}}, {"properties": {}}),
    ({"anonymize_ip": True}, {"context": {"ip": "203.0.113.0"}}),                 # anonymized already
    ({"anonymize_ip": True}, {"context": {"ip": None}}),
    ({"anonymize_ip": True}, {"type": "track"}),
    ({"enrich": "campaign"}, {"context": {"campaign": {"name": "c"},
                                          "page": {"url": "https://x.example/?utm_source=a"}}}),
    ({"enrich": "campaign"}, {"context": {"page": {"url": "https://x.example/"}}}),
    ({"enrich": "user_agent"}, {"context": {}}),
])
def test_a_rule_that_leaves_the_event_as_it_was_matched_but_did_not_apply(rule, body, salt_env):
    applied, out = outcome(rule, body)
    assert applied == 0 and out == body


def test_a_rule_that_changes_nothing_copies_nothing():
    body = {"type": "track", "event": "A", "properties": {"plan": "pro"}, "context": {"ip": "203.0.113.0"}}
    rules = TransformRules([{"name": "s", "set": {"properties.plan": {"value": "pro"}}},
                            {"name": "ip", "anonymize_ip": True}, {"name": "ev", "rename_event": "A"}])
    assert rules.apply(body, "", Counter()) is body  # no object on the path was copied
