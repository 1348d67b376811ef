"""--dead_letter_topic in a batch run (FnApiRunner) on the real Pub/Sub emulator: every dead
letter stored in _dead_letters is also published, once, with its payload as the data."""
import duckdb
import pytest

from pipeline.main import run
from tests.conftest import ROOT, rows
from transforms.deadletter import decode_payload

pytestmark = pytest.mark.integration

GOLDEN = ROOT / "tests" / "golden" / "extra-input.jsonl"


def test_a_batch_run_publishes_each_dead_letter_it_stores(tmp_path, make_topic):
    letters = make_topic("dead-letters")
    topic, pull_all = letters.path, letters.pull_all
    warehouse = f"duckdb:///{tmp_path}/w.duckdb"
    summary = run(["--input_files", str(GOLDEN), "--warehouse", warehouse, "--dead_letter_topic", topic])
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        stored = rows(conn, "SELECT dead_letter_id, error_type, payload, payload_encoding FROM _dead_letters")
    published = pull_all()
    assert len(stored) == sum(summary["dead_lettered"].values()) > 3
    assert summary["published"] == {"dead_letters": len(stored)}
    by_id = {m.attributes["dead_letter_id"]: m for m in published}
    assert len(by_id) == len(published) == len(stored)
    for letter in stored:
        message = by_id[letter["dead_letter_id"]]
        assert message.attributes["error_type"] == letter["error_type"]
        assert message.data == decode_payload(letter["payload"], letter["payload_encoding"])
