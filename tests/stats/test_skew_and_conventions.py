"""Kohavi et al. (2014) skew rule, and the three conventions of DESIGN.md (issue #16, items 3, 5).

Conventions, each pinned to an independent reference:
1. the relative-lift CI is the delta-method interval with the NORMAL quantile;
2. the CUPED relative lift is the CUPED-adjusted difference over the UNADJUSTED control mean,
   with a delta-method SE that includes the pooled covariate mean's uncertainty;
3. both arms with zero variance: SE = 0, p and CI not computable.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from experiments.stats import (
    CovariateMeanStatistic,
    CovariateRatioStatistic,
    MeanStatistic,
    RatioStatistic,
    cuped,
    cuped_ratio,
    ratio_delta,
    skew_rule,
    skew_rule_arms,
    welch,
    ztest,
)

Z975 = scipy.stats.norm.ppf(0.975)


# -- the skew rule ------------------------------------------------------------------------------
def test_skew_rule_is_n_greater_than_355_s_squared() -> None:
    # Kohavi, Deng, Longbotham & Xu (KDD 2014), rule 7: n > 355·s²; s = 2 → n > 1420.
    assert tuple(skew_rule(2.0, 1420)) == (1421, 1420, False)
    assert tuple(skew_rule(2.0, 1421)) == (1421, 1421, True)
    assert skew_rule(-2.0, 10).need == 1421  # the sign does not matter
    assert skew_rule(2.0, 1420).message == "too few units for a skewed metric: need 1421, have 1420"
    assert skew_rule(2.0, 5000).message == ""
    unknown = skew_rule(None, 3)
    assert unknown.holds and not unknown.known and unknown.need == 0
    both = skew_rule_arms((1.0, 10_000), (3.0, 400))
    assert (both.arm, both.need, both.have, both.holds) == ("treatment", 3196, 400, False)
    assert skew_rule_arms((1.0, 10_000), (0.5, 10_000)).holds


def test_the_rule_bites_on_a_zero_inflated_lognormal_at_ramp_sizes() -> None:
    # The A/A case: 1/99 split, 40 and 400 treated units of a zero-inflated lognormal.
    rng = np.random.default_rng(11)

    def draw(n: int) -> np.ndarray:
        return np.where(rng.random(n) < 0.9, 0.0, rng.lognormal(0.0, 1.5, n))

    for treated in (40, 400):
        c, t = MeanStatistic.from_values(draw(99 * treated)), MeanStatistic.from_values(draw(treated))
        rule = skew_rule_arms((c.skewness, c.n), (t.skewness, t.n))
        assert not rule.holds and rule.arm == "treatment"


# -- convention 1: relative-lift CI with the normal quantile --------------------------------------
@pytest.mark.parametrize("test", [welch, ztest])
def test_relative_lift_ci_uses_the_normal_quantile(test) -> None:
    rng = np.random.default_rng(1)
    c, t = rng.normal(10, 3, 25), rng.normal(11, 4, 30)  # small: t and normal quantiles differ
    res = test(MeanStatistic.from_values(c), MeanStatistic.from_values(t))
    # statsmodels' delta method (independent code): NonlinearDeltaCov-free, by hand from DescrStatsW.
    dc, dt_ = DescrStatsW(c), DescrStatsW(t)
    vc, vt = dc.var_ddof(1) / c.size, dt_.var_ddof(1) / t.size  # type: ignore[attr-defined]
    mc, mt = dc.mean, dt_.mean
    se = math.sqrt(vt / mc**2 + mt**2 * vc / mc**4)
    lift = mt / mc - 1
    assert res.rel_lift_ci == pytest.approx((lift - Z975 * se, lift + Z975 * se), rel=1e-9)
    # The difference's CI keeps the test's own quantile (Welch: t with Welch–Satterthwaite df).
    if test is welch:
        ref = CompareMeans(dt_, dc).tconfint_diff(alpha=0.05, usevar="unequal")
        assert res.ci == pytest.approx(ref, rel=1e-9)


def test_ratio_relative_lift_ci_uses_the_normal_quantile() -> None:
    rng = np.random.default_rng(2)
    den_c, den_t = rng.poisson(20, 300) + 1.0, rng.poisson(20, 300) + 1.0
    num_c, num_t = rng.binomial(den_c.astype(int), 0.1) * 1.0, rng.binomial(den_t.astype(int), 0.12) * 1.0
    res = ratio_delta(RatioStatistic.from_values(num_c, den_c), RatioStatistic.from_values(num_t, den_t))
    assert res.rel_lift_ci[1] - res.rel_lift == pytest.approx(Z975 * res.rel_lift_se, rel=1e-12)


# -- convention 2: CUPED relative lift over the unadjusted control mean ---------------------------
def _delta_se(g, means: np.ndarray, cov: np.ndarray, h: float = 1e-6) -> float:
    """√(∇gᵀ Σ ∇g) with ∇g by central finite differences (independent of the closed form)."""
    grad = np.zeros(means.size)
    for i in range(means.size):
        e = np.zeros(means.size)
        e[i] = h * max(1.0, abs(means[i]))
        grad[i] = (g(means + e) - g(means - e)) / (2 * e[i])
    return math.sqrt(grad @ cov @ grad)


def test_cuped_relative_lift_over_the_unadjusted_control_mean() -> None:
    rng = np.random.default_rng(5)
    nc, nt = 800, 600
    xc, xt = rng.normal(10, 2, nc), rng.normal(10, 2, nt)
    yc = 0.8 * xc + rng.normal(2, 1, nc)
    yt = 0.8 * xt + rng.normal(2.3, 1, nt)
    res = cuped(CovariateMeanStatistic.from_values(yc, xc), CovariateMeanStatistic.from_values(yt, xt))
    theta = res.theta
    # θ as the pooled regression slope (numpy), treated as fixed (asymptotically exact).
    pooled_x, pooled_y = np.r_[xc, xt], np.r_[yc, yt]
    assert theta == pytest.approx(np.cov(pooled_x, pooled_y)[0, 1] / np.var(pooled_x, ddof=1), rel=1e-10)

    def lift(m: np.ndarray) -> float:
        y_c, x_c, y_t, x_t = m
        x_pool = (nc * x_c + nt * x_t) / (nc + nt)  # the pooled covariate mean, explicitly
        adj_c = y_c - theta * (x_c - x_pool)
        adj_t = y_t - theta * (x_t - x_pool)
        return (adj_t - adj_c) / y_c  # over the UNADJUSTED control mean

    means = np.array([yc.mean(), xc.mean(), yt.mean(), xt.mean()])
    cov = np.zeros((4, 4))
    cov[:2, :2] = np.cov(yc, xc, ddof=1) / nc
    cov[2:, 2:] = np.cov(yt, xt, ddof=1) / nt
    se = _delta_se(lift, means, cov)
    assert res.rel_lift == pytest.approx(lift(means), rel=1e-10)
    assert res.rel_lift == pytest.approx(res.diff / yc.mean(), rel=1e-12)
    assert res.control_mean == pytest.approx(yc.mean(), rel=1e-12)  # reported unadjusted
    assert res.rel_lift_se == pytest.approx(se, rel=1e-5)
    assert res.rel_lift_ci == pytest.approx((res.rel_lift - Z975 * se, res.rel_lift + Z975 * se), rel=1e-5)


def test_cuped_ratio_relative_lift_over_the_unadjusted_control_ratio() -> None:
    rng = np.random.default_rng(6)
    n = 700

    def arm(p: float) -> tuple[np.ndarray, ...]:
        pre_den = rng.poisson(30, n) + 1.0
        den = pre_den + rng.poisson(3, n)
        rate = rng.beta(2, 18, n)
        return (
            rng.binomial(den.astype(int), np.minimum(rate * p, 1)) * 1.0,
            den,
            rng.binomial(pre_den.astype(int), rate) * 1.0,
            pre_den,
        )

    c, t = arm(1.0), arm(1.1)
    res = cuped_ratio(CovariateRatioStatistic.from_values(*c), CovariateRatioStatistic.from_values(*t))
    theta = res.theta

    def lift(m: np.ndarray) -> float:
        rc, rxc = m[0] / m[1], m[2] / m[3]
        rt, rxt = m[4] / m[5], m[6] / m[7]
        return ((rt - theta * rxt) - (rc - theta * rxc)) / rc

    means = np.array([v.mean() for v in (*c, *t)])
    cov = np.zeros((8, 8))
    cov[:4, :4] = np.cov(np.vstack(c), ddof=1) / n
    cov[4:, 4:] = np.cov(np.vstack(t), ddof=1) / n
    assert res.rel_lift == pytest.approx(lift(means), rel=1e-9)
    assert res.rel_lift_se == pytest.approx(_delta_se(lift, means, cov), rel=1e-5)


# -- convention 3: both arms without variance ----------------------------------------------------
@pytest.mark.parametrize("test", [welch, ztest])
def test_both_arms_without_variance_have_se_zero_and_no_p_or_ci(test) -> None:
    res = test(MeanStatistic.from_values(np.full(50, 3.0)), MeanStatistic.from_values(np.full(40, 4.0)))
    assert res.se == 0.0
    assert res.p_value is None and res.ci is None and res.rel_lift_ci is None
    assert not res.computable and "zero variance" in res.reason
    assert res.diff == pytest.approx(1.0)
    # At an offset where raw sums would have invented a variance (or lost one), the same.
    big = test(
        MeanStatistic.from_values(np.full(50, 1e10 + 3)), MeanStatistic.from_values(np.full(40, 1e10 + 4))
    )
    assert big.se == 0.0 and big.p_value is None and not big.computable
    one = test(
        MeanStatistic.from_values(np.full(50, 3.0)), MeanStatistic.from_values(np.r_[np.full(39, 4.0), 5.0])
    )
    assert one.computable and one.se > 0  # one arm with variance is a valid test


def test_stratified_cuped_relative_lift_is_over_the_pooled_unadjusted_control_mean() -> None:
    from experiments.stats import stratified

    rng = np.random.default_rng(8)
    strata, means, blocks = {}, [], []
    for name, (n, mu) in {"a": (500, 10.0), "b": (300, 20.0)}.items():
        xc, xt = rng.normal(mu, 2, n), rng.normal(mu, 2, n)
        yc, yt = 0.8 * xc + rng.normal(1, 1, n), 0.8 * xt + rng.normal(1.3, 1, n)
        strata[name] = cuped(
            CovariateMeanStatistic.from_values(yc, xc), CovariateMeanStatistic.from_values(yt, xt)
        )
        means.append((yc.mean(), xc.mean(), yt.mean(), xt.mean(), strata[name].theta))
        blocks.append((np.cov(yc, xc, ddof=1) / n, np.cov(yt, xt, ddof=1) / n))
    w = {"a": 0.6, "b": 0.4}
    pooled = stratified(strata, weights=w).pooled
    ws = [0.6, 0.4]

    def lift(m: np.ndarray) -> float:
        d = sum(wi * ((m[4 * i + 2] - m[4 * i]) - th * (m[4 * i + 3] - m[4 * i + 1]))
                for i, (wi, (*_, th)) in enumerate(zip(ws, means, strict=True)))  # fmt: skip
        return d / sum(wi * m[4 * i] for i, wi in enumerate(ws))

    flat = np.array([v for mm in means for v in mm[:4]])
    cov = np.zeros((8, 8))
    for i, (bc, bt) in enumerate(blocks):
        cov[4 * i : 4 * i + 2, 4 * i : 4 * i + 2] = bc
        cov[4 * i + 2 : 4 * i + 4, 4 * i + 2 : 4 * i + 4] = bt
    assert pooled.rel_lift == pytest.approx(lift(flat), rel=1e-10)
    assert pooled.control_mean == pytest.approx(0.6 * means[0][0] + 0.4 * means[1][0], rel=1e-12)
    assert pooled.rel_lift_se == pytest.approx(_delta_se(lift, flat, cov), rel=1e-5)
