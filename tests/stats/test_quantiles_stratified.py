"""Quantile differences pinned to scipy.stats.quantile_test; stratified pooling to statsmodels."""

import math

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.meta_analysis import combine_effects

from experiments.stats import (
    MeanStatistic,
    noninferiority,
    quantile_diff,
    quantile_interval,
    stratified,
    welch,
)
from experiments.stats.quantiles import _binom_isf, _binom_ppf


@pytest.mark.parametrize("n,p", [(10, 0.5), (137, 0.99), (1000, 0.9), (25_000, 0.99), (7, 0.3)])
def test_binomial_quantiles_match_scipy(n, p):
    for prob in (0.001, 0.025, 0.05, 0.5, 0.975):
        assert _binom_ppf(prob, n, p) == int(scipy.stats.binom.ppf(prob, n, p))
        assert _binom_isf(prob, n, p) == int(scipy.stats.binom.isf(prob, n, p))


@pytest.mark.parametrize("n,q", [(500, 0.5), (5_000, 0.99), (20_000, 0.95)])
def test_per_arm_interval_matches_scipy_quantile_test(n, q):
    x = np.random.default_rng(n).lognormal(3.0, 0.6, n)
    point, ci, size = quantile_interval(x, q, 0.05)
    ref = scipy.stats.quantile_test(x, q=np.median(x), p=q).confidence_interval(0.95)
    assert size == n
    assert point == pytest.approx(np.quantile(x, q, method="inverted_cdf"), rel=1e-15)
    assert ci == pytest.approx((ref.low, ref.high), rel=1e-15)


def test_quantile_diff_combines_the_sparsity_standard_errors():
    rng = np.random.default_rng(9)
    c, t = rng.lognormal(5.0, 0.5, 20_000), rng.lognormal(5.05, 0.5, 20_000)
    res = quantile_diff(c, t, q=0.99)
    z = scipy.stats.norm.ppf(0.975)

    def se(x):
        # Rank gap of scipy's order-statistic interval (0-based indices as in quantile_test).
        n = x.size
        lo = int(scipy.stats.binom.ppf(0.025, n, 0.99)) - 1
        hi = int(scipy.stats.binom.isf(0.025, n, 0.99))
        xs = np.sort(x)
        return math.sqrt(n * 0.99 * 0.01) * (xs[hi] - xs[lo]) / (hi - lo)

    se_diff = math.hypot(se(c), se(t))
    q_c, q_t = np.quantile(c, 0.99, method="inverted_cdf"), np.quantile(t, 0.99, method="inverted_cdf")
    assert res.diff == pytest.approx(q_t - q_c)
    assert res.se == pytest.approx(se_diff, rel=1e-12)
    assert res.ci == pytest.approx((res.diff - z * se_diff, res.diff + z * se_diff), rel=1e-12)
    assert res.p_value == pytest.approx(2 * scipy.stats.norm.sf(abs(res.diff) / se_diff), rel=1e-9)
    # Sanity against the asymptotic variance with the true lognormal density at ξ_0.99.
    xi = math.exp(5.0 + 0.5 * scipy.stats.norm.ppf(0.99))
    f = scipy.stats.lognorm.pdf(xi, 0.5, scale=math.exp(5.0))
    assert se(c) == pytest.approx(math.sqrt(0.99 * 0.01 / c.size) / f, rel=0.15)
    guard = noninferiority(res, margin=0.01, direction="lower", relative=True)
    assert guard.computable and guard.threshold == pytest.approx(0.01 * res.control_mean)


def test_quantile_diff_undefined_cases():
    assert not quantile_diff([], [1.0, 2.0]).computable
    small = quantile_diff(np.arange(20.0), np.arange(20.0), q=0.99)
    assert not small.computable and "too few units" in small.reason
    ties = quantile_diff(np.ones(5_000), np.ones(5_000), q=0.5)
    assert not ties.computable and ties.p_value is None


def _stratum(seed: int, n_c: int, n_t: int, mu: float, lift: float):
    rng = np.random.default_rng(seed)
    c, t = rng.normal(mu, 2.0, n_c), rng.normal(mu * (1 + lift), 2.5, n_t)
    return c, t, welch(MeanStatistic.from_values(c), MeanStatistic.from_values(t))


def test_population_weighted_stratified_estimate():
    c1, t1, r1 = _stratum(1, 3_000, 3_100, 10.0, 0.02)
    c2, t2, r2 = _stratum(2, 1_000, 900, 6.0, -0.01)
    res = stratified({"content_first": r1, "interest_first": r2})
    w1 = (c1.size + t1.size) / (c1.size + t1.size + c2.size + t2.size)
    w = np.array([w1, 1 - w1])
    d = np.array([t1.mean() - c1.mean(), t2.mean() - c2.mean()])
    var = np.array(
        [
            t1.var(ddof=1) / t1.size + c1.var(ddof=1) / c1.size,
            t2.var(ddof=1) / t2.size + c2.var(ddof=1) / c2.size,
        ]
    )
    assert res.weights == pytest.approx(tuple(w))
    assert res.pooled.diff == pytest.approx(w @ d, rel=1e-12)
    assert res.pooled.se == pytest.approx(math.sqrt(w**2 @ var), rel=1e-12)
    assert res.pooled.p_value == pytest.approx(
        2 * scipy.stats.norm.sf(abs(w @ d) / math.sqrt(w**2 @ var)), rel=1e-9
    )
    mc = w @ [c1.mean(), c2.mean()]
    assert res.pooled.rel_lift == pytest.approx((w @ [t1.mean(), t2.mean()]) / mc - 1, rel=1e-12)
    assert res.strata == ("content_first", "interest_first")


def test_inverse_variance_stratified_estimate_matches_statsmodels_fixed_effect():
    _, _, r1 = _stratum(3, 2_000, 2_000, 10.0, 0.01)
    _, _, r2 = _stratum(4, 500, 500, 10.0, 0.03)
    res = stratified([r1, r2], weighting="inverse_variance")
    ref = combine_effects(np.array([r1.diff, r2.diff]), np.array([r1.se**2, r2.se**2]))
    assert res.pooled.diff == pytest.approx(ref.mean_effect_fe, rel=1e-12)
    assert res.pooled.se == pytest.approx(ref.sd_eff_w_fe, rel=1e-12)


def test_explicit_weights_and_single_stratum():
    _, _, r1 = _stratum(5, 800, 800, 4.0, 0.0)
    _, _, r2 = _stratum(6, 800, 800, 4.0, 0.0)
    res = stratified({"a": r1, "b": r2}, weights={"a": 3, "b": 1})
    assert res.weights == pytest.approx((0.75, 0.25))
    one = stratified([r1]).pooled
    assert one.diff == pytest.approx(r1.diff) and one.se == pytest.approx(r1.se)


def test_stratified_with_an_uncomputable_stratum_is_not_computable():
    _, _, r1 = _stratum(7, 100, 100, 4.0, 0.0)
    empty = welch(MeanStatistic(0, 0.0, 0.0), MeanStatistic.from_values([1.0, 2.0]))
    res = stratified({"a": r1, "b": empty})
    assert not res.pooled.computable and "b (empty arm" in res.pooled.reason
