"""GrowthBook's own stats engine, gbstats 0.8.0, as the reference for the experiment statistics.

gbstats needs numpy<2 and pandas<2, so it has an environment of its own, .emulators/gbstats
(`make gbstats`, from emulators/gbstats-requirements.txt; `make test` installs it; SLUICE_GBSTATS
names another). `reference(cases)` runs one script there by subprocess for a whole list of cases,
JSON in and out: importing gbstats (pandas) takes about a second, so build every case first.
`require_gbstats()` skips the calling test when the environment is missing (make test-fast).

A case is one of:
- an experiment on one metric: {"variations": [moments, ...], "binomial": bool, "cuped": False,
  "weights": None, "alpha": 0.05}. The first variation is control; each moments is a dict of
  analysis.stats.Moments' fields (units, sum, sum_squares; with cuped pre_sum, pre_sum_squares,
  sum_product). Weights default to equal. It goes through gbstats' own entry point,
  `gbstats.gbstats.process_single_metric`, as GrowthBook's back end calls it: a query row per
  variation (users = count = units; main_* the sums, covariate_* the pre-exposure ones),
  statistic_type "mean" ("mean_ra" with cuped), metric type "binomial" (ProportionStatistic) or
  "count" (SampleMeanStatistic, what gbstats uses for counts and means), and two analyses of the
  same rows: the default one (Bayesian, the metric's default flat prior) and the frequentist
  one (TwoSidedTTest); both relative. The answer: {"srm_p_value": ..., "variations": [one per
  treatment, in order: {"lift", "ci_low", "ci_high", "p_value", "error", "chance_to_win", "risk",
  "risk_control", "bayesian_ci_low", "bayesian_ci_high", "bayesian_error"}]}: lift, ci_*,
  p_value and error are the frequentist analysis' expected, ci, pValue and errorMessage; the rest
  the Bayesian's chanceToWin, risk[1] (the treatment's; risk[0] is control's), ci and errorMessage.
  An error is gbstats' message when it returned its default result (ZERO_NEGATIVE_VARIANCE,
  ZERO_NEGATIVE_BASELINE_VARIATION, NO_UNITS_IN_VARIATION), else None. Values are as gbstats
  reports them, its results layer included (e.g. lift 0 for a negative control mean).
- a split: {"units": [...], "weights": [...]}, answered {"srm_p_value": gbstats.utils.check_srm(...)}.
A case on which gbstats raises is answered {"exception": repr(error)}.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GBSTATS_VENV = Path(os.environ.get("SLUICE_GBSTATS", ROOT / ".emulators" / "gbstats"))
GBSTATS_PYTHON = GBSTATS_VENV / "bin" / "python"

_SCRIPT = r'''
import json, sys
from dataclasses import asdict
from gbstats.gbstats import process_single_metric
from gbstats.models.settings import AnalysisSettingsForStatsEngine, MetricSettingsForStatsEngine
from gbstats.utils import check_srm


def row(variation_id, moments):
    sum_squares = moments.get("sum_squares")
    return {"dimension": "All", "variation": variation_id, "users": moments["units"], "count": moments["units"],
            "main_sum": moments["sum"], "main_sum_squares": moments["sum"] if sum_squares is None else sum_squares,
            "covariate_sum": moments.get("pre_sum") or 0, "covariate_sum_squares": moments.get("pre_sum_squares") or 0,
            "main_covariate_sum_product": moments.get("sum_product") or 0}


def experiments(cases):
    """Cases of the same shape in one gbstats call, each its own dimension: pandas' overhead is per call."""
    first = cases[0]
    count = len(first["variations"])
    ids = [str(i) for i in range(count)]
    metric_type = "binomial" if first["binomial"] else "count"
    cuped = first.get("cuped", False)
    metric = MetricSettingsForStatsEngine(
        id="m", name="m", statistic_type="mean_ra" if cuped else "mean", main_metric_type=metric_type,
        covariate_metric_type=metric_type if cuped else None)
    common = dict(var_names=ids, var_ids=ids, weights=first.get("weights") or [1 / count] * count,
                  alpha=first.get("alpha", 0.05), max_dimensions=len(cases))  # no "(other)" dimension
    analyses = [AnalysisSettingsForStatsEngine(**common),  # the default engine: Bayesian
                AnalysisSettingsForStatsEngine(**common, stats_engine="frequentist")]
    rows = [dict(row(i, m), dimension=str(n)) for n, case in enumerate(cases) for i, m in zip(ids, case["variations"])]
    result = asdict(process_single_metric(rows, metric, analyses))
    bayesian, frequentist = ({d["dimension"]: d for d in analysis["dimensions"]} for analysis in result["analyses"])
    answers = []
    for n in range(len(cases)):
        treatments = []
        for b, f in zip(bayesian[str(n)]["variations"][1:], frequentist[str(n)]["variations"][1:]):
            treatments.append({
                "lift": f["expected"], "ci_low": f["ci"][0], "ci_high": f["ci"][1], "p_value": f["pValue"],
                "error": f["errorMessage"], "chance_to_win": b["chanceToWin"], "risk": b["risk"][1],
                "risk_control": b["risk"][0], "bayesian_ci_low": b["ci"][0], "bayesian_ci_high": b["ci"][1],
                "bayesian_error": b["errorMessage"]})
        answers.append({"srm_p_value": frequentist[str(n)]["srm"], "variations": treatments})
    return answers


def answer_all(cases):
    answers = [None] * len(cases)
    groups = {}
    for n, case in enumerate(cases):
        if "variations" in case:
            shape = (len(case["variations"]), case["binomial"], case.get("cuped", False),
                     tuple(case.get("weights") or ()), case.get("alpha", 0.05))
            groups.setdefault(shape, []).append(n)
        else:
            try:
                answers[n] = {"srm_p_value": check_srm(case["units"], case["weights"])}
            except Exception as error:
                answers[n] = {"exception": repr(error)}

    def run(members):
        try:
            for n, answer in zip(members, experiments([cases[n] for n in members])):
                answers[n] = answer
        except Exception as error:  # a case failed the group's call: halves, to tell which
            if len(members) == 1:
                answers[members[0]] = {"exception": repr(error)}  # the caller decides what that means
            else:
                run(members[:len(members) // 2])
                run(members[len(members) // 2:])

    for members in groups.values():
        run(members)
    return answers


json.dump(answer_all(json.load(sys.stdin)), sys.stdout, default=float)
'''


class GbstatsMissing(RuntimeError):
    pass


def available() -> bool:
    return GBSTATS_PYTHON.exists()


def require_gbstats() -> None:
    """Skip the calling test when gbstats' environment is missing (make test installs it)."""
    if not available():
        pytest.skip(f"gbstats reference missing ({GBSTATS_VENV}): make gbstats")


def reference(cases: list[dict]) -> list[dict]:
    """gbstats' answers to `cases` (see the module's docstring), one subprocess for all of them."""
    if not available():
        raise GbstatsMissing(f"no gbstats environment at {GBSTATS_VENV}: make gbstats")
    done = subprocess.run([str(GBSTATS_PYTHON), "-c", _SCRIPT], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=300)  # a hang guard: a few hundred cases take seconds
    if done.returncode:
        raise RuntimeError(f"gbstats reference failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)
