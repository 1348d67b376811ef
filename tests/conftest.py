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


# What a test needs beyond .venv, by the fixture it uses (directly or through other fixtures):
# the fixture's emulator marker, and `integration`. `make test-fast` deselects `integration` and
# `node` (tests that need the pinned TypeScript compiler from node_modules: marked where they are).
EMULATOR_FIXTURES = ("pubsub_emulator", "gcs_emulator", "bigquery_emulator")


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = [name for name in EMULATOR_FIXTURES if name in getattr(item, "fixturenames", ())]
        for name in used:
            item.add_marker(name)
        if used:
            item.add_marker("integration")


@pytest.fixture
def segment_examples():
    """The Segment documentation's example payloads (CC BY 4.0), one dict per line."""
    return [json.loads(line) for line in FIXTURES.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture
def warehouse_url(tmp_path):
    return f"duckdb:///{tmp_path}/warehouse.duckdb"


def run_file_job(tmp_path, lines, config_text: str, *extra_args):
    """The real job over `lines` (dicts, one per input line) with `config_text` as its config;
    checks conservation; returns (summary, a read-only connection to the warehouse)."""
    import duckdb

    from pipeline.main import run
    (tmp_path / "sluice.yaml").write_text(config_text)
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    summary = run(["--input_files", str(tmp_path / "in.jsonl"), "--config", str(tmp_path / "sluice.yaml"),
                   "--warehouse", f"duckdb:///{tmp_path}/w.duckdb", *extra_args])
    assert summary["conservation"]["holds"], summary
    return summary, duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)


def rows(conn, sql) -> list:
    """A query's rows as dicts."""
    cursor = conn.execute(sql)
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, r)) for r in cursor.fetchall()]
