"""analysis.stats against GrowthBook's own stats engine (gbstats 0.8.0, tests/experiments/gbstats_reference.py)
to 1e-6, and against simulations that know neither code: A/A p-values uniform, a known lift covered."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import kstest

from analysis.stats import SRM_THRESHOLD, Comparison, Moments, compare, srm_p_value
from tests.experiments.gbstats_reference import reference, require_gbstats

TOLERANCE = 1e-6
FIGURES = ("lift", "ci_low", "ci_high", "p_value", "chance_to_win", "risk")


def moments(post: np.ndarray, pre: np.ndarray) -> Moments:
    return Moments(len(post), float(post.sum()), float((post * post).sum()),
                   float(pre.sum()), float((pre * pre).sum()), float((post * pre).sum()))


def mostly(draw, usual, rare):
    """One draw in six from `rare`: edge cases (a single unit, nobody converted) without crowding out
    the cases gbstats computes."""
    return draw(rare if draw(st.integers(0, 5)) == 5 else usual)


@st.composite
def variation_values(draw, rng: np.random.Generator, binomial: bool):
    """One variation's units: the metric after exposure and its pre-exposure covariate."""
    units = mostly(draw, st.integers(7, 3000), st.integers(0, 6))
    sticky = draw(st.floats(0, 1))  # how much the covariate follows the metric
    if binomial:
        rate = mostly(draw, st.floats(0.01, 0.99), st.floats(0, 1))
        post = (rng.random(units) < rate).astype(float)
        pre = np.where(rng.random(units) < sticky, post, rng.random(units) < draw(st.floats(0, 1))).astype(float)
        return post, pre
    kind = draw(st.sampled_from(["normal", "poisson", "revenue"] * 3 + ["constant"]))
    level = draw(st.floats(-2, 50))  # a negative mean too: refunds
    spread = draw(st.floats(0, 30))
    if kind == "normal":
        post = rng.normal(level, spread, units)
    elif kind == "poisson":
        post = rng.poisson(abs(level), units).astype(float)
    elif kind == "revenue":  # most units spend nothing
        post = np.where(rng.random(units) < 0.1, rng.lognormal(math.log1p(abs(level)), 1, units), 0.0)
    else:
        post = np.full(units, level)
    pre = sticky * post + rng.normal(0, 1 + spread, units) if draw(st.booleans()) else np.full(units, 3.0)
    return post, pre


@st.composite
def experiments(draw):
    binomial, cuped = draw(st.booleans()), draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    count = draw(st.sampled_from([2, 2, 2, 3]))
    variations = [moments(*draw(variation_values(rng, binomial))) for _ in range(count)]
    return {"variations": variations, "binomial": binomial, "cuped": cuped}


def ours(case: dict) -> list[Comparison]:
    control, *treatments = case["variations"]
    return [compare(control, treatment, case["binomial"], case["cuped"]) for treatment in treatments]


def as_reference_case(case: dict) -> dict:
    return dict(case, variations=[m._asdict() for m in case["variations"]])


def differences(case: dict, mine: Comparison, theirs: dict) -> list[tuple[str, object, object]]:
    """The figures where ours disagrees with gbstats', by the rules in analysis.stats' docstring."""
    control = case["variations"][0]
    if control.units and control.sum / control.units < 0:
        # gbstats computes the tests but reports the lift as 0: ours are all undefined
        return [(name, value, None) for name, value in zip(FIGURES, mine) if value is not None]
    if "exception" in theirs:  # gbstats fails (a mean of 1e-100: its 4th power is 0); ours is undefined
        return [(name, value, theirs["exception"]) for name, value in zip(FIGURES[1:], mine[1:]) if value is not None]
    expected = dict(theirs)
    if theirs["error"]:  # gbstats' default result: ours None but the lift, where there is one
        expected.update(dict.fromkeys(FIGURES[1:]))
        if mine.lift is None:
            expected["lift"] = None
    found = []
    for name, value in zip(FIGURES, mine):
        want = expected[name]
        if (value is None) != (want is None) or (value is not None and abs(value - want) > tolerance(want)):
            found.append((name, value, want))
    return found


def tolerance(value: float) -> float:
    """1e-6, or float's own precision for a figure beyond a million (a lift of 1e9 over a control mean of 1e-9)."""
    return max(TOLERANCE, 1e-12 * abs(value))


def binomial(units, conversions):
    return Moments(units, conversions, conversions)


def values(*unit_values, pre=None):
    post = np.array(unit_values, dtype=float)
    return moments(post, np.array(pre, dtype=float) if pre is not None else np.zeros(len(post)))


EDGE_CASES = {
    "no variance: everyone converted": (binomial(100, 100), binomial(120, 120), True, False),
    "no variance in the treatment only": (binomial(100, 30), binomial(120, 0), True, False),
    "every value equal": (values(5, 5, 5, 5), values(7, 7, 7), False, False),
    "control mean zero": (binomial(1000, 0), binomial(1000, 12), True, False),
    "control mean zero, values vary": (values(-1, 1, -2, 2), values(1, 2, 3), False, False),
    "control without units": (binomial(0, 0), binomial(50, 10), True, False),
    "treatment without units": (binomial(50, 10), binomial(0, 0), True, False),
    "treatment with one unit": (values(1, 2, 3, 4), values(9), False, False),
    "control with one unit": (values(3), values(1, 2, 3, 4), False, False),
    "negative control mean": (values(-5, -3, -4, -1), values(-1, -2, 0, -2), False, False),
    "negative treatment mean": (values(5, 3, 4, 1), values(-1, -2, 0, 3), False, False),
    "cuped, constant covariate": (values(1, 4, 2, 8, pre=[3] * 4), values(2, 5, 9, pre=[3] * 3), False, True),
    "cuped, covariate equals the metric": (values(1, 4, 2, 8, pre=[1, 4, 2, 8]), values(2, 5, 9, pre=[2, 5, 9]),
                                           False, True),
    "cuped, one unit each": (values(1, pre=[2]), values(3, pre=[1]), False, True),
    "cuped binomial": (Moments(500, 100, 100, 80, 80, 60), Moments(500, 130, 130, 85, 85, 70), True, True),
}
SPLITS = [([1000, 1100], [0.5, 0.5]), ([5000, 5400, 4600], [1, 1, 1]), ([900, 2100], [0.3, 0.7]),
          ([10, 0], [0.5, 0.5]), ([0, 0], [0.5, 0.5]), ([100, 90, 50], [0.5, 0.5, 0]), ([3, 4], [0, 0])]


def drawn(strategy, count: int) -> list:
    """`count` examples of a hypothesis strategy, drawn before any is checked: gbstats answers them all in one
    process. A failure names its case (no shrinking: the case is there to read)."""
    examples = []

    @settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(strategy)
    def collect(example):
        examples.append(example)

    collect()
    return examples


SPLIT_STRATEGY = st.integers(2, 5).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 200_000), min_size=n, max_size=n),
    st.lists(st.one_of(st.just(0.0), st.floats(0.01, 100)), min_size=n, max_size=n)))


@pytest.fixture(scope="module")
def gbstats():
    """gbstats' answers for every case of this module, from one process (importing pandas takes seconds)."""
    require_gbstats()
    generated = drawn(experiments(), 150)
    edges = [{"variations": [control, treatment], "binomial": is_binomial, "cuped": cuped}
             for control, treatment, is_binomial, cuped in EDGE_CASES.values()]
    splits = SPLITS + drawn(SPLIT_STRATEGY, 100)
    answers = iter(reference([as_reference_case(case) for case in generated + edges]
                             + [{"units": units, "weights": weights} for units, weights in splits]))
    return {"generated": [(case, next(answers)) for case in generated],
            "edges": {name: next(answers) for name in EDGE_CASES},
            "splits": [(split, next(answers)) for split in splits]}


def test_generated_sums_agree_with_gbstats(gbstats):
    pairs, failures = [], []
    for case, answer in gbstats["generated"]:
        # gbstats raising answers the whole case: each treatment is held to that answer
        for mine, theirs in zip(ours(case), answer.get("variations") or [answer] * (len(case["variations"]) - 1)):
            pairs.append((mine, theirs))
            if found := differences(case, mine, theirs):
                failures.append(f"{found} in {case}")
    assert not failures, f"{len(failures)} of {len(pairs)} differ from gbstats, e.g.\n" + "\n".join(failures[:5])
    computed = sum(1 for _, theirs in pairs if theirs.get("error", "exception") is None)
    assert computed > len(pairs) / 3, "the generator should give many cases gbstats computes"


@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_cases_follow_gbstats(name, gbstats):
    control, treatment, is_binomial, cuped = EDGE_CASES[name]
    mine = compare(control, treatment, is_binomial, cuped)
    case = {"variations": [control, treatment], "binomial": is_binomial, "cuped": cuped}
    assert not differences(case, mine, gbstats["edges"][name]["variations"][0])


def test_edge_cases_are_undefined_as_documented():
    """What each edge gives, so that a change of rule shows here and in the docs."""
    def figures(name):
        return compare(*EDGE_CASES[name])

    for name in ("no variance: everyone converted", "no variance in the treatment only", "every value equal",
                 "treatment with one unit", "control with one unit", "cuped, one unit each"):
        result = figures(name)
        assert result.lift is not None and result[1:] == (None,) * 5, name
    assert figures("no variance in the treatment only").lift == pytest.approx(-1)
    for name in ("control mean zero", "control mean zero, values vary", "control without units",
                 "treatment without units", "negative control mean"):
        assert figures(name) == Comparison(None, None, None, None, None, None), name
    assert None not in figures("negative treatment mean")
    # a constant covariate is no covariate: gbstats falls back to the plain test (theta 0)
    control, treatment, is_binomial, _ = EDGE_CASES["cuped, constant covariate"]
    assert compare(control, treatment, is_binomial, cuped=True) == compare(control, treatment, is_binomial)


def test_cuped_needs_the_covariate():
    with pytest.raises(ValueError, match="control's pre_sum"):
        compare(binomial(10, 3), Moments(10, 4, 4, 1, 1, 1), True, cuped=True)


def test_srm_agrees_with_gbstats(gbstats):
    for (units, weights), answer in gbstats["splits"]:
        assert srm_p_value(units, weights) == pytest.approx(answer["srm_p_value"], abs=TOLERANCE), (units, weights)
    assert srm_p_value([1000, 1100], [0.5, 0.5]) > SRM_THRESHOLD > srm_p_value([1000, 1200], [0.5, 0.5])


def test_one_variation_has_no_mismatch():
    # gbstats' check_srm gives NaN here (chi-squared with 0 degrees of freedom)
    assert srm_p_value([100], [1]) == 1.0
    with pytest.raises(ValueError):
        srm_p_value([100, 100], [1])


# Simulations that know neither analysis.stats nor gbstats: what the figures must mean.

def test_a_a_p_values_and_chances_to_win_are_uniform():
    """No effect: a 5% test rejects about 5% of the time, and chance to win is as likely low as high."""
    rng = np.random.default_rng(18)
    results = []
    for round_ in range(400):
        if round_ % 2:
            control, treatment = (binomial(1000, int((rng.random(1000) < 0.1).sum())) for _ in range(2))
            results.append(compare(control, treatment, True))
        else:  # a skewed value per unit, as revenue
            control, treatment = (moments(rng.exponential(10, 1000), np.zeros(1000)) for _ in range(2))
            results.append(compare(control, treatment, False))
    p_values = [result.p_value for result in results]
    assert kstest(p_values, "uniform").pvalue > 0.01
    assert kstest([result.chance_to_win for result in results], "uniform").pvalue > 0.01
    assert 0.02 < np.mean(np.array(p_values) < 0.05) < 0.09


def test_a_known_lift_is_covered_and_cuped_narrows_its_interval():
    """Revenue 20% higher under treatment: the 95% interval covers 0.2 about 95% of the time with and
    without CUPED; CUPED, with a covariate that explains most of a unit's spend, gives narrower intervals."""
    rng = np.random.default_rng(7)
    covered = {False: 0, True: 0}
    widths = {False: [], True: []}
    rounds = 300
    for _ in range(rounds):
        arms = []
        for lift in (0.0, 0.2):
            propensity = rng.gamma(2, 5, 2000)  # a unit's usual spend: before and after exposure
            arms.append(moments((1 + lift) * propensity + rng.normal(0, 3, 2000),
                                propensity + rng.normal(0, 3, 2000)))
        for cuped in (False, True):
            result = compare(*arms, binomial=False, cuped=cuped)
            covered[cuped] += result.ci_low <= 0.2 <= result.ci_high
            widths[cuped].append(result.ci_high - result.ci_low)
            assert result.chance_to_win > 0.99 and result.risk < 1e-3
    assert 0.92 <= covered[False] / rounds <= 0.98 and 0.92 <= covered[True] / rounds <= 0.98, covered
    assert np.median(widths[True]) < 0.6 * np.median(widths[False])
