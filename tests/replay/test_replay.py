"""`python -m pipeline replay`, end to end: an event blocked by its contract is replayed once
the contract is fixed and is stored once; replayed dead letters are not replayed twice; a
record that fails again is a new dead letter with its new error."""
import ast
import json
import re
import subprocess
import sys

import duckdb
import pytest

from pipeline import replay
from pipeline.main import main, run, run_replay
from pipeline.errors import UsageError
from tests.conftest import ROOT, rows
from transforms.deadletter import ERROR_TYPES

CONTRACT = {"type": "object", "properties": {"properties": {
    "type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}}}
EVENTS = [
    {"type": "track", "event": "Order Completed", "userId": "u1", "messageId": "good", "properties": {"total": 5}},
    {"type": "track", "event": "Order Completed", "userId": "u2", "messageId": "string-total",
     "properties": {"total": "12.50"}},
    {"batch": [{"type": "track", "event": "Order Completed", "userId": "u3", "messageId": "in-batch",
                "properties": {"total": "7"}}]},
]


@pytest.fixture
def blocked(tmp_path):
    """A run whose contract blocks string totals: (warehouse URL, config path, contract path)."""
    (tmp_path / "contracts" / "track").mkdir(parents=True)
    contract = tmp_path / "contracts" / "track" / "order_completed.json"
    contract.write_text(json.dumps(CONTRACT))
    config = tmp_path / "sluice.yaml"
    config.write_text("contracts:\n  directory: contracts\n  violations: block\n")
    (tmp_path / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in EVENTS) + "{not json\n")
    warehouse = f"duckdb:///{tmp_path}/w.duckdb"
    summary = run(["--input_files", str(tmp_path / "events.jsonl"), "--config", str(config), "--warehouse", warehouse])
    assert summary["dead_lettered"] == {"contract_violation": 2, "malformed_json": 1}
    return warehouse, str(config), contract


def table(tmp_path, sql):
    with duckdb.connect(f"{tmp_path}/w.duckdb", read_only=True) as conn:
        return rows(conn, sql)


def test_fix_the_contract_replay_and_find_the_events_stored_once(tmp_path, blocked):
    warehouse, config, contract = blocked
    fixed = json.loads(json.dumps(CONTRACT))
    fixed["properties"]["properties"]["properties"]["total"] = {"type": ["number", "string"]}
    contract.write_text(json.dumps(fixed))
    summary = run_replay(["--warehouse", warehouse, "--config", config, "--error_type", "contract_violation"])
    assert summary["replayed"] == 2 and summary["stored"] == 2 and summary["conservation"]["holds"]
    stored = table(tmp_path, "SELECT message_id, total FROM order_completed ORDER BY 1")
    assert [r["message_id"] for r in stored] == ["good", "in-batch", "string-total"]
    metadata = table(tmp_path, "SELECT _metadata FROM order_completed WHERE message_id = 'in-batch'")[0]["_metadata"]
    assert json.loads(metadata)["attributes"]["sluice_replay_of"]  # where it came from
    again = run_replay(["--warehouse", warehouse, "--config", config])
    assert again["replayed"] == 1 and again["read"] == 1  # only the malformed line is left to replay
    assert again["dead_lettered"] == {"malformed_json": 1}
    assert table(tmp_path, "SELECT count(*) AS n FROM order_completed")[0]["n"] == 3  # stored once


def test_a_record_that_fails_again_is_a_new_dead_letter_and_can_be_replayed_later(tmp_path, blocked):
    warehouse, config, _ = blocked
    first = run_replay(["--warehouse", warehouse, "--config", config, "--error_type", "contract_violation"])
    assert first["replayed"] == 2 and first["dead_lettered"] == {"contract_violation": 2} and first["stored"] == 0
    letters = table(tmp_path, "SELECT dead_letter_id, error_type FROM _dead_letters WHERE error_type = "
                              "'contract_violation'")
    replays = table(tmp_path, "SELECT dead_letter_id FROM _replays")
    assert len(letters) == 4 and len(replays) == 2  # two originals, replayed; two new ones, not yet
    second = run_replay(["--warehouse", warehouse, "--config", config, "--error_type", "contract_violation"])
    assert second["replayed"] == 2 and second["read"] == 2  # the new ones, not the originals again


def test_replay_filters_by_source_and_time(tmp_path, blocked):
    warehouse, config, _ = blocked
    nothing = run_replay(["--warehouse", warehouse, "--config", config, "--until", "2000-01-01T00:00:00Z"])
    assert nothing["replayed"] == 0 and nothing["read"] == 0
    elsewhere = run_replay(["--warehouse", warehouse, "--config", config, "--source", "file:/elsewhere/*"])
    assert elsewhere["replayed"] == 0
    here = run_replay(["--warehouse", warehouse, "--config", config, "--source", f"file:{tmp_path}/*"])
    assert here["replayed"] == 3


def test_replay_from_dead_letter_files(tmp_path, blocked):
    warehouse, config, contract = blocked
    records = table(tmp_path, "SELECT * FROM _dead_letters")
    export = tmp_path / "letters.jsonl"
    export.write_text("".join(json.dumps(r, default=str) + "\n" for r in records))
    contract.write_text(json.dumps({"type": "object"}))
    summary = run_replay(["--warehouse", warehouse, "--config", config, "--dead_letter_files", str(export),
                          "--error_type", "contract_violation"])
    assert summary["replayed"] == 2 and summary["stored"] == 2
    assert run_replay(["--warehouse", warehouse, "--config", config, "--dead_letter_files", str(export),
                       "--error_type", "contract_violation"])["replayed"] == 0


@pytest.mark.parametrize("args, expected", [
    (["--input_files", "x.jsonl"], "--input_files: replay reads dead letters"),
    (["--since", "yesterday"], "--since 'yesterday': expected an ISO-8601 time"),
])
def test_replay_mistakes_are_usage_errors(args, expected):
    with pytest.raises(UsageError, match=expected):
        run_replay(args)


def test_the_command_line_dispatches_replay(tmp_path, blocked, capsys):
    warehouse, config, _ = blocked
    assert main(["replay", "--warehouse", warehouse, "--config", config, "--error_type", "malformed_json"]) == 0
    assert "replayed 1 dead letters" in capsys.readouterr().out


def test_a_dry_run_counts_what_would_be_replayed_and_replays_nothing(tmp_path, blocked):
    warehouse, config, _ = blocked
    tables = "SELECT table_name FROM duckdb_tables() ORDER BY 1"
    before = table(tmp_path, tables)
    summary = run_replay(["--warehouse", warehouse, "--config", config, "--dry_run"])
    assert summary["dry_run"].splitlines()[:3] == ["would replay 3 dead letters", "  error_type contract_violation: 2",
                                                   "  error_type malformed_json: 1"]
    assert table(tmp_path, tables) == before  # nothing created, not even `_replays`
    assert run_replay(["--warehouse", warehouse, "--config", config])["replayed"] == 3  # still all there


def replay_process(*args, cwd):
    return subprocess.run([sys.executable, "-m", "pipeline", "replay", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.parametrize("args, expected", [
    (["--warehouse", "duckdb:///nope.duckdb", "--dry_run"],
     "--warehouse duckdb:///nope.duckdb: no such DuckDB file (a dry run reads an existing warehouse and creates "
     "nothing)"),
    (["--warehouse", "duckdb:///nope.duckdb", "--error_type", "contract_violaton", "--dry_run"],
     "--error_type 'contract_violaton': not an error type (did you mean contract_violation?) "
     "(docs/warehouse.md#dead-letters lists them)"),
    (["--warehouse", "duckdb:///nope.duckdb", "--dead_letter_files", "letters/*.jsonl"],
     "--dead_letter_files: no file matches letters/*.jsonl"),
])
def test_replay_mistakes_on_the_command_line_are_one_line_exit_2_and_create_nothing(tmp_path, args, expected):
    result = replay_process(*args, cwd=tmp_path)
    assert (result.returncode, result.stderr.splitlines()) == (2, [f"sluice: error: {expected}"])
    assert list(tmp_path.iterdir()) == []


def test_the_last_line_says_how_many_were_fixed_and_how_many_failed_again(tmp_path, blocked):
    warehouse, config, contract = blocked
    again = replay_process("--warehouse", warehouse, "--config", config, "--error_type", "contract_violation",
                           cwd=tmp_path)  # the contract not fixed: both fail again
    assert again.returncode == 0
    assert again.stdout.splitlines()[-1] == ("replayed 2 dead letters (recorded in _replays): 0 fixed, 2 failed again "
                                             "(new dead letters in _dead_letters)")
    contract.write_text(json.dumps({"type": "object"}))
    fixed = replay_process("--warehouse", warehouse, "--config", config, cwd=tmp_path)
    assert fixed.returncode == 0
    assert fixed.stdout.splitlines()[-1] == "replayed 3 dead letters (recorded in _replays): 2 fixed, 1 failed again " \
                                            "(new dead letters in _dead_letters)"


def written_error_types() -> set:
    """The error types the code writes: the string constants of each Rejection(...)'s first argument."""
    found = set()
    for path in [*(ROOT / "transforms").rglob("*.py"), *(ROOT / "pipeline").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Rejection" and node.args:
                found |= {c.value for c in ast.walk(node.args[0]) if isinstance(c, ast.Constant)}
    return found


def test_the_known_error_types_are_those_the_code_writes_and_the_docs_list():
    written = written_error_types()
    assert written <= set(ERROR_TYPES)  # decode names two through a variable: a subset
    assert len(written) >= len(ERROR_TYPES) - 2  # the walk finds them (an empty set is a subset too)
    docs = (ROOT / "docs" / "warehouse.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `error_type` |"))
    assert set(re.findall(r"`([a-z_]+)`", row)) - {"error_type", "exception_type", "exception_message", "raised_at",
                                                   "error_details", "destination", "missing"} == set(ERROR_TYPES)


def test_the_dead_letters_view_shows_each_original_failure_once_with_its_latest_state(tmp_path, blocked):
    """Two records failing again twice, then fixed: _dead_letters gains a row each time (3, 5, 7),
    the view keeps the three original failures, each with what became of it."""
    warehouse, config, contract = blocked
    states = "SELECT error_type, state, latest_error_type FROM _dead_letters_view ORDER BY 1, 2"
    assert table(tmp_path, states) == [
        {"error_type": "contract_violation", "state": "open", "latest_error_type": "contract_violation"}] * 2 + [
        {"error_type": "malformed_json", "state": "open", "latest_error_type": "malformed_json"}]
    for _ in range(2):  # the contract not fixed yet: each replay fails again
        run_replay(["--warehouse", warehouse, "--config", config, "--error_type", "contract_violation"])
    assert table(tmp_path, "SELECT count(*) AS n FROM _dead_letters")[0]["n"] == 7
    assert [(r["error_type"], r["state"]) for r in table(tmp_path, states)] == [
        ("contract_violation", "failed_again"), ("contract_violation", "failed_again"), ("malformed_json", "open")]
    contract.write_text(json.dumps({"type": "object"}))
    assert run_replay(["--warehouse", warehouse, "--config", config, "--error_type", "contract_violation"])[
        "stored"] == 2
    assert [(r["error_type"], r["state"]) for r in table(tmp_path, states)] == [
        ("contract_violation", "fixed"), ("contract_violation", "fixed"), ("malformed_json", "open")]


def test_a_replayed_record_that_fails_again_as_several_dead_letters_counts_once(tmp_path):
    """A batch too large splits, once replayed with a larger limit, into three events that each
    fail their contract: three new dead letters, one record failed again; beside it one fixed."""
    (tmp_path / "contracts" / "track").mkdir(parents=True)
    for name in ("video_played", "order_completed"):
        (tmp_path / "contracts" / "track" / f"{name}.json").write_text(json.dumps(CONTRACT))
    config = tmp_path / "sluice.yaml"
    limits = "contracts:\n  directory: contracts\n  violations: block\n"
    limits += "decode:\n  max_event_bytes: 250\n  max_batch_bytes: {}\n"
    config.write_text(limits.format(300))
    batch = {"batch": [{"type": "track", "event": "Video Played", "userId": "u", "messageId": f"v{i}",
                        "properties": {"total": "x"}} for i in range(3)]}
    (tmp_path / "e.jsonl").write_text(json.dumps(batch) + "\n" + json.dumps(EVENTS[1]) + "\n")
    warehouse = f"duckdb:///{tmp_path}/w.duckdb"
    first = run(["--input_files", str(tmp_path / "e.jsonl"), "--config", str(config), "--warehouse", warehouse])
    assert first["dead_lettered"] == {"batch_too_large": 1, "contract_violation": 1}
    config.write_text(limits.format(100000))
    (tmp_path / "contracts" / "track" / "order_completed.json").write_text(json.dumps({"type": "object"}))
    summary = run_replay(["--warehouse", warehouse, "--config", str(config)])
    assert (summary["replayed"], summary["stored"], summary["dead_lettered"]) == (2, 1, {"contract_violation": 3})
    assert summary["failed_again"] == 1
    assert replay.outcome(summary) == ("replayed 2 dead letters (recorded in _replays): 1 fixed, 1 failed again "
                                       "(new dead letters in _dead_letters)")
    assert table(tmp_path, "SELECT error_type, state FROM _dead_letters_view ORDER BY 1") == [
        {"error_type": "batch_too_large", "state": "failed_again"}, {"error_type": "contract_violation",
                                                                     "state": "fixed"}]


def test_a_failure_replayed_from_an_export_shows_in_the_view_of_another_warehouse(tmp_path, blocked):
    """Its original is in the export, not in this warehouse's _dead_letters: the view shows the
    failure once, by its earliest row, as failed_again."""
    warehouse, config, _ = blocked
    export = tmp_path / "letters.jsonl"
    letters = table(tmp_path, "SELECT * FROM _dead_letters")
    export.write_text("".join(json.dumps(r, default=str) + "\n" for r in letters))
    other = f"duckdb:///{tmp_path}/other.duckdb"
    summary = run_replay(["--warehouse", other, "--config", config, "--dead_letter_files", str(export),
                          "--error_type", "contract_violation"])  # the contract not fixed: both fail again
    assert (summary["replayed"], summary["failed_again"]) == (2, 2)
    with duckdb.connect(f"{tmp_path}/other.duckdb", read_only=True) as conn:
        view = rows(conn, "SELECT dead_letter_id, state, latest_dead_letter_id FROM _dead_letters_view")
        letters = rows(conn, "SELECT dead_letter_id FROM _dead_letters")
    assert sorted(r["dead_letter_id"] for r in view) == sorted(r["dead_letter_id"] for r in letters)
    assert [(r["state"], r["latest_dead_letter_id"] == r["dead_letter_id"]) for r in view] == [
        ("failed_again", True)] * 2


def test_the_view_follows_a_chain_of_replays_from_before_the_origin_attribute(tmp_path):
    """D1 replayed as D2, D2 replayed as D3, by a version that wrote only sluice_replay_of: D3
    waits, so D1 failed again (not fixed, as D3's parent D2 taken for the original would say)."""
    from transforms.warehouse.duckdb_backend import DuckDBWarehouse
    warehouse = DuckDBWarehouse(str(tmp_path / "w.duckdb")).open()
    warehouse.ensure_dead_letters()
    conn = warehouse._db.conn
    for letter, day, parent in (("D1", 1, None), ("D2", 2, "D1"), ("D3", 3, "D2")):
        conn.execute("INSERT INTO _dead_letters (dead_letter_id, error_type, failed_at, attributes) "
                     "VALUES (?, 'contract_violation', ?, ?)",
                     [letter, f"2026-11-0{day}", json.dumps({"sluice_replay_of": parent} if parent else {})])
    conn.execute("INSERT INTO _replays VALUES ('D1', now(), 'r1'), ('D2', now(), 'r2')")
    view = rows(conn, "SELECT dead_letter_id, state, latest_dead_letter_id FROM _dead_letters_view")
    warehouse.close()
    assert view == [{"dead_letter_id": "D1", "state": "failed_again", "latest_dead_letter_id": "D3"}]


@pytest.mark.parametrize("line, expected", [
    ("{not json", "--dead_letter_files {path}:2: not a dead-letter record (Expecting property name enclosed in "
                  "double quotes: line 1 column 2 (char 1))"),
    ('{"payload": "{}"}', "--dead_letter_files {path}:2: not a dead-letter record (no 'dead_letter_id')"),
    ("[1]", "--dead_letter_files {path}:2: not a dead-letter record (a JSON list, not an object)"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_dead_letter_file_mistake_is_one_line_naming_the_file_and_line(tmp_path, blocked, capsys, line, expected,
                                                                          dry_run):
    warehouse, config, _ = blocked
    export = tmp_path / "letters.jsonl"
    first = table(tmp_path, "SELECT * FROM _dead_letters LIMIT 1")[0]
    export.write_text(json.dumps(first, default=str) + "\n" + line + "\n")
    argv = ["replay", "--warehouse", warehouse, "--config", config, "--dead_letter_files", str(export)]
    assert main(argv + ["--dry_run"] * dry_run) == 2
    assert capsys.readouterr().err.splitlines() == [f"sluice: error: {expected.format(path=export)}"]
    assert table(tmp_path, "SELECT count(*) AS n FROM _replays")[0]["n"] == 0


def test_a_mistyped_replay_option_is_offered_with_replay_s_help(capsys):
    assert main(["replay", "--error_typ", "contract_violation"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "sluice: error: unrecognized option --error_typ (did you mean --error_type?) "
        "(see python -m pipeline replay --help)"]
