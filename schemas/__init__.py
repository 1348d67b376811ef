"""JSON Schemas shipped with Sluice (config file, dead-letter record)."""
import json
from functools import lru_cache
from pathlib import Path

_HERE = Path(__file__).parent


@lru_cache(maxsize=None)
def load(name: str) -> dict:
    """Return the parsed schema `name` (e.g. "config.schema.json")."""
    return json.loads((_HERE / name).read_text(encoding="utf-8"))
