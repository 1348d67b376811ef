"""`python -m pipeline experiments` as a person runs it (a subprocess): the JSON document and the
table over a warehouse the real pipeline wrote, the report file, and each mistake's one line with
exit status 2."""
import json
import math
import subprocess
import sys

import duckdb
import pytest

from pipeline import experiments
from tests.conftest import ROOT
from tests.experiments import analysis_case as case


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """(generated messages, warehouse path, config path): a small run, shared by the module."""
    directory = tmp_path_factory.mktemp("command")
    events = case.Events(seed=7, users=120)
    case.run_pipeline(directory, events.messages, f"duckdb:///{directory}/w.duckdb")
    return events.messages, directory / "w.duckdb", directory / "sluice.json"


def command(*args, code: int = None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "pipeline", "experiments", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)  # a hang guard
    if code is not None:
        assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    return done


def refusal(*args) -> str:
    """The one line of a refused command (exit 2, nothing on stdout)."""
    done = command(*args, code=2)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and not done.stdout, done.stderr
    return lines[0]


def test_json_is_one_document_with_the_figures_and_the_rows_are_appended(stored):
    messages, warehouse, config = stored
    document = json.loads(command("--warehouse", f"duckdb:///{warehouse}", "--config", config, "--json",
                                  code=0).stdout)
    expected = case.expected(messages)
    assert set(document) == {"analyzed_at", "experiments", "results", "warnings"}
    got = {(r["experiment_id"], r["metric"], r["variation_id"]): r for r in document["results"]}
    assert set(got) == set(expected["moments"])
    for key, (units, total, _) in expected["moments"].items():
        assert got[key]["units"] == units and math.isclose(got[key]["sum"], total, rel_tol=1e-9, abs_tol=1e-9)
    assert {r["analyzed_at"] for r in document["results"]} == {document["analyzed_at"]}
    with duckdb.connect(str(warehouse), read_only=True) as conn:
        stored_rows = conn.execute("SELECT count(*) FROM experiment_results WHERE analyzed_at = ?::TIMESTAMPTZ",
                                   [document["analyzed_at"]]).fetchone()[0]
    assert stored_rows == len(document["results"])


def test_the_table_shows_each_experiment_its_warnings_and_metrics(stored):
    _, warehouse, config = stored
    out = command("--warehouse", f"duckdb:///{warehouse}", "--config", config, "--experiment", "skewed",
                  code=0).stdout
    assert "experiment skewed" in out and "experiment checkout" not in out
    assert "warning: sample ratio mismatch" in out
    for metric in case.METRICS:
        assert f"  {metric['name']} (" in out
    assert "0 (control)" in out and "lift [95% CI]" in out and "chance to win" in out


def test_html_writes_the_report_without_importing_beam(stored, tmp_path):
    """The command runs in the warehouse: Apache Beam (about a second to import) is never loaded."""
    _, warehouse, config = stored
    report = tmp_path / "report.html"
    script = ("import sys, runpy; sys.argv = ['pipeline'] + sys.argv[1:]\n"
              "try:\n    runpy.run_module('pipeline', run_name='__main__')\n"
              "finally:\n    print('beam loaded' if 'apache_beam' in sys.modules else 'no beam', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", script, "experiments", "--warehouse", f"duckdb:///{warehouse}",
                           "--config", str(config), "--html", str(report)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.stderr.strip().splitlines()[-1] == "no beam", done.stderr[-2000:]
    page = report.read_text()
    assert page.startswith("<!DOCTYPE html>") and "checkout" in page and "pricing" in page


def test_unknown_experiment_lists_those_seen(stored):
    _, warehouse, config = stored
    line = refusal("--warehouse", f"duckdb:///{warehouse}", "--config", config, "--experiment", "nope")
    assert line == ("sluice: error: --experiment: 'nope' has no exposures in experiment_exposures "
                    "(experiments seen: checkout, pricing, quiet, skewed, sparse)")


@pytest.mark.parametrize("args, expected", [
    (("--config", "{config}"), "the following arguments are required: --warehouse"),
    (("--warehouse", "duckdb:///{missing}", "--config", "{config}"), "--warehouse: {missing}: no such DuckDB file"),
    (("--warehouse", "postgres://x", "--config", "{config}"), "--warehouse 'postgres://x': expected"),
    (("--warehouse", "bigquery://project-1/d", "--config", "{config}", "--bigquery_endpoint", "x"),
     "--bigquery_endpoint 'x': expected a URL"),
    (("--warehouse", "duckdb:///{warehouse}", "--config", "{config}", "--html", "/no/such/dir/r.html"),
     "--html /no/such/dir/r.html: no directory"),
    (("--warehouse", "duckdb:///{warehouse}", "--config", "{config}", "--experiments", "x"),
     "unrecognized option --experiments"),
    (("--warehouse", "duckdb:///{warehouse}", "--config", "{unsupported}"), "config: experiments.metrics[0].when.op: "),
    (("--warehouse", "duckdb:///{warehouse}", "--config", "{unknown}"), "experiments.metrix"),
    (("--warehouse", "duckdb:///{empty}", "--config", "{config}"),
     "--warehouse: duckdb:///{empty} has no experiment_exposures table yet"),
    (("--warehouse", "duckdb:///{text}", "--config", "{config}"),   # a file, but no DuckDB database
     "--warehouse: {text}: not readable as a DuckDB database (IO Error: "),
])
def test_mistakes_are_one_line_naming_the_option_or_key(stored, tmp_path, capsys, args, expected):
    """In this process (the subprocess tests above cover the way in): main() as __main__ calls it."""
    _, warehouse, config = stored
    unsupported = tmp_path / "unsupported.json"
    unsupported.write_text(json.dumps({"experiments": {"metrics": [
        {"name": "m", "type": "count", "event": "Order Completed",
         "when": {"path": "properties.coupon", "op": "matches", "value": "^S"}}]}}))
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"experiments": {"metrix": []}}))
    duckdb.connect(str(tmp_path / "empty.duckdb")).close()  # a warehouse without exposures
    (tmp_path / "text.duckdb").write_text("not a database\n" * 1000)
    values = {"empty": tmp_path / "empty.duckdb", "config": config, "unsupported": unsupported, "unknown": unknown,
              "warehouse": warehouse, "missing": tmp_path / "missing.duckdb", "text": tmp_path / "text.duckdb"}
    assert experiments.main([a.format(**values) for a in args]) == 2
    out, err = capsys.readouterr()
    assert not out and len(err.strip().splitlines()) == 1, err
    line = err.strip()
    assert line.startswith("sluice: error: ") and expected.format(**values) in line, line


def test_bigquery_without_credentials_is_one_line(stored, monkeypatch, capsys):
    """No emulator endpoint: Google's credentials are looked up, and the file they name is not there
    (a missing file, so that the lookup never reaches for the metadata server on the network)."""
    _, _, config = stored
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/sluice-credentials.json")
    assert experiments.main(["--warehouse", "bigquery://project-1/events", "--config", str(config)]) == 2
    out, err = capsys.readouterr()
    assert not out and err.strip() == (
        "sluice: error: --warehouse: bigquery://project-1/events: no usable Google credentials (File "
        "/nonexistent/sluice-credentials.json was not found.); run `gcloud auth application-default login` "
        "or set GOOGLE_APPLICATION_CREDENTIALS"), err


def test_help_documents_every_option():
    out = command("--help", code=0).stdout
    for option in ("--warehouse", "--config", "--experiment", "--json", "--html", "--bigquery_endpoint"):
        assert option in out
