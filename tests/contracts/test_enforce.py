"""Policies on single events: allow, omit_properties, block; unplanned allow / block."""
import copy

import pytest

from tests.contracts.helpers import ALIAS, COMMON, ORDER
from transforms.contracts.enforce import ContractEnforcer
from transforms.contracts.model import Contract, ContractSettings


def enforcer(unplanned="allow", violations="allow", overrides=()):
    contracts = (Contract("alias", "alias.json", ALIAS), Contract("common", "common.json", COMMON),
                 Contract("track/order_completed", "o.json", ORDER, "Order Completed"))
    return ContractEnforcer(ContractSettings("dir", contracts, unplanned, violations, tuple(overrides)))


def order(**properties):
    return {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "m1",
            "context": {"ip": "10.0.0.1"}, "properties": {"orderId": "o-1", "total": 10.5, **properties}}


def test_a_conforming_event_passes_untouched():
    body = order(quantity=2, tags=["a"])
    verdict = enforcer(violations="block").check(body)
    assert verdict.body is body and verdict.violations is None and verdict.rejection is None


def test_allow_stores_the_event_with_every_violation_listed():
    verdict = enforcer().check(order(total="ten", quantity=1.5))
    assert verdict.rejection is None
    assert verdict.body["properties"]["total"] == "ten"
    assert {(v["pointer"], v["keyword"], v["action"]) for v in verdict.violations} == {
        ("/properties/total", "type", "kept"), ("/properties/quantity", "type", "kept")}
    assert all(v["contract"] == "track/order_completed" for v in verdict.violations)


def test_omit_removes_only_the_offending_values_and_never_the_original():
    body = order(total="ten", tags=["ok", 3], shipping={"city": "Paris", "floor": 3})
    original = copy.deepcopy(body)
    verdict = enforcer(violations="omit_properties").check(body)
    assert body == original  # the dead-letter payload and other stages still see the input
    props = verdict.body["properties"]
    assert "total" not in props and props["tags"] == ["ok"] and props["shipping"] == {"city": "Paris"}
    assert props["orderId"] == "o-1"
    omitted = sorted(v["pointer"] for v in verdict.violations if v["action"] == "omitted")
    assert omitted == ["/properties/shipping/floor", "/properties/tags/1", "/properties/total"]


def test_omit_keeps_what_cannot_be_removed_and_says_so():
    body = order()
    del body["properties"]["orderId"]  # `required` fails on the object itself
    verdict = enforcer(violations="omit_properties").check(body)
    assert verdict.rejection is None
    assert [(v["pointer"], v["keyword"], v["action"]) for v in verdict.violations] == [
        ("/properties", "required", "kept")]


def test_block_dead_letters_with_every_violation():
    verdict = enforcer(violations="block").check(order(total="ten", quantity="x"))
    assert verdict.rejection.error_type == "contract_violation"
    details = verdict.rejection.details["violations"]
    assert sorted(v["pointer"] for v in details) == ["/properties/quantity", "/properties/total"]
    assert all(set(v) == {"contract", "pointer", "keyword", "message", "action"} for v in details)


def test_a_per_contract_override_beats_the_global_policy():
    strict = enforcer(violations="allow", overrides=[("track/order_completed", "block")])
    assert strict.check(order(total="ten")).rejection.error_type == "contract_violation"
    bad_ip = order()
    bad_ip["context"]["ip"] = 42  # common contract: still allowed
    verdict = strict.check(bad_ip)
    assert verdict.rejection is None and verdict.violations[0]["contract"] == "common"


@pytest.mark.parametrize("policy, blocked", [("allow", False), ("block", True)])
def test_unplanned_events(policy, blocked):
    body = {"type": "track", "event": "Order Refunded", "userId": "u1", "messageId": "m2"}
    verdict = enforcer(unplanned=policy).check(body)
    assert verdict.unplanned
    assert (verdict.rejection is not None) == blocked
    if blocked:
        assert verdict.rejection.error_type == "unplanned_event"
        assert verdict.rejection.details == {"event": "Order Refunded", "contract": "track/order_refunded"}


def test_event_names_that_share_a_table_share_a_contract():
    for name in ("order_completed", "orderCompleted", "Order  Completed"):
        body = order(total="ten")
        body["event"] = name
        assert enforcer(violations="block").check(body).rejection is not None, name


def test_alias_events_are_checked_too():
    """RudderStack's tracking plans skip alias; Sluice does not."""
    body = {"type": "alias", "userId": "u1", "previousId": "device-7", "messageId": "m3"}
    verdict = enforcer(violations="block").check(body)
    assert verdict.rejection is not None
    assert verdict.rejection.details["violations"][0]["pointer"] == "/previousId"


def test_without_a_contracts_section_nothing_is_checked():
    verdict = ContractEnforcer(ContractSettings("")).check(order(total="ten"))
    assert verdict.violations is None and not verdict.unplanned
