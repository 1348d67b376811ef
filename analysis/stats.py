"""Experiment statistics from sufficient statistics, as GrowthBook's stats engine (gbstats 0.8.0) computes them.

A variation's metric arrives as its `Moments` (units, sum, sum of squares; with CUPED the same sums
of the metric before exposure and the sum of products), one warehouse row; nothing here sees a unit.
`compare` puts a treatment against control:

- `lift`: relative, (mean_t - mean_c) / mean_c; with CUPED the means are the adjusted ones and the
  divisor the control's unadjusted mean (gbstats' `frequentist_diff`).
- `ci_low`, `ci_high`, `p_value`: gbstats' `TwoSidedTTest` with `difference_type="relative"`:
  Welch's t-test, the relative lift's variance by the delta method, Welch-Satterthwaite degrees of
  freedom, a 1 - alpha interval.
- `chance_to_win`, `risk`: gbstats' default engine, Bayesian (`AnalysisSettingsForStatsEngine`'s
  `stats_engine="bayesian"`): `EffectBayesianABTest` with the metric defaults (`prior_proper=False`,
  so the flat prior leaves the posterior of the relative lift normal with the data's mean and
  variance). `chance_to_win` is P(lift > 0); `risk` is the treatment's risk as gbstats reports it,
  relative: the expected relative loss from choosing the treatment, -P(lift < 0) * E[lift | lift < 0]
  (gbstats' `risk[1]`; `risk[0]` is the control's).
- CUPED: gbstats' `RegressionAdjustedStatistic` with one theta for both variations, the pooled
  covariance of the metric with its pre-exposure value over the pooled pre-exposure variance
  (`compute_theta`); theta is 0, so no adjustment, when either pooled variance is 0. A binomial
  metric's pre and post values are both proportions (gbstats builds a `ProportionStatistic` for
  each: variance p(1 - p)), its `sum_product` the units that converted both before and after.

Where gbstats gives up it returns a "default" result (interval [0, 0], p-value 1, chance to win
0.5, risk 0, an error message); these functions return None for those fields instead:
- a variation's variance is 0 or negative (0 or 1 unit, no conversions, all converted, every value
  equal): `lift` is still the point estimate (gbstats' results layer reports it too), the rest None;
- the control's mean is 0, or negative (gbstats computes the tests for a negative control mean but
  reports its lift as 0, and its chance to win would then count a more negative treatment as the
  winner): everything None;
- a variation without units: everything None (gbstats' results layer would report a lift of -100%
  for an empty treatment, its mean being 0).
"""
import math
from typing import NamedTuple, Optional, Sequence

from scipy.stats import chi2, norm, t

SRM_THRESHOLD = 0.001  # below this the split is reported as a sample-ratio mismatch
ALPHA = 0.05  # 95% intervals, as GrowthBook's default


class Moments(NamedTuple):
    """One variation, one metric: sums over its units (units without events count as 0).

    Binomial metrics: `sum` is the units that converted; `sum_squares` (and `pre_sum_squares`) are
    not read, a 0/1 value being its own square. The pre_* fields and `sum_product` are the CUPED
    covariate, the same metric over the lookback before each unit's exposure: sum, sum of squares,
    and the sum over units of (value after) * (value before)."""
    units: int
    sum: float
    sum_squares: float
    pre_sum: Optional[float] = None
    pre_sum_squares: Optional[float] = None
    sum_product: Optional[float] = None


class Comparison(NamedTuple):
    """Treatment against control; None where undefined (see the module's docstring)."""
    lift: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    p_value: Optional[float]
    chance_to_win: Optional[float]
    risk: Optional[float]


class _Adjusted(NamedTuple):
    """A variation as the tests see it: gbstats' statistic after CUPED (theta 0: the plain one)."""
    units: int
    mean: float
    unadjusted_mean: float
    variance: float


def _mean(total: float, units: int) -> float:
    return 0.0 if units == 0 else total / units


def _variance(units: int, total: float, sum_squares: Optional[float], binomial: bool) -> float:
    """gbstats' ProportionStatistic.variance (p(1 - p)) or SampleMeanStatistic.variance (n - 1)."""
    if binomial:
        mean = _mean(total, units)
        return mean * (1 - mean)
    if units <= 1:
        return 0.0
    # the operations in gbstats' order, so that near-zero variances round as theirs do
    return (sum_squares - pow(total, 2) / units) / (units - 1)


def _covariance(units: int, sum_product: float, total: float, pre_total: float) -> float:
    if units <= 1:
        return 0.0
    return (sum_product - total * pre_total / units) / (units - 1)


def _theta(control: Moments, treatment: Moments, binomial: bool) -> float:
    """gbstats' compute_theta: the regression slope of the metric on its pre-exposure value, pooled."""
    units = control.units + treatment.units
    post_sum = control.sum + treatment.sum
    pre_sum = control.pre_sum + treatment.pre_sum
    post_variance = _variance(units, post_sum, None if binomial else control.sum_squares + treatment.sum_squares,
                              binomial)
    pre_variance = _variance(units, pre_sum, None if binomial else control.pre_sum_squares + treatment.pre_sum_squares,
                             binomial)
    if pre_variance == 0 or post_variance == 0:
        return 0.0
    return _covariance(units, control.sum_product + treatment.sum_product, post_sum, pre_sum) / pre_variance


def _adjusted(moments: Moments, binomial: bool, theta: float) -> _Adjusted:
    units = moments.units
    mean = _mean(moments.sum, units)
    variance = _variance(units, moments.sum, moments.sum_squares, binomial)
    if theta == 0:
        return _Adjusted(units, mean, mean, variance)
    pre_variance = _variance(units, moments.pre_sum, moments.pre_sum_squares, binomial)
    covariance = _covariance(units, moments.sum_product, moments.sum, moments.pre_sum)
    adjusted_variance = 0.0 if units <= 1 else variance + pow(theta, 2) * pre_variance - 2 * theta * covariance
    return _Adjusted(units, mean - theta * _mean(moments.pre_sum, units), mean, adjusted_variance)


def _check_covariate(moments: Moments, name: str) -> None:
    missing = [field for field in ("pre_sum", "pre_sum_squares", "sum_product") if getattr(moments, field) is None]
    if missing:
        raise ValueError(f"cuped needs the {name}'s {', '.join(missing)}")


def _treatment_risk(mean: float, stddev: float) -> float:
    """-P(X < 0) * E[X | X < 0] for X ~ N(mean, stddev): gbstats' risk[1], which takes E[X | X < 0]
    from scipy's truncnorm; here in closed form, P(X < 0) * E[X | X < 0] = mean * Phi(-z) - stddev * phi(z)."""
    z = mean / stddev
    return stddev * norm.pdf(z) - mean * norm.cdf(-z)


def compare(control: Moments, treatment: Moments, binomial: bool, cuped: bool = False,
            alpha: float = ALPHA) -> Comparison:
    """The treatment's relative lift over control with its 1 - alpha interval and two-sided p-value
    (gbstats' TwoSidedTTest), and its chance to win and relative risk (gbstats' EffectBayesianABTest
    with its default flat prior). `binomial`: a conversion metric (proportions); otherwise a count or
    a mean per unit. `cuped`: adjust by the pre-exposure covariate (the pre_* fields must be set)."""
    theta = 0.0
    if cuped:
        _check_covariate(control, "control")
        _check_covariate(treatment, "treatment")
        theta = _theta(control, treatment, binomial)
    a = _adjusted(control, binomial, theta)
    b = _adjusted(treatment, binomial, theta)
    if a.units == 0 or b.units == 0 or a.unadjusted_mean <= 0:
        return Comparison(None, None, None, None, None, None)
    lift = (b.mean - a.mean) / a.unadjusted_mean
    if a.mean == 0 or a.variance <= 0 or b.variance <= 0:
        return Comparison(lift, None, None, None, None, None)
    try:
        # gbstats' frequentist_variance, relative: the delta method around the unadjusted means
        variance = (b.variance / (pow(a.unadjusted_mean, 2) * b.units)
                    + a.variance * pow(b.unadjusted_mean, 2) / (pow(a.unadjusted_mean, 4) * a.units))
        dof = pow(b.variance / b.units + a.variance / a.units, 2) / (
            pow(b.variance, 2) / (pow(b.units, 2) * (b.units - 1))
            + pow(a.variance, 2) / (pow(a.units, 2) * (a.units - 1)))
    except (ZeroDivisionError, OverflowError):
        variance = dof = math.nan
    if not (0 < variance < math.inf and 0 < dof < math.inf):
        # means or variances beyond float's range once squared or raised to the 4th power (1e-80,
        # 1e80): gbstats raises ZeroDivisionError or returns infinities there
        return Comparison(lift, None, None, None, None, None)
    stddev = math.sqrt(variance)
    half_width = float(t.ppf(1 - alpha / 2, dof)) * stddev
    p_value = 2 * float(t.sf(abs(lift) / stddev, dof))
    chance_to_win = float(norm.sf(0, lift, stddev))
    return Comparison(lift, lift - half_width, lift + half_width, p_value, chance_to_win,
                      float(_treatment_risk(lift, stddev)))


def srm_p_value(units: Sequence[int], weights: Sequence[float]) -> float:
    """Sample-ratio mismatch: the chi-squared test's p-value of the units per variation against the
    expected split (gbstats' check_srm). A variation of weight 0 or less is left out of the statistic,
    not of the degrees of freedom (as gbstats). 1 when there are no units, or a single variation
    (gbstats returns NaN there: chi-squared with 0 degrees of freedom)."""
    if len(units) != len(weights):
        raise ValueError(f"srm_p_value: {len(units)} variations but {len(weights)} weights")
    total_units = sum(units)
    if not total_units or len(units) < 2:
        return 1.0
    total_weight = sum(weights)
    statistic = 0.0
    for observed, weight in zip(units, weights):
        if weight <= 0:
            continue
        expected = weight / total_weight * total_units
        statistic += (observed - expected) ** 2 / expected
    return float(chi2.sf(statistic, len(units) - 1))
