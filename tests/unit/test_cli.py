"""What a person sees on the command line: one line naming the problem, exit status 2."""
import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from pipeline import config, options
from pipeline.errors import UsageError
from pipeline.main import main
from tests.conftest import ROOT, SAMPLE


def sluice(*args, cwd=ROOT):
    """`python -m pipeline ARGS`: main(), what the console script and `-m pipeline` call, in this
    process (a new interpreter importing Beam costs 2 s a case); its exit status and output."""
    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(previous)
    return subprocess.CompletedProcess(["python", "-m", "pipeline", *args], code, out.getvalue(), err.getvalue())


def sluice_process(*args, cwd=ROOT, env=None, module="pipeline"):
    """The same as a process of its own: what a shell sees, start-up included. env: variables
    added to this process's (an emulator's address); module: another command (pipeline.contracts)."""
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **env} if env else None, timeout=120)


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("sluice: error:")]


@pytest.mark.parametrize("args, expected", [
    (["--input_file", "x"], "unrecognized option --input_file (did you mean --input_files?) (see --help)"),
    (["--input_files", "x", "--bigquery_endpont=http://h"], "--bigquery_endpont (did you mean --bigquery_endpoint?)"),
    (["--input_files", "x", "--colour", "red"], "unrecognized option --colour (see --help)"),
    ([], "give exactly one input: --input_files PATTERN"),
    (["--input_files", "x.jsonl", "--input_topic", "projects/p/topics/events"],
     "(got --input_files, --input_topic)"),
    (["--input_subscription", "events-sub"], "--input_subscription 'events-sub': expected projects/"),
    (["--input_topic", "projects/p/subscriptions/s"], "--input_topic 'projects/p/subscriptions/s': expected"),
    (["--input_subscription", "projects/demo/subscriptions/sluice"], "a project id of 6-63"),
    (["--input_files", "/nonexistent/*.jsonl"], "no file matches /nonexistent/*.jsonl"),
    (["--input_files", str(SAMPLE), "--warehouse", "postgres://x"], "--warehouse 'postgres://x'"),
    (["--input_files", str(SAMPLE), "--warehouse", "duckdb:/x"], "duckdb:///relative/path.duckdb"),
    (["--input_files", str(SAMPLE), "--config", "/nonexistent.yaml"], "--config /nonexistent.yaml: cannot read"),
    (["--input_files", str(SAMPLE), "--direct_running_mode", "multi_processing"], "multi_processing"),
    (["--input_files", str(SAMPLE), "stray"], "unexpected argument 'stray'"),
    (["--input_files", str(SAMPLE), "--dead_letter_topic", "dead-letters"],
     "--dead_letter_topic 'dead-letters': expected projects/PROJECT/topics/NAME"),
    (["--input_files", str(SAMPLE), "--runner", "DirectRunnr"], "--runner DirectRunnr: unknown runner (did you mean"),
    (["--input_files", str(SAMPLE), "--runner", "apache_beam.runners.Nope"], "--runner apache_beam.runners.Nope: "
     "cannot import it"),
    (["--input_files", str(SAMPLE), "--direct_num_workers", "two"], "argument --direct_num_workers: invalid int"),
    (["--input_files", str(SAMPLE), "--direct_num_workers", "-3"], "--direct_num_workers -3: a number of workers"),
    (["--input_files", str(SAMPLE), "--runner", ".DirectRunner"], "--runner .DirectRunner: expected a runner name"),
    (["--input_files", str(SAMPLE), "--max_num_workers", "1.5"], "argument --max_num_workers: invalid int"),
    (["--input_files", str(SAMPLE), "--streaming=yes"], "argument --streaming: ignored explicit argument 'yes'"),
    (["--input_files", str(SAMPLE), "--runner", "DataflowRunner", "--warehouse", "bigquery://demo-project/d"],
     "Beam's options for --runner DataflowRunner: Missing GCS path option: temp_location; "),  # Beam's own checks
    (["--input_files", str(SAMPLE), "--runner", "DataflowRunner"],
     "--runner DataflowRunner cannot write to an embedded DuckDB file"),
])
def test_usage_errors_are_one_line_and_exit_2(args, expected):
    result = sluice(*args)
    assert result.returncode == 2, result.stderr
    lines = error_lines(result)
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_a_usage_error_in_a_shell_is_one_line_and_exit_status_2():
    result = sluice_process("--input_files", str(SAMPLE), "--runner", "DirectRunnr")
    assert result.returncode == 2 and error_lines(result) == [line for line in result.stderr.splitlines() if line]
    assert error_lines(result) == ["sluice: error: --runner DirectRunnr: unknown runner (did you mean DirectRunner?)"]


def sluice_option_actions() -> list:
    """Every option Sluice defines, from the parser in pipeline/options.py (not a hand list)."""
    parser = argparse.ArgumentParser(add_help=False)
    options.SluiceOptions._add_argparse_args(parser)
    return [action for action in parser._actions if action.option_strings]


def test_help_lists_every_option():
    result = sluice("--help")
    assert result.returncode == 0, result.stderr
    actions = sluice_option_actions()
    assert len(actions) >= 10  # the derivation found the options, not an empty parser
    flat = "".join(result.stdout.split())  # argparse wraps lines (and breaks at hyphens)
    for action in actions:
        help_text = (action.help or "") % {"default": action.default}
        assert help_text.strip(), f"{action.option_strings[0]} has no help text"
        for option in action.option_strings:
            assert re.search(rf"^  {re.escape(option)}(?= |$)", result.stdout, re.M), f"{option} is not listed"
        assert "".join(help_text.split()) in flat, f"{action.option_strings[0]}'s help is not shown"
    assert "--runner" in result.stdout  # Beam's options pass through, named in the epilog


def test_a_run_prints_the_summary_and_writes_json(tmp_path):
    events = tmp_path / "in.jsonl"
    events.write_text('{"type":"track","event":"A","userId":"u"}\nnot json\n')
    summary = tmp_path / "summary.json"
    result = sluice_process("--input_files", str(events), "--warehouse", f"duckdb:///{tmp_path}/w.duckdb",
                            "--summary_path", str(summary))
    assert result.returncode == 0, result.stderr
    assert "conservation holds" in result.stdout
    written = json.loads(summary.read_text())
    assert (written["events"], written["stored"], written["dead_lettered"]) == (2, 1, {"malformed_json": 1})
    assert set(written) >= {"read", "events", "stored", "dead_lettered", "dropped", "forwarded", "tables"}


@pytest.mark.parametrize("text, expected", [
    ("warehouse:\n  batchsize: 3\n", "config: warehouse.batchsize: unknown key (did you mean batch_size?)"),
    ("transforms:\n  - {name: a, dorp: [x]}\n", "config: transforms[0].dorp: unknown key (did you mean drop?)"),
    ("colour: blue\n", "config: colour: unknown key$"),  # nothing close: no suggestion
    ("decode:\n  max_event_bytes: -1\n", "config: decode.max_event_bytes:"),
    ("warehouse: [1]\n", "config: warehouse:"),
    ("decode: {max_event_bytes: 9000, max_batch_bytes: 10}\n", "decode.max_batch_bytes"),
    ("decode: [\n", "not valid YAML at line"),
    ("- a\n", "top level must be a mapping"),
])
def test_config_mistakes_name_the_key(tmp_path, text, expected):
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(expected.rstrip("$")) + ("$" if expected.endswith("$") else "")):
        config.load(str(path))


def schema_defaults() -> list:
    """(section, key, default) for every key of a config section that has a default in
    schemas/config.schema.json (list items, such as destinations, are examples, not defaults)."""
    import schemas
    document = schemas.load("config.schema.json")
    return [(section, key, spec["default"]) for section, node in sorted(document["properties"].items())
            for key, spec in sorted(node.get("properties", {}).items()) if "default" in spec]


@pytest.mark.parametrize("section, key, default", schema_defaults())
def test_the_shipped_config_shows_every_default_key(section, key, default):
    shown = yaml.safe_load((ROOT / "samples" / "sluice.yaml").read_text())
    assert key in (shown.get(section) or {}), f"samples/sluice.yaml does not show {section}.{key}"
    assert shown[section][key] == default, f"{section}.{key}: {shown[section][key]!r}, the default is {default!r}"


def test_the_shipped_config_is_valid_and_its_values_are_the_defaults(monkeypatch):
    monkeypatch.setenv("SLUICE_HASH_SALT", "test-salt")
    loaded = config.load(str(ROOT / "samples" / "sluice.yaml"))
    # The sample has an experiments section, whose presence makes dead_letter the default for
    # invalid exposures (without one, an upgrade's exposures stay plain events): docs/experiments.md.
    assert loaded.experiments.invalid_exposures == "dead_letter"
    defaults = loaded._replace(contracts=None, consent=None, transforms=config.Config().transforms,
                               experiments=loaded.experiments._replace(invalid_exposures="store"))
    assert defaults == config.Config()
    assert loaded.consent.missing_consent == "allow" and loaded.consent.warehouse == ("analytics",)
    assert [rule["name"] for rule in loaded.transforms.rules][:2] == ["drop-internal-traffic", "hash-emails"]
    assert loaded.contracts.directory == "contracts"
    assert dict(loaded.contracts.overrides) == {"track/button_clicked": "omit_properties",
                                                "track/order_completed": "block"}


@pytest.mark.parametrize("args, expected", [
    (["--warehouse", "bigquery://p/d"], "write bigquery://PROJECT/DATASET"),
    (["--warehouse", "bigquery://my-project/bad-dataset"], "write bigquery://PROJECT/DATASET"),
    (["--warehouse", "bigquery://my-project"], "write bigquery://PROJECT/DATASET"),
    (["--warehouse", "bigquery://my-project/ds", "--bigquery_endpoint", "127.0.0.1:9050"],
     "--bigquery_endpoint '127.0.0.1:9050': expected a URL"),
    (["--warehouse", "bigquery://my-project/ds", "--bigquery_write_method", "fast"], "--bigquery_write_method"),
])
def test_bigquery_option_mistakes_exit_2(args, expected):
    result = sluice("--input_files", str(SAMPLE), *args)
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert expected in line


def test_pipeline_query_refuses_a_bigquery_url_with_one_line_saying_what_to_use():
    result = subprocess.run([sys.executable, "-m", "pipeline.query", "bigquery://demo-project/events"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "sluice.query: error: bigquery://demo-project/events: pipeline.query reads DuckDB files (duckdb:///PATH); "
        "query BigQuery with bq (bq query --nouse_legacy_sql 'SELECT ... FROM `demo-project.events.tracks`') "
        "or its console"]
