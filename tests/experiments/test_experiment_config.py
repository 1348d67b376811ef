"""The config's experiments: section: typed with its defaults, and every mistake one line naming its
key path, exit status 2 (the schema's unknown keys, parse's semantic checks, the contracts' check)."""
import json
from datetime import datetime, timezone

import pytest

from pipeline import config, contracts
from pipeline.errors import UsageError
from tests.conftest import ROOT, SAMPLE
from tests.unit.test_cli import error_lines, sluice, sluice_process
from transforms.experiments.settings import Definition, ExperimentSettings, Metric

REVENUE = {"name": "revenue", "type": "mean", "event": "Order Completed", "value": "properties.revenue"}


def experiments(**section) -> ExperimentSettings:
    return config.validate({"experiments": section}).experiments


def test_absent_means_the_defaults_and_a_full_section_is_typed():
    assert config.validate({}).experiments == ExperimentSettings()
    # absent: invalid exposures stored (an upgrade keeps its events); present: dead letters, the rule
    assert (config.validate({}).experiments.invalid_exposures, experiments().invalid_exposures) == (
        "store", "dead_letter")
    assert ExperimentSettings().experiment_key == ("properties.experiment_id", "properties.experimentId")
    typed = experiments(
        exposure_event="Flag Seen", experiment_key="properties.flag", variation_key=["properties.v"],
        unit="anonymous_id", conversion_window_hours=48, invalid_exposures="store",
        definitions={"checkout": {"control": 0, "variations": [0, 1, "2"], "weights": [0.5, 0.25, 0.25],
                                  "start": datetime(2026, 11, 1, tzinfo=timezone.utc), "end": "2026-11-30T00:00:00Z"}},
        metrics=[REVENUE, {"name": "big", "type": "binomial", "event": "Order Completed", "window_hours": 24,
                           "delay_hours": 1, "when": {"path": "properties.revenue", "op": "gt", "value": 100}}],
        cuped={"enabled": True, "lookback_days": 7})
    assert typed == ExperimentSettings(
        "Flag Seen", ("properties.flag",), ("properties.v",), "anonymous_id", 48.0,
        {"checkout": Definition("0", (0.5, 0.25, 0.25), datetime(2026, 11, 1, tzinfo=timezone.utc),
                                datetime(2026, 11, 30, tzinfo=timezone.utc), ("0", "1", "2"))},
        (Metric("revenue", "mean", "Order Completed", "properties.revenue", None, 48.0),
         Metric("big", "binomial", "Order Completed", None, {"path": "properties.revenue", "op": "gt", "value": 100},
                24.0, 1.0)), True, 7.0, "store")


def test_a_yaml_date_and_a_time_without_zone_are_utc(tmp_path):
    path = tmp_path / "sluice.yaml"
    path.write_text("experiments:\n  definitions:\n    a: {start: 2026-11-01, end: 2026-11-02T12:00:00}\n")
    definition = config.load(str(path)).experiments.definitions["a"]
    assert (definition.start, definition.end) == (datetime(2026, 11, 1, tzinfo=timezone.utc),
                                                  datetime(2026, 11, 2, 12, tzinfo=timezone.utc))


@pytest.mark.parametrize("section, expected", [
    ({"colour": "blue"}, "experiments.colour: unknown key"),
    ({"metrics": [{**REVENUE, "colour": 1}]}, "experiments.metrics[0].colour: unknown key"),
    ({"definitions": {"a": {"contol": "0"}}}, "experiments.definitions.a.contol: unknown key"),
    ({"cuped": {"enable": True}}, "experiments.cuped.enable: unknown key"),
    ({"unit": "device_id"}, "experiments.unit:"),
    ({"invalid_exposures": "drop"}, "experiments.invalid_exposures:"),
    ({"metrics": [{"name": "m", "type": "ratio", "event": "E"}]}, "experiments.metrics[0].type:"),
    ({"metrics": [{"name": "m", "type": "mean", "event": "E"}]}, "experiments.metrics[0]: a mean metric needs `value`"),
    ({"metrics": [{"name": "m", "type": "binomial", "event": "E", "value": "properties.x"}]},
     "experiments.metrics[0].value: a binomial metric takes no value"),
    ({"metrics": [{"name": "m", "type": "count", "event": "E", "value": "properties.x"}]},
     "experiments.metrics[0].value: a count metric takes no value"),
    ({"metrics": [REVENUE, {**REVENUE, "type": "count", "value": None}]}, "experiments.metrics[1].value"),
    ({"metrics": [REVENUE, {**REVENUE}]}, "experiments.metrics[1].name: 'revenue' is already the name of "
                                          "experiments.metrics[0]"),
    ({"metrics": [{**REVENUE, "value": "properties..revenue"}]}, "experiments.metrics[0].value: "),
    ({"metrics": [{**REVENUE, "when": {"path": "properties.x", "op": "matches", "value": "("}}]},
     "experiments.metrics[0].when.value: not a regular expression"),
    ({"metrics": [{**REVENUE, "when": {"all": [{"path": "x", "op": "exists"},
                                               {"path": "y", "op": "in", "value": 1}]}}]},
     "experiments.metrics[0].when.all[1].value: in needs a list"),
    ({"metrics": [{**REVENUE, "when": {"path": "x", "op": "gt"}}]}, "experiments.metrics[0].when: gt needs a value"),
    ({"metrics": [{**REVENUE, "window_hours": 0}]}, "experiments.metrics[0].window_hours:"),
    ({"metrics": [{**REVENUE, "delay_hours": -1}]}, "experiments.metrics[0].delay_hours:"),
    ({"conversion_window_hours": -5}, "experiments.conversion_window_hours:"),
    # capped at 10 years (cuped: days), so an absurd value is this line, not a warehouse's overflow mid-analysis
    ({"conversion_window_hours": 1e12}, "experiments.conversion_window_hours: 1000000000000.0 is greater than "
                                        "the maximum of 87600"),
    ({"metrics": [{**REVENUE, "window_hours": 87601}]}, "experiments.metrics[0].window_hours: 87601 is greater"),
    ({"metrics": [{**REVENUE, "delay_hours": 1e12}]}, "experiments.metrics[0].delay_hours: 1000000000000.0 is "),
    ({"cuped": {"lookback_days": 3651}}, "experiments.cuped.lookback_days: 3651 is greater than the maximum of 3650"),
    ({"cuped": {"lookback_days": 0}}, "experiments.cuped.lookback_days:"),
    ({"definitions": {"a": {"weights": [0.5, 0.4]}}}, "experiments.definitions.a.weights: must sum to 1, found 0.9"),
    ({"definitions": {"a": {"weights": [0.5, 0.5], "variations": ["0", "1", "2"]}}},
     "experiments.definitions.a.weights: 2 weights for 3 variations"),
    ({"definitions": {"a": {"control": "2", "variations": ["0", "1"]}}},
     "experiments.definitions.a.control: '2' is not one of the variations (0, 1)"),
    ({"definitions": {"a": {"variations": ["0", 0]}}}, "experiments.definitions.a.variations: a variation is listed"),
    ({"definitions": {"a": {"start": "last week"}}}, "experiments.definitions.a.start: 'last week' is not an ISO"),
    ({"definitions": {"a": {"start": "2026-11-02T00:00:00Z", "end": "2026-11-01T00:00:00Z"}}},
     "experiments.definitions.a.end: must be after start"),
    ({"experiment_key": ["properties.a", "properties..b"]}, "experiments.experiment_key[1]: "),
    ({"variation_key": []}, "experiments.variation_key:"),
])
def test_mistakes_name_their_key_path(section, expected):
    with pytest.raises(UsageError) as caught:
        config.validate({"experiments": section})
    message = str(caught.value)
    assert message.startswith(f"config: {expected}") and "\n" not in message, message


def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "sluice.yaml"
    path.write_text("experiments:\n  metrics:\n    - {name: revenue, type: mean, event: Order Completed}\n")
    result = sluice_process("--input_files", str(SAMPLE), "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == ["sluice: error: config: experiments.metrics[0]: a mean metric needs `value`, "
                                   "the path of the number it sums (e.g. properties.revenue)"]


def test_the_experiments_command_refuses_an_absurd_window_in_one_line(tmp_path, capsys):
    """Before the cap, 1e12 hours reached DuckDB as a ConversionException traceback mid-analysis."""
    from pipeline import experiments as command
    path = tmp_path / "sluice.yaml"
    path.write_text("experiments:\n  conversion_window_hours: 1000000000000\n")
    (tmp_path / "w.duckdb").touch()
    assert command.main(["--warehouse", f"duckdb:///{tmp_path}/w.duckdb", "--config", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "sluice: error: config: experiments.conversion_window_hours: 1000000000000 is greater than the maximum "
        "of 87600"]


# --- against the contracts (samples/contracts: Order Completed declares revenue and total as numbers)

@pytest.mark.parametrize("metric, expected", [
    ({**REVENUE, "value": "properties.revenu"}, "experiments.metrics[0].value: properties.revenu is not declared in "),
    ({**REVENUE, "value": "properties.currency"}, "experiments.metrics[0].value: properties.currency is declared as "
                                                  "STRING"),
    ({**REVENUE, "when": {"any": [{"path": "properties.total", "op": "gt", "value": 1},
                                  {"path": "properties.totl", "op": "gt", "value": 1}]}},
     "experiments.metrics[0].when.any[1].path: properties.totl is not declared"),
    (REVENUE, None),
    ({**REVENUE, "when": {"path": "context.page.path", "op": "exists"}}, None),  # context: not checked
    ({**REVENUE, "event": "Order Refunded", "value": "properties.anything"}, None),  # no contract: not checked
])
def test_a_metric_path_its_events_contract_does_not_declare_is_an_error_at_launch(tmp_path, metric, expected):
    path = tmp_path / "sluice.yaml"
    path.write_text(json.dumps({"contracts": {"directory": str(ROOT / "samples" / "contracts")},
                                "experiments": {"metrics": [metric]}}))
    loaded = config.load(str(path))
    if expected is None:
        assert contracts.load(loaded, str(path)).experiments.metrics[0].name == "revenue"
        return
    with pytest.raises(UsageError) as caught:
        contracts.load(loaded, str(path))
    assert str(caught.value).startswith(f"config: {expected}"), caught.value
    result = sluice("--input_files", str(SAMPLE), "--config", str(path), "--warehouse", f"duckdb:///{tmp_path}/w.db")
    assert result.returncode == 2 and error_lines(result) == [f"sluice: error: {caught.value}"]
