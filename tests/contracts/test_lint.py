"""Launch-time checks: every problem named with its file and JSON pointer."""
import json

from pipeline import contracts as cli
from tests.contracts.helpers import COMMON, ORDER, write_contracts
from tests.conftest import ROOT
from tests.unit.test_cli import sluice_process
from transforms.contracts.lint import check_directory


def problems_of(tmp_path, files):
    _, problems = check_directory(str(write_contracts(tmp_path / "c", files)))
    return [(p.path.split("/c/")[-1], p.pointer, p.severity, p.message) for p in problems]


def test_the_sample_contracts_are_clean_in_both_drafts():
    contracts, problems = check_directory(str(ROOT / "samples" / "contracts"))
    assert problems == []
    drafts = {c.schema.get("$schema") for c in contracts}
    assert {"http://json-schema.org/draft-07/schema#", "https://json-schema.org/draft/2020-12/schema"} <= drafts
    assert "track/order_completed" in {c.name for c in contracts}


def test_files_that_are_no_contract_are_named(tmp_path):
    found = problems_of(tmp_path, {"notes.txt": "x", "track/Order Completed": {}, "checkout": {},
                                   "track/tracks": {}, "common": "{not json"})
    by_file = {f: m for f, _, _, m in found}
    assert "contracts are .json files" in by_file["notes.txt"]
    assert "track/order_completed.json" in by_file["track/Order Completed.json"]
    assert "track/_tracks.json" in by_file["track/tracks.json"]  # a reserved table name
    assert "not a contract name" in by_file["checkout.json"]
    assert "not valid JSON" in by_file["common.json"]


def test_meta_schema_errors_point_into_the_file(tmp_path):
    bad = {"type": "object", "properties": {"properties": {"type": "object", "properties": {"total": {"type": "money"}}}}}
    found = problems_of(tmp_path, {"track/order_completed": bad})
    assert any(p == "/properties/properties/properties/total/type" and "not a valid schema" in m
               for _, p, _, m in found), found


def test_unsupported_draft_and_remote_refs_are_refused(tmp_path):
    found = problems_of(tmp_path, {"common": {"$schema": "http://json-schema.org/draft-03/schema#"},
                                   "identify": {"$ref": "https://example.com/traits.json"}})
    messages = {f: m for f, _, _, m in found}
    assert "unsupported $schema" in messages["common.json"]
    assert "cannot be compiled" in messages["identify.json"]


def test_names_that_collide_after_snake_case(tmp_path):
    schema = {"properties": {"properties": {"properties": {"firstName": {"type": "string"},
                                                           "first_name": {"type": "string"},
                                                           "messageId": {"type": "string"}}}}}
    found = problems_of(tmp_path, {"track/signed_up": schema})
    collisions = [p for _, p, _, m in found if "both become the column 'first_name'" in m]
    assert sorted(collisions) == ["/properties/properties/properties/firstName",
                                  "/properties/properties/properties/first_name"]
    assert any("fixed columns" in m and p.endswith("/messageId") for _, p, _, m in found)


def test_types_the_warehouse_cannot_hold(tmp_path):
    schema = {"properties": {"traits": {"properties": {"nothing": {"type": "null"},
                                                       "either": {"type": ["string", "integer"]}}}}}
    found = problems_of(tmp_path, {"identify": schema})
    severities = {p.rsplit("/", 1)[-1]: s for _, p, s, _ in found}
    assert severities == {"nothing": "error", "either": "warning"}


def test_a_value_declared_with_two_types_is_an_error(tmp_path):
    other = {"properties": {"context": {"properties": {"ip": {"type": "integer"}}}}}
    found = problems_of(tmp_path, {"common": COMMON, "track/order_completed": {**ORDER, **other}})
    assert any("declares /context/ip as INT64" in m for _, _, _, m in found), found


def test_title_must_match_the_file(tmp_path):
    found = problems_of(tmp_path, {"track/order_completed": {**ORDER, "title": "Order Refunded"}})
    assert [(p, m) for _, p, _, m in found if p == "/title"][0][1].endswith("track/order_refunded.json")


def test_check_command_exit_codes(tmp_path, capsys):
    good = write_contracts(tmp_path / "good", {"common": COMMON, "track/order_completed": ORDER})
    assert cli.main(["check", str(good)]) == 0
    bad = write_contracts(tmp_path / "bad", {"common": {"type": 12}})
    assert cli.main(["check", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "common.json#/type: error:" in out
    assert cli.main(["check", str(tmp_path / "missing")]) == 2


def check_run(directory):
    return sluice_process("check", str(directory), module="pipeline.contracts")


def test_check_reports_every_kind_of_problem_in_one_pass(tmp_path):
    # A misnamed file used to hide its meta-schema error, which hid its lint problems: three rounds.
    refunded = {"title": "Order Refunded", "properties": {"properties": {"properties": {
        "orderId": {"type": "strin"}, "order_id": {"type": "string"}, "gone": {"type": "null"}}}}}
    directory = write_contracts(tmp_path / "c", {"track/OrderRefunded": refunded, "checkout": {"type": 5}})
    done = check_run(directory)
    assert done.returncode == 1, done.stderr
    lines = [line.split("/c/", 1)[1] for line in done.stdout.splitlines()]
    pointer = "track/OrderRefunded.json#/properties/properties/properties/"
    assert lines == [
        "checkout.json#: error: not a contract name: use common.json, identify.json, group.json, page.json, "
        "screen.json, alias.json or track/<table>.json",
        "checkout.json#/type: error: not a valid schema: 5 is not valid under any of the given schemas",
        "track/OrderRefunded.json#: error: a track contract is named after its event's table: event 'Order Refunded' "
        "lands in table 'order_refunded', so its contract belongs in track/order_refunded.json",
        pointer + "gone: error: a value that can only be null cannot be a warehouse column",
        pointer + "orderId: error: /properties/orderId and /properties/order_id both become the column 'order_id'; "
                  "rename one so they stay apart",
        pointer + "orderId/type: error: not a valid schema: 'strin' is not valid under any of the given schemas",
        pointer + "order_id: error: /properties/orderId and /properties/order_id both become the column 'order_id'; "
                  "rename one so they stay apart"], done.stdout
    assert done.stderr == "0 contract(s), 7 error(s), 0 warning(s)\n"


def test_a_missing_directory_is_one_line(tmp_path):
    done = check_run(tmp_path / "nosuch")
    line = f"contracts: error: {tmp_path}/nosuch: no such directory\n"
    assert (done.returncode, done.stdout, done.stderr) == (2, "", line)
    from pipeline.config import validate
    from pipeline.errors import UsageError
    import pytest
    with pytest.raises(UsageError) as raised:  # the pipeline's launch check, as the line it exits 2 with
        cli.load(validate({"contracts": {"directory": str(tmp_path / "nosuch")}}))
    assert str(raised.value) == f"contracts.directory: {tmp_path}/nosuch: no such directory"


def test_a_file_given_as_the_directory_is_one_line(tmp_path):
    (tmp_path / "events.jsonl").write_text("{}\n")
    done = check_run(tmp_path / "events.jsonl")  # it read as an empty directory: "0 contract(s)", exit 0
    line = f"contracts: error: {tmp_path}/events.jsonl: a file, not a directory of contracts (common.json, "
    assert (done.returncode, done.stdout) == (2, "") and done.stderr.startswith(line), done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_an_empty_title_names_no_event(tmp_path):
    # "" named the event for lint (track/event_da39a3ee.json) but not for the file name (track/foo.json)
    found = problems_of(tmp_path, {"track/Foo": {"title": "", "properties": {}}})
    assert [(pointer, message.rsplit(" ", 1)[-1]) for _, pointer, _, message in found] == [("", "track/foo.json")]
    done = check_run(tmp_path / "c")
    assert done.returncode == 1 and "event_" not in done.stdout and done.stdout.count("track/foo.json") == 1


def test_the_pipeline_refuses_to_start_and_lists_every_error(tmp_path):
    write_contracts(tmp_path / "c", {"common": {"type": 12}, "identify": {"properties": {"traits": {
        "properties": {"a": {"type": "null"}}}}}})
    (tmp_path / "sluice.yaml").write_text("contracts:\n  directory: c\n")
    (tmp_path / "in.jsonl").write_text(json.dumps({"type": "track", "event": "x", "userId": "u"}) + "\n")
    done = sluice_process("--input_files", str(tmp_path / "in.jsonl"), "--config", str(tmp_path / "sluice.yaml"),
                          "--warehouse", f"duckdb:///{tmp_path}/w.duckdb")
    assert done.returncode == 2
    assert "contracts.directory: 2 problem(s)" in done.stderr
    assert "common.json#/type: error" in done.stderr and "identify.json#/properties/traits/properties/a" in done.stderr
    assert not (tmp_path / "w.duckdb").exists()


def test_an_override_for_a_missing_contract_is_a_config_error(tmp_path):
    from pipeline.config import validate
    from pipeline.errors import UsageError
    import pytest
    write_contracts(tmp_path / "c", {"common": COMMON})
    config = validate({"contracts": {"directory": str(tmp_path / "c"), "overrides": {"track/nope": "block"}}})
    with pytest.raises(UsageError, match="contracts.overrides.track/nope: no such contract"):
        cli.load(config)
