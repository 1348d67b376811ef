"""Whole job: an input file and a config to the exact expected tables, drops and dead letters.

Cases: `spec` (the Segment documentation's examples plus crafted lines for every error
type, default config) and `transforms` (the same examples plus lines for consent and every
kind of rule, with transforms/sluice.yaml). Regenerate the expected files after an intended
change with
    SLUICE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/golden
and review the diff like code. In that mode each case writes its file and fails (a run that
only compares the output with what it just wrote proves nothing); re-run without
SLUICE_UPDATE_GOLDEN to check.
"""
import json
import os
from pathlib import Path

import apache_beam as beam
import duckdb
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipeline import config as config_module
from pipeline import summary
from pipeline.config import Config
from pipeline.graph import build_warehouse_graph
from tests.conftest import FIXTURES
from transforms.messages import RawMessage
from transforms.warehouse.duckdb_backend import KEYS_TABLE

HERE = Path(__file__).parent
RECEIVED = "2026-11-23T12:00:00.000000Z"
# Columns that differ run to run by design (load time, dead-letter time).
VOLATILE = {"loaded_at", "failed_at"}


# name: (extra input lines, config file or None, expected output)
CASES = {
    "spec": (HERE / "extra-input.jsonl", None, HERE / "expected.json"),
    "transforms": (HERE / "transforms" / "input.jsonl", HERE / "transforms" / "sluice.yaml",
                   HERE / "transforms" / "expected.json"),
}


def golden_input(extra: Path) -> list:
    return FIXTURES.read_bytes().splitlines() + extra.read_bytes().splitlines()


def dump(path) -> dict:
    with duckdb.connect(str(path), read_only=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        out = {}
        for table in tables:
            if table == KEYS_TABLE:  # one opaque 128-bit key per stored event: their count says enough
                out[table] = [{"keys": conn.execute(f"SELECT count(DISTINCT key) FROM {table}").fetchone()[0]}]
                continue
            cursor = conn.execute(f'SELECT * FROM "{table}"')
            names = [d[0] for d in cursor.description]
            rows = [{n: (v.isoformat() if hasattr(v, "isoformat") else v) for n, v in zip(names, row)
                     if n not in VOLATILE and (table != "_sluice_columns" or n != "added_at")}
                    for row in cursor.fetchall()]
            out[table] = sorted(rows, key=lambda r: json.dumps(r, sort_keys=True, default=str))
    return out


def run_golden(path, extra: Path, config: Config):
    p = beam.Pipeline(runner=FnApiRunner())
    lines = golden_input(extra)
    source = beam.Create([RawMessage(line, {}, "file:golden.jsonl", RECEIVED, str(n))
                          for n, line in enumerate(lines, 1)])
    build_warehouse_graph(p, source, config, f"duckdb:///{path}")
    result = p.run()
    result.wait_until_finish()
    return summary.build(summary.counters_from_result(result))


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_tables(tmp_path, monkeypatch, case):
    extra, config_path, expected_path = CASES[case]
    monkeypatch.setenv("SLUICE_GOLDEN_SALT", "golden-salt")
    config = config_module.load(str(config_path)) if config_path else Config()
    result = run_golden(tmp_path / "golden.duckdb", extra, config)
    actual = {"summary": result, "tables": dump(tmp_path / "golden.duckdb")}
    if os.environ.get("SLUICE_UPDATE_GOLDEN"):
        # Never a pass: comparing the file just written with itself would prove nothing.
        text = json.dumps(actual, indent=1, sort_keys=True, ensure_ascii=False, default=str) + "\n"
        changed = not expected_path.exists() or expected_path.read_text() != text
        expected_path.write_text(text)
        pytest.fail(f"SLUICE_UPDATE_GOLDEN: updated {expected_path.relative_to(HERE.parents[1])} "
                    f"({'changed' if changed else 'no change'}); review the diff and re-run without "
                    "SLUICE_UPDATE_GOLDEN", pytrace=False)
    expected = json.loads(expected_path.read_text())
    actual = json.loads(json.dumps(actual, default=str))
    assert actual["summary"] == expected["summary"]
    assert sorted(actual["tables"]) == sorted(expected["tables"])
    for table in expected["tables"]:
        assert actual["tables"][table] == expected["tables"][table], table
