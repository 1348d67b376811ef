"""Consent and transformation config checked at launch: a bad rule names its index and key
path, and the command line exits 2 with one line."""
import pytest

from pipeline import config
from pipeline.errors import UsageError
from tests.conftest import SAMPLE
from tests.unit.test_cli import error_lines, sluice


@pytest.mark.parametrize("text, expected", [
    ("transforms:\n  - drop_event: true\n", "config: transforms[0]: 'name' is a required property"),
    ("transforms:\n  - {name: a, drop: [x]}\n  - {name: b, drop: [y], rename_event: Z}\n",
     "config: transforms[1]: a rule has exactly one action"),
    ("transforms:\n  - {name: a, types: [track]}\n", "config: transforms[0]: a rule has exactly one action"),
    ("transforms:\n  - {name: a, drop: [x]}\n  - {name: a, drop: [y]}\n",
     "config: transforms[1].name: rule name 'a' is used more than once"),
    ("transforms:\n  - {name: a, drop: [x], colour: red}\n", "config: transforms[0].colour: unknown key"),
    ("transforms:\n  - {name: a, drop: [messageId]}\n",
     "config: transforms[0].drop[0]: messageId is set by Sluice's normalization"),
    ("transforms:\n  - {name: a, rename: {event: name}}\n", "use rename_event"),
    ("transforms:\n  - {name: a, drop: ['properties..x']}\n", "config: transforms[0].drop[0]: 'properties..x' has an empty segment"),
    ("transforms:\n  - {name: a, drop_event: true, when: {path: x, op: equals, value: 1}}\n",
     "config: transforms[0].when.op: 'equals' is not one of"),
    ("transforms:\n  - {name: a, drop_event: true, when: {all: [{path: x, op: exists}, {path: y, op: matches, value: '('}]}}\n",
     "config: transforms[0].when.all[1].value: not a regular expression"),
    ("transforms:\n  - {name: a, drop_event: true, when: {path: x, op: in, value: 3}}\n",
     "config: transforms[0].when.value: in needs a list of values"),
    ("transforms:\n  - {name: a, hash: {paths: [traits.email], salt_env: SLUICE_NO_SUCH_VARIABLE}}\n",
     "config: transforms[0].hash.salt_env: environment variable SLUICE_NO_SUCH_VARIABLE is not set or empty"),
    ("transforms:\n  - {name: a, hash: {paths: [traits.email]}}\n", "config: transforms[0].hash: give the salt as exactly one"),
    ("transforms:\n  - {name: a, hash: {paths: [traits.email], salt_file: /nonexistent/salt}}\n",
     "config: transforms[0].hash.salt_file: cannot read /nonexistent/salt"),
    ("transforms:\n  - {name: a, rename_event: X, types: [identify]}\n",
     "config: transforms[0].rename_event: only track, page and screen events have a name"),
    ("transforms:\n  - {name: a, enrich: weather}\n", "config: transforms[0].enrich: 'weather' is not one of"),
    ("transforms:\n  - {name: 'has space', drop: [x]}\n", "config: transforms[0].name: 'has space' does not match"),
    ("consent:\n  missing_consent: maybe\n", "config: consent.missing_consent: 'maybe' is not one of"),
    ("consent:\n  warehouse: analytics\n", "config: consent.warehouse: 'analytics' is not of type 'array'"),
    ("consent:\n  destinations: {crm: [1]}\n", "config: consent.destinations.crm[0]: 1 is not of type 'string'"),
])
def test_rule_mistakes_name_index_and_key_path(tmp_path, text, expected):
    path = tmp_path / "sluice.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as raised:
        config.load(str(path))
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)


def test_salts_never_appear_in_errors_or_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("SLUICE_TEST_SALT", "s3cret-salt")
    (tmp_path / "salt").write_text("file-salt\n")
    path = tmp_path / "sluice.yaml"
    path.write_text("transforms:\n  - {name: a, hash: {paths: [traits.email], salt_env: SLUICE_TEST_SALT}}\n"
                    f"  - {{name: b, hash: {{paths: [userId], salt_file: {tmp_path / 'salt'}}}}}\n")
    loaded = config.load(str(path))
    assert "s3cret-salt" not in repr(loaded) and "file-salt" not in repr(loaded)
    path.write_text("transforms:\n  - {name: a, hash: {paths: [traits.email], salt_env: SLUICE_TEST_SALT}}\n"
                    "  - {name: b, hash: {paths: [messageId], salt_env: SLUICE_TEST_SALT}}\n")
    with pytest.raises(UsageError) as raised:
        config.load(str(path))
    assert "s3cret-salt" not in str(raised.value)


def test_consent_section_is_typed():
    loaded = config.validate({"consent": {"warehouse": ["analytics"], "missing_consent": "deny",
                                          "destinations": {"crm": ["marketing", "analytics"], "ads": []}}})
    assert loaded.consent.missing_consent == "deny"
    assert loaded.consent.warehouse == ("analytics",)
    assert loaded.consent.destinations == (("ads", ()), ("crm", ("marketing", "analytics")))
    assert config.validate({}).consent is None


@pytest.mark.parametrize("args, expected", [
    (["--udf", "no_such_module_xyz:fn"], "--udf 'no_such_module_xyz:fn': cannot import no_such_module_xyz: "
                                         "ModuleNotFoundError"),
    (["--udf", "tests.pipeline.udfs:missing"], "has no function missing"),
    (["--udf", "tests.pipeline.udfs:not_callable"], "has no function not_callable"),
    (["--udf", "tests.pipeline.udfs"], "expected module:function"),
])
def test_udf_mistakes_exit_2(args, expected):
    result = sluice("--input_files", str(SAMPLE), *args)
    assert result.returncode == 2, result.stderr
    [line] = error_lines(result)
    assert expected in line


def test_a_bad_rule_on_the_command_line_exits_2_naming_it(tmp_path):
    path = tmp_path / "sluice.yaml"
    path.write_text("transforms:\n  - {name: ok, drop: [x]}\n  - {name: bad, drop_event: true, "
                    "when: {path: x, op: matches, value: '[a-'}}\n")
    result = sluice("--input_files", str(SAMPLE), "--config", str(path))
    assert result.returncode == 2
    [line] = error_lines(result)
    assert line.startswith("sluice: error: config: transforms[1].when.value: not a regular expression")
