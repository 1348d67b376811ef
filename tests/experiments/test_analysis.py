"""The analysis over a warehouse the real pipeline wrote (FnApiRunner, batch), every figure checked
against tests/experiments/analysis_case.py's plain-Python computation from the generated events,
the statistics against gbstats (GrowthBook's engine) fed those independent sums, and DuckDB
against the BigQuery emulator on the same input."""
import json
import math

import pytest

from analysis import conditions
from analysis.analyze import analyze, pointer
from analysis.errors import AnalysisError
from analysis.results import RESULTS_TABLE, write_results
from analysis.stats import SRM_THRESHOLD
from analysis.warehouse import open_warehouse
from pipeline.main import run
from tests.experiments import analysis_case as case
from tests.experiments import gbstats_reference
from transforms.experiments.settings import parse
from transforms.rules.conditions import compile_condition
from transforms.warehouse import duckdb_backend

BINOMIAL = {m["name"] for m in case.METRICS if m["type"] == "binomial"}
_STATS = ("lift", "ci_low", "ci_high", "p_value", "chance_to_win", "risk")


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """(generated messages, DuckDB URL) once for the module: the pipeline's tables to analyze."""
    directory = tmp_path_factory.mktemp("analysis")
    events = case.Events()
    url = f"duckdb:///{directory}/w.duckdb"
    case.run_pipeline(directory, events.messages, url)
    return events.messages, url


def settings(cuped: bool = False, **changes):
    section = {**case.EXPERIMENTS, **changes}
    if cuped:
        section["cuped"] = {"enabled": True, "lookback_days": case.CUPED_DAYS}
    return parse(section)


def analyzed(url: str, cuped: bool = False, experiment=None, endpoint=None, **changes):
    warehouse = open_warehouse(url, endpoint)
    try:
        return analyze(warehouse, settings(cuped, **changes), experiment)
    finally:
        warehouse.close()


def close(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def same_rows(got: list, want: list) -> None:
    """The same result rows but for analyzed_at, floats to rounding (sums in another order)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for field, value in w.items():
            if field != "analyzed_at":
                assert close(g[field], value) if isinstance(value, float) else g[field] == value, (field, g, w)


def test_every_figure_matches_the_events(stored):
    messages, url = stored
    expected = case.expected(messages)
    analysis = analyzed(url)
    rows = {(r["experiment_id"], r["metric"], r["variation_id"]): r for r in analysis.results}
    assert set(rows) == set(expected["moments"]) and len(rows) == len(analysis.results)
    for key, (units, total, squares) in expected["moments"].items():
        row = rows[key]
        assert (row["units"], row["is_control"]) == (units, key[2] == expected["control"][key[0]]), key
        assert close(row["sum"], total) and close(row["sum_squares"], squares), (key, row, total, squares)
        assert close(row["mean"], total / units if units else None), key
    # The variation order and the experiments' own figures.
    for summary in analysis.experiments:
        experiment = summary["experiment_id"]
        assert [v["variation_id"] for v in summary["variations"]] == expected["order"][experiment]
        assert [v["units"] for v in summary["variations"]] == [expected["units"][experiment, v]
                                                               for v in expected["order"][experiment]]
        assert summary["multiple_exposure_units"] == expected["multiple"].get(experiment, 0)
        assert all(r["multiple_exposure_units"] == summary["multiple_exposure_units"]
                   and r["srm_p_value"] == summary["srm_p_value"]
                   for r in analysis.results if r["experiment_id"] == experiment)
    assert expected["order"]["pricing"] == ["a", "b", "c"] and expected["control"]["pricing"] == "a"
    assert expected["multiple"]["checkout"] > 5


def test_the_edge_cases_are_in_the_data_and_give_what_the_rules_say(stored):
    """Not vacuous: each edge case occurs among the analyzed units (else the sums above would match
    with the rule wrong), and the figures of the special experiments are what the rules say."""
    messages, url = stored
    edges = case.edge_cases(messages)
    assert min(edges.values()) >= 3, edges
    analysis = analyzed(url)
    rows = {(r["experiment_id"], r["metric"], r["variation_id"]): r for r in analysis.results}
    by_kind = {(w["experiment_id"], w["kind"]) for w in analysis.warnings}
    # SRM: the 85/15 split is flagged; checkout's fair split is not.
    assert rows["skewed", "orders", "0"]["srm_p_value"] < SRM_THRESHOLD and ("skewed", "srm") in by_kind
    assert rows["checkout", "orders", "0"]["srm_p_value"] > SRM_THRESHOLD and ("checkout", "srm") not in by_kind
    assert ("checkout", "multiple_exposure") in by_kind
    # quiet: no conversions at all; every sum 0, no lift.
    quiet = [r for r in analysis.results if r["experiment_id"] == "quiet"]
    assert quiet and all(r["sum"] == 0 and r["lift"] is None for r in quiet)
    # sparse: the listed variation nobody saw has its rows, 0 units, nothing compared.
    empty = rows["sparse", "orders", "2"]
    assert empty["units"] == 0 and empty["mean"] is None and all(empty[f] is None for f in _STATS)
    # A metric without a table, and one without its column: zeros and a warning each.
    assert all(r["sum"] == 0 for r in analysis.results if r["metric"] in ("signups", "tax"))
    assert {(None, "missing_table"), (None, "missing_column")} <= by_kind
    # Treatments are compared, controls never.
    assert rows["checkout", "orders", "1"]["p_value"] is not None
    assert all(r[f] is None for r in analysis.results if r["is_control"] for f in _STATS)


def test_weights_for_named_variations_need_their_order(stored):
    """Weights pair with the variations in order. For named ids (pricing's a / b / c) no order is
    implied, so weights without `variations` skip the check with a warning instead of reporting a
    mismatch made by pairing them alphabetically; listing the variations restores it."""
    _, url = stored
    weights = [0.5, 0.25, 0.25]
    unpaired = analyzed(url, experiment="pricing", definitions={**case.DEFINITIONS, "pricing": {"weights": weights}})
    assert {r["srm_p_value"] for r in unpaired.results} == {None}
    assert [w["kind"] for w in unpaired.warnings if w["experiment_id"] == "pricing"] == ["srm_skipped"]
    listed = analyzed(url, experiment="pricing",
                      definitions={**case.DEFINITIONS, "pricing": {"weights": weights, "variations": ["a", "b", "c"]}})
    assert all(r["srm_p_value"] is not None for r in listed.results)


def test_windows_delay_and_conditions_each_change_the_figures(stored):
    """Each rule matters on this data: the independent computation without it gives other sums."""
    messages, _ = stored
    baseline = case.expected(messages)["moments"]

    def changed(name, **changes) -> bool:
        metrics = [dict(m, **changes) if m["name"] == name else m for m in case.METRICS]
        moments = case.expected(messages, metrics=metrics)["moments"]
        return any(moments[key][1] != baseline[key][1] for key in baseline if key[1] == name)
    assert changed("summer_not_app", delay_hours=0) and changed("summer_not_app", when=None)
    # The delay moves the window's end too (GrowthBook's rule): [2 h, 72 h) would give other sums.
    assert changed("summer_not_app", window_hours=case.WINDOW_HOURS - 2)
    assert changed("big_orders", window_hours=72) and changed("big_orders", when=None)
    assert changed("orders", window_hours=10_000)


def test_only_one_experiment(stored):
    _, url = stored
    whole = [r for r in analyzed(url).results if r["experiment_id"] == "pricing"]
    alone = analyzed(url, experiment="pricing").results
    same_rows(alone, whole)


def test_statistics_match_gbstats_on_the_independent_sums(stored):
    """lift, interval, p-value, chance to win and risk of every treatment, with and without CUPED,
    as GrowthBook's engine gives them for the sums computed from the events."""
    gbstats_reference.require_gbstats()
    messages, url = stored
    cases, keys = [], []
    for cuped in (False, True):
        expected = case.expected(messages, case.CUPED_DAYS if cuped else None)
        for row in analyzed(url, cuped=cuped).results:
            experiment = row["experiment_id"]
            control = expected["control"][experiment]
            if row["is_control"] or expected["units"][experiment, row["variation_id"]] == 0:
                continue
            fields = ("units", "sum", "sum_squares", "pre_sum", "pre_sum_squares", "sum_product")
            moments = [dict(zip(fields, expected["moments"][experiment, row["metric"], v]))
                       for v in (control, row["variation_id"])]
            cases.append({"variations": moments, "binomial": row["metric"] in BINOMIAL, "cuped": cuped})
            keys.append(row)
    answers = gbstats_reference.reference(cases)
    compared = 0
    for row, answer in zip(keys, answers):
        got = answer["variations"][0]
        if got["error"] is None:
            for field in ("lift", "ci_low", "ci_high", "p_value"):
                assert math.isclose(row[field], got[field], rel_tol=1e-6, abs_tol=1e-9), (row, got)
            compared += 1
        else:
            assert row["ci_low"] is None and row["p_value"] is None, (row, got)
        if got["bayesian_error"] is None:
            for field in ("chance_to_win", "risk"):
                assert math.isclose(row[field], got[field], rel_tol=1e-6, abs_tol=1e-9), (row, got)
    assert compared > 40  # most treatments have a result, with and without CUPED


def test_results_are_appended_to_the_warehouse(stored, tmp_path):
    import shutil
    _, url = stored
    copy = tmp_path / "copy.duckdb"
    shutil.copy(url[len("duckdb:///"):], copy)
    warehouse = open_warehouse(f"duckdb:///{copy}")
    try:
        first = analyze(warehouse, settings())
        write_results(warehouse, first.results)
        write_results(warehouse, analyze(warehouse, settings()).results)
        stored_rows = warehouse.query(f"SELECT * FROM {RESULTS_TABLE} WHERE analyzed_at = $at "
                                      "ORDER BY experiment_id, metric, variation_id", {"at": first.analyzed_at})
        runs = warehouse.query(f"SELECT count(DISTINCT analyzed_at) AS n, count(*) AS rows FROM {RESULTS_TABLE}")
    finally:
        warehouse.close()
    assert runs == [{"n": 2, "rows": 2 * len(first.results)}]
    ordered = sorted(first.results, key=lambda r: (r["experiment_id"], r["metric"], r["variation_id"]))
    assert [{k: v for k, v in r.items()} for r in stored_rows] == ordered


def leaf(path: str, op: str, *value) -> dict:
    return {"path": f"properties.{path}", "op": op, **({"value": value[0]} if value else {})}


CONDITIONS = [
    leaf("coupon", "exists"), leaf("coupon", "missing"), leaf("channel", "eq", "app"), leaf("channel", "ne", "app"),
    leaf("coupon", "in", ["WINTER5", "summer", 3]), leaf("coupon", "not_in", ["WINTER5", "summer"]),
    leaf("revenue", "lt", 40), leaf("revenue", "lte", 40), leaf("revenue", "gte", 80.5),
    leaf("revenue", "gt", "80"),                        # a string against numbers: never true
    leaf("revenue", "eq", "55"), leaf("revenue", "ne", True), leaf("coupon", "lt", "T"),
    leaf("coupon", "contains", "MM"), leaf("coupon", "ends_with", "5"), leaf("coupon", "starts_with", "SUMMER"),
    leaf("revenue", "contains", "5"),                   # contains on a number: never true
    leaf("absent", "ne", 1), leaf("absent", "exists"),  # no such column: as a path leading nowhere
    {"any": [leaf("channel", "missing"), {"not": leaf("revenue", "gt", 30)}]},
]


def same_events_as_the_rules(warehouse, messages: list) -> None:
    """Each operator translated, over the warehouse's order_completed table, against the rules' own
    compiled condition over the generated events: the same number of events pass (one query)."""
    orders = [m for m in messages if m["event"] == "Order Completed"]
    columns = warehouse.columns("order_completed")
    d = warehouse.dialect
    revenues = [m["properties"]["revenue"] for m in orders if "revenue" in m["properties"]]
    specs = CONDITIONS + [leaf("revenue", "eq", revenues[0]), leaf("revenue", "in", revenues[1:4])]
    assert {spec.get("op") for spec in specs} >= set(conditions.TRANSLATED)  # every operator
    params = {}

    def bind(value):
        params[f"p{len(params)}"] = value
        return d.param(f"p{len(params) - 1}")

    def column_of(path):
        found = columns.get(pointer(path))
        return None if found is None else (f"e.{d.quote(found.name)}", found.type)
    counts = [f"SUM(CASE WHEN {conditions.to_sql(spec, column_of, bind, 'when')} THEN 1 ELSE 0 END) AS n{i}"
              for i, spec in enumerate(specs)]
    named = f"e.event_text = {bind('Order Completed')}"  # the table holds case.OTHER_NAMES too
    got = warehouse.query(f"SELECT {', '.join(counts)} FROM {d.events('order_completed')} AS e WHERE {named}",
                          params)[0]
    for i, spec in enumerate(specs):
        test = compile_condition(spec, "when")
        assert got[f"n{i}"] == sum(1 for m in orders if test(m)), (warehouse.location, spec)


def test_conditions_select_the_events_the_rules_select(stored):
    """In DuckDB; the BigQuery emulator's test below runs the same over its copy."""
    messages, url = stored
    warehouse = open_warehouse(url)
    try:
        same_events_as_the_rules(warehouse, messages)
    finally:
        warehouse.close()


@pytest.mark.parametrize("when, where", [
    ({"path": "properties.coupon", "op": "matches", "value": "^S"}, "experiments.metrics[0].when.op"),
    ({"any": [{"path": "properties.a", "op": "exists"}, {"path": "properties.tags", "op": "contains", "value": 3}]},
     "experiments.metrics[0].when.any[1].value"),
    ({"not": {"path": "properties.coupon", "op": "glob", "value": "S*"}}, "experiments.metrics[0].when.not.op"),
    # A stored JSON null is NULL in the warehouse, as an absent key is: null has no shared meaning.
    ({"path": "properties.coupon", "op": "eq", "value": None}, "experiments.metrics[0].when.value"),
    ({"all": [{"path": "properties.coupon", "op": "ne", "value": None}]}, "experiments.metrics[0].when.all[0].value"),
    ({"path": "properties.coupon", "op": "not_in", "value": ["x", None]}, "experiments.metrics[0].when.value[1]"),
    ({"path": "properties.coupon", "op": "in", "value": [None]}, "experiments.metrics[0].when.value[0]"),
])
def test_conditions_without_an_sql_form_are_refused_before_any_query(when, where):
    section = {"metrics": [{"name": "m", "type": "count", "event": "Order Completed", "when": when}]}
    with pytest.raises(AnalysisError) as refused:
        analyze(None, parse(section))  # no warehouse: refused before one is needed
    assert refused.value.where == where


def test_duckdb_and_the_bigquery_emulator_give_the_same_results(stored, tmp_path, bigquery_emulator, dataset_name):
    messages, url = stored
    bigquery_url = f"bigquery://{bigquery_emulator.project}/{dataset_name}"
    case.run_pipeline(tmp_path, messages, bigquery_url, "--bigquery_endpoint", bigquery_emulator.endpoint)
    duck = analyzed(url, cuped=True)
    big = analyzed(bigquery_url, cuped=True, endpoint=bigquery_emulator.endpoint)
    assert big.warnings == duck.warnings and big.experiments == duck.experiments
    same_rows(big.results, duck.results)
    warehouse = open_warehouse(bigquery_url, bigquery_emulator.endpoint)
    try:
        write_results(warehouse, big.results)
        assert warehouse.query(f"SELECT count(*) AS n FROM {warehouse.dialect.table(RESULTS_TABLE)}") == [
            {"n": len(big.results)}]
        # Every order stored twice, as a streaming insert retried after BigQuery forgot its insertId
        # leaves it: the analysis reads each message once. And order_completed_view a table, not the
        # view (an event "Order Completed View" stored first keeps the pipeline from making the view):
        # the analysis does not depend on the view.
        orders = warehouse.dialect.table("order_completed")
        warehouse.query(f"INSERT INTO {orders} SELECT * FROM {orders}")
        view = warehouse.dialect.table("order_completed_view")
        warehouse.query(f"DROP VIEW {view}")
        warehouse.query(f"CREATE TABLE {view} (message_id STRING)")
        same_events_as_the_rules(warehouse, messages)  # every when operator as DuckDB gives it
        assert warehouse.query(f"SELECT count(*) AS n FROM {orders}") == [
            {"n": 2 * sum(1 for m in messages if m["event"] in ("Order Completed",) + case.OTHER_NAMES)}]
    finally:
        warehouse.close()
    same_rows(analyzed(bigquery_url, cuped=True, endpoint=bigquery_emulator.endpoint).results, duck.results)


def test_anonymous_ids_as_the_unit_and_paths_inside_json(tmp_path):
    """unit: anonymous_id: exposures and orders matched by anonymousId, userId ignored. On the same
    small warehouse: a metric's path inside a JSON column is an error naming that column."""
    def track(n, anonymous, event, hours, user=None, **properties):
        message = {"type": "track", "event": event, "anonymousId": anonymous, "messageId": f"a{n}",
                   "timestamp": case._iso(case.T0 + hours * case.HOUR), "properties": properties}
        return {**message, "userId": user} if user else message
    messages = [
        track(1, "anon-1", "Experiment Viewed", 0, experiment_id="x", variation_id="0"),
        track(2, "anon-1", "Order Completed", 1, revenue=10.5, items=[{"price": 10.5}],   # arrays: a JSON column
              deep={"a": {"b": {"c": {"d": {"e": 1}}}}}),  # past flatten_depth 6 from d on: a JSON column
        track(3, "anon-1", "Order Completed", 80, revenue=99.5),       # after the 72 h window
        track(4, "anon-2", "Experiment Viewed", 0, user="known", experiment_id="x", variation_id="1"),
        track(5, "other", "Order Completed", 2, user="known", revenue=7.5),  # same userId, another anonymousId
        track(6, "anon-2", "Order Completed", 3, user="someone", revenue=2.5),
        track(7, "anon-3", "Experiment Viewed", 0, experiment_id="x", variation_id="1"),
    ]
    section = {"unit": "anonymous_id", "metrics": [case.METRICS[2]]}
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(m) for m in messages) + "\n")
    (tmp_path / "sluice.json").write_text(json.dumps({"experiments": section}))
    summary = run(["--input_files", str(tmp_path / "in.jsonl"), "--config", str(tmp_path / "sluice.json"),
                   "--warehouse", f"duckdb:///{tmp_path}/w.duckdb"])
    assert summary["stored"] == len(messages)
    duckdb_backend.close_all()
    warehouse = open_warehouse(f"duckdb:///{tmp_path}/w.duckdb")
    try:
        rows = analyze(warehouse, parse(section)).results
    finally:
        warehouse.close()
    assert [(r["variation_id"], r["units"], r["sum"]) for r in rows] == [("0", 1, 10.5), ("1", 2, 2.5)]
    # A path inside a column stored whole as JSON never gets a column of its own: refused, naming it.
    for metric, key, column in [({"value": "properties.items.0.price"}, "value", "items"),
                                ({"when": {"path": "properties.deep.a.b.c.d.e", "op": "eq", "value": 1}}, "when",
                                 "deep_a_b_c_d")]:
        warehouse = open_warehouse(f"duckdb:///{tmp_path}/w.duckdb")
        try:
            with pytest.raises(AnalysisError) as refused:
                analyze(warehouse, parse({**section, "metrics": [{**case.METRICS[2], **metric}]}))
        finally:
            warehouse.close()
        assert refused.value.where == f"experiments.metrics[0].{key}"
        assert f"inside order_completed.{column}, a column stored whole as JSON" in refused.value.message


@pytest.mark.parametrize("definition, seen, order, control", [
    ({}, {"10", "2", "0"}, ["0", "2", "10"], "0"),                          # numbers by value
    ({}, {"treatment", "control", "1"}, ["1", "control", "treatment"], "1"),  # numbers, then text
    ({"variations": ["b", "a"]}, {"a", "b", "c"}, ["b", "a", "c"], "b"),   # listed first, then the rest
    ({"control": "a", "variations": ["b", "a"]}, {"b"}, ["b", "a"], "a"),  # a control nobody saw keeps its place
    ({"control": "z"}, {"a", "b"}, ["z", "a", "b"], "z"),
])
def test_variation_order_and_control(definition, seen, order, control):
    from analysis.analyze import variation_order
    experiments = parse({"definitions": {"x": definition}})
    assert variation_order(experiments.definitions["x"], seen) == (order, control)
