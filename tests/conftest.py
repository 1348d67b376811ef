"""Shared fixtures. Nothing here reaches beyond 127.0.0.1."""
import json
import os
from pathlib import Path

import pytest

# google-auth and gcloud must not probe the metadata server.
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("CLOUDSDK_CORE_CHECK_GCE_METADATA", "false")

ROOT = Path(__file__).resolve().parents[1]
# The Segment documentation's examples, copied unchanged (see tests/golden/README.md): the
# golden output depends on them, so the suite reads its own copy.
FIXTURES = ROOT / "tests" / "golden" / "segment-spec-examples.jsonl"
SAMPLE = ROOT / "samples" / "events.jsonl"


@pytest.fixture
def segment_examples():
    """The Segment documentation's example payloads (CC BY 4.0), one dict per line."""
    return [json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def warehouse_url(tmp_path):
    return f"duckdb:///{tmp_path}/warehouse.duckdb"
