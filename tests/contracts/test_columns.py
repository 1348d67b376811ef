"""Schema-driven column types."""
from tests.contracts.helpers import COMMON, ORDER
from transforms.contracts.columns import declared_types
from transforms.contracts.model import Contract
from transforms.warehouse import layout, planner


def test_declared_types_by_table():
    problems = []
    declared = declared_types([Contract("common", "c.json", COMMON),
                               Contract("track/order_completed", "o.json", ORDER, "Order Completed")], 6, problems)
    assert problems == []
    assert declared["*"] == {"/context/ip": planner.STRING}
    assert declared["order_completed"] == {
        "/properties/orderId": planner.STRING, "/properties/total": planner.FLOAT64,
        "/properties/quantity": planner.INT64, "/properties/paidAt": planner.TIMESTAMP,
        "/properties/tags": planner.JSON, "/properties/shipping/city": planner.STRING}


def test_objects_past_the_flattening_depth_are_json():
    declared = declared_types([Contract("track/order_completed", "o.json", ORDER)], 2, [])
    assert declared["order_completed"]["/properties/shipping"] == planner.JSON


def test_a_declared_type_beats_the_first_value():
    schema = planner.TableSchema("order_completed")
    schema.declare({"/properties/total": planner.FLOAT64, "/properties/paidAt": planner.TIMESTAMP})
    body = {"type": "track", "event": "Order Completed", "messageId": "m", "timestamp": "2026-01-01T00:00:00.000000Z",
            "receivedAt": "2026-01-01T00:00:00.000000Z", "userId": "u",
            "properties": {"total": 10, "paidAt": "2026-01-02T03:04:05+01:00"}}
    rows = [r for r in layout.table_rows(body, 6) if r.table == "order_completed"]
    plan = planner.plan_rows(schema, rows)
    types = {c.name: c.type for c in plan.new_columns}
    assert types["total"] == planner.FLOAT64 and types["paid_at"] == planner.TIMESTAMP
    assert plan.columns["total"] == [10.0]
    assert plan.columns["paid_at"] == ["2026-01-02T02:04:05.000000Z"]


def test_a_declared_integer_is_never_widened():
    schema = planner.TableSchema("order_completed")
    schema.declare({"/properties/quantity": planner.INT64})
    row = layout.TableRow("order_completed", "m", ({"/properties/quantity": 1.5},), "/properties", "t")
    plan = planner.plan_rows(schema, [row])
    assert plan.widened == [] and plan.type_conflicts == 1
    assert plan.columns["_unmapped"] == ['{"/properties/quantity":1.5}']
