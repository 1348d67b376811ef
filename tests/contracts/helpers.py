"""Write contracts directories for tests."""
import json

ORDER = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "title": "Order Completed",
    "type": "object",
    "properties": {"properties": {
        "type": "object",
        "properties": {"orderId": {"type": "string"}, "total": {"type": "number"},
                       "quantity": {"type": "integer"}, "paidAt": {"type": "string", "format": "date-time"},
                       "tags": {"type": "array", "items": {"type": "string"}},
                       "shipping": {"type": "object", "properties": {"city": {"type": "string"}},
                                    "additionalProperties": False}},
        "required": ["orderId", "total"]}},
}
COMMON = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
          "properties": {"context": {"type": "object", "properties": {"ip": {"type": "string"}}}}}
ALIAS = {"$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
         "properties": {"previousId": {"type": "string", "pattern": "^anon-"}}}


def write_contracts(directory, files: dict):
    """files: {"common": schema, "track/order_completed": schema, "notes.txt": "text"}"""
    for name, content in files.items():
        path = directory / (name if "." in name else name + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return directory
