"""UDFs the tests pass with --udf tests.pipeline.udfs:NAME."""


def tag_plan(event):
    """Changes a nested value in place: the pipeline must have handed over its own copy."""
    event.setdefault("properties", {})["udf"] = "seen"
    if event.get("properties", {}).get("plan") == "internal":
        return None
    if event.get("event") == "Explode":
        raise ValueError(f"cannot handle {event['event']}")
    if event.get("event") == "Lose Identity":
        del event["userId"]
    if event.get("event") == "Return String":
        return "not an event"
    if event.get("event") == "Return Set":
        event["properties"]["tags"] = {"a", "b"}
    return event


not_callable = 42
