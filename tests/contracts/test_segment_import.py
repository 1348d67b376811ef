"""Importing a Segment Protocols tracking plan export."""
import json

import pytest

from pipeline import contracts as cli
from pipeline.errors import UsageError
from pipeline.segment_import import contracts_from_plan
from transforms.contracts.lint import check_directory

ORDER_RULES = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
               "properties": {"properties": {"type": "object", "properties": {"total": {"type": "number"}},
                                             "required": ["total"]}}}
CONFIG_API = {"tracking_plan": {"display_name": "Shop", "rules": {
    "global": {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
               "properties": {"context": {"type": "object"}}},
    "events": [{"name": "Order Completed", "description": "paid", "rules": ORDER_RULES, "version": 1},
               {"name": "Signed Up", "rules": {"type": "object"}, "version": 1}],
    "identify": {"type": "object", "properties": {"traits": {"type": "object",
                                                             "properties": {"email": {"type": "string"}}}}}}}}
PUBLIC_API = {"data": {"trackingPlan": {"rules": [
    {"type": "TRACK", "key": "Order Completed", "jsonSchema": ORDER_RULES, "version": 1},
    {"type": "PAGE", "key": None, "jsonSchema": {"type": "object"}, "version": 1},
    {"type": "COMMON", "jsonSchema": {"type": "object"}, "version": 1}]}}}


@pytest.mark.parametrize("export, names", [
    (CONFIG_API, {"common", "identify", "track/order_completed", "track/signed_up"}),
    (PUBLIC_API, {"common", "page", "track/order_completed"}),
])
def test_both_export_shapes_become_a_clean_contracts_directory(tmp_path, export, names):
    (tmp_path / "plan.json").write_text(json.dumps(export))
    assert cli.main(["import-segment", str(tmp_path / "plan.json"), str(tmp_path / "c")]) == 0
    contracts, problems = check_directory(str(tmp_path / "c"))
    assert problems == [] and {c.name for c in contracts} == names
    order = {c.name: c for c in contracts}["track/order_completed"]
    assert order.event == "Order Completed"  # the title names the event for generated code
    assert order.schema["properties"] == ORDER_RULES["properties"]  # the rules themselves unchanged


def test_existing_contracts_are_not_overwritten_without_force(tmp_path, capsys):
    (tmp_path / "plan.json").write_text(json.dumps(PUBLIC_API))
    assert cli.main(["import-segment", str(tmp_path / "plan.json"), str(tmp_path / "c")]) == 0
    assert cli.main(["import-segment", str(tmp_path / "plan.json"), str(tmp_path / "c")]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert cli.main(["import-segment", "--force", str(tmp_path / "plan.json"), str(tmp_path / "c")]) == 0


def test_two_events_for_one_table_are_refused():
    plan = {"rules": {"events": [{"name": "Order Completed", "rules": {}}, {"name": "order_completed", "rules": {}}]}}
    plan["rules"]["events"] = [{"name": n, "rules": {"type": "object"}} for n in ("Order Completed", "order_completed")]
    with pytest.raises(UsageError, match="Sluice keeps one contract per warehouse table"):
        contracts_from_plan(plan)


def test_not_a_plan():
    with pytest.raises(UsageError, match="no `rules` found"):
        contracts_from_plan({"events": []})
