"""Welch, z, CUPED and delta-method ratios pinned to scipy / statsmodels on fixed data."""

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
    welch,
    ztest,
)


@pytest.fixture
def arms():
    rng = np.random.default_rng(7)
    return rng.normal(1.0, 1.0, 400), rng.normal(1.1, 1.5, 300)


def test_welch_matches_scipy(arms):
    c, t = arms
    res = welch(MeanStatistic.from_values(c), MeanStatistic.from_values(t))
    ref = scipy.stats.ttest_ind(t, c, equal_var=False)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-9)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert res.df == pytest.approx(ref.df, rel=1e-9)
    lo, hi = ref.confidence_interval(0.95)
    assert res.ci == pytest.approx((lo, hi), rel=1e-9)
    assert res.diff == pytest.approx(t.mean() - c.mean(), rel=1e-12)
    assert res.computable and res.reason == ""


def test_welch_alpha_changes_the_interval(arms):
    c, t = arms
    res = welch(MeanStatistic.from_values(c), MeanStatistic.from_values(t), alpha=0.1)
    ref = scipy.stats.ttest_ind(t, c, equal_var=False).confidence_interval(0.9)
    assert res.ci == pytest.approx((ref.low, ref.high), rel=1e-9)


def test_ztest_matches_statsmodels(arms):
    c, t = arms
    res = ztest(MeanStatistic.from_values(c), MeanStatistic.from_values(t))
    cm = CompareMeans(DescrStatsW(t), DescrStatsW(c))
    z, p = cm.ztest_ind(usevar="unequal")
    assert res.statistic == pytest.approx(z, rel=1e-9)
    assert res.p_value == pytest.approx(p, rel=1e-9)
    assert res.ci == pytest.approx(cm.zconfint_diff(alpha=0.05, usevar="unequal"), rel=1e-9)
    assert res.df is None


def test_relative_lift_delta_method_matches_numerical_jacobian(arms):
    # Independent reference: gradient of f(m_t, m_c) = m_t/m_c − 1 by finite differences.
    c, t = arms
    res = welch(MeanStatistic.from_values(c), MeanStatistic.from_values(t))
    mt, mc = t.mean(), c.mean()
    vt, vc = t.var(ddof=1) / t.size, c.var(ddof=1) / c.size
    h = 1e-6

    def f(a: float, b: float) -> float:
        return a / b - 1.0

    g = np.array([(f(mt + h, mc) - f(mt - h, mc)) / (2 * h), (f(mt, mc + h) - f(mt, mc - h)) / (2 * h)])
    se = math.sqrt(g @ np.diag([vt, vc]) @ g)
    assert res.rel_lift == pytest.approx(mt / mc - 1, rel=1e-12)
    assert res.rel_lift_se == pytest.approx(se, rel=1e-6)
    # DESIGN.md: the relative-lift delta interval uses the NORMAL quantile, also under Welch.
    q = scipy.stats.norm.ppf(0.975)
    assert res.rel_lift_ci == pytest.approx((res.rel_lift - q * se, res.rel_lift + q * se), rel=1e-6)


def test_fieller_interval_endpoints_solve_the_fieller_equation(arms):
    c, t = arms
    res = welch(MeanStatistic.from_values(c), MeanStatistic.from_values(t), rel_ci="fieller")
    mt, mc = t.mean(), c.mean()
    vt, vc = t.var(ddof=1) / t.size, c.var(ddof=1) / c.size
    q = scipy.stats.t.ppf(0.975, res.df)
    for lift in res.rel_lift_ci:
        rho = lift + 1.0
        assert (mt - rho * mc) ** 2 == pytest.approx(q * q * (vt + rho * rho * vc), rel=1e-8)
    assert res.rel_lift_ci[0] < res.rel_lift < res.rel_lift_ci[1]


def test_cuped_matches_scipy_on_adjusted_values():
    rng = np.random.default_rng(11)
    xc, xt = rng.normal(10, 3, 500), rng.normal(10, 3, 450)
    yc = 0.8 * xc + rng.normal(0, 1, 500)
    yt = 0.8 * xt + rng.normal(0.3, 1.2, 450)
    res = cuped(CovariateMeanStatistic.from_values(yc, xc), CovariateMeanStatistic.from_values(yt, xt))
    x_all, y_all = np.concatenate([xc, xt]), np.concatenate([yc, yt])
    theta = np.cov(y_all, x_all, ddof=1)[0, 1] / x_all.var(ddof=1)  # pooled over both arms (DESIGN.md)
    adj_c = yc - theta * (xc - x_all.mean())
    adj_t = yt - theta * (xt - x_all.mean())
    ref = scipy.stats.ttest_ind(adj_t, adj_c, equal_var=False)
    assert res.theta == pytest.approx(theta, rel=1e-9)
    assert res.diff == pytest.approx(adj_t.mean() - adj_c.mean(), rel=1e-9)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-7)
    assert res.df == pytest.approx(ref.df, rel=1e-9)
    assert res.ci == pytest.approx(tuple(ref.confidence_interval(0.95)), rel=1e-8)
    unadj_var = yt.var(ddof=1) / yt.size + yc.var(ddof=1) / yc.size
    assert res.variance_reduction == pytest.approx(1 - res.se**2 / unadj_var, rel=1e-8)
    assert res.variance_reduction > 0.8  # ρ ≈ 0.92 here
    assert res.control_mean == pytest.approx(yc.mean()) and res.control_mean_adjusted == pytest.approx(
        adj_c.mean()
    )


def test_cuped_with_constant_covariate_is_plain_welch():
    rng = np.random.default_rng(12)
    yc, yt = rng.normal(0, 1, 100), rng.normal(0, 1, 120)
    res = cuped(
        CovariateMeanStatistic.from_values(yc, np.ones(100)),
        CovariateMeanStatistic.from_values(yt, np.ones(120)),
    )
    ref = scipy.stats.ttest_ind(yt, yc, equal_var=False)
    assert res.theta == 0.0 and res.variance_reduction == pytest.approx(0.0, abs=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9)


def _ratio_data(seed: int, n: int, rate: float):
    rng = np.random.default_rng(seed)
    den = rng.poisson(30, n) + 1.0
    num = rng.binomial(den.astype(int), rate).astype(float)
    return num, den


def test_ratio_delta_matches_statsmodels_on_linearised_values():
    nc, dc = _ratio_data(21, 800, 0.10)
    nt, dt = _ratio_data(22, 700, 0.11)
    res = ratio_delta(RatioStatistic.from_values(nc, dc), RatioStatistic.from_values(nt, dt))

    def lin(num, den):
        r = num.sum() / den.sum()
        return (num - r * den) / den.mean() + r  # mean R, variance·1/n = Var(R) (Deng et al. 2018)

    cm = CompareMeans(DescrStatsW(lin(nt, dt)), DescrStatsW(lin(nc, dc)))
    z, p = cm.ztest_ind(usevar="unequal")
    assert res.diff == pytest.approx(nt.sum() / dt.sum() - nc.sum() / dc.sum(), rel=1e-12)
    assert res.statistic == pytest.approx(z, rel=1e-8)
    assert res.p_value == pytest.approx(p, rel=1e-8)
    assert res.ci == pytest.approx(cm.zconfint_diff(usevar="unequal"), rel=1e-8)
    assert res.df is None
    assert ztest(RatioStatistic.from_values(nc, dc), RatioStatistic.from_values(nt, dt)) == res


def test_cuped_ratio_matches_statsmodels_on_linearised_adjusted_values():
    nc, dc = _ratio_data(31, 900, 0.10)
    nt, dt = _ratio_data(32, 850, 0.105)
    rng = np.random.default_rng(33)
    # Pre-period: correlated with the experiment period through the same users' denominators.
    pdc, pdt = dc + rng.poisson(3, 900), dt + rng.poisson(3, 850)
    pnc = np.minimum(nc + rng.poisson(1, 900), pdc)
    pnt = np.minimum(nt + rng.poisson(1, 850), pdt)
    sc = CovariateRatioStatistic.from_values(nc, dc, pnc, pdc)
    st = CovariateRatioStatistic.from_values(nt, dt, pnt, pdt)
    res = cuped_ratio(sc, st)

    def lin(num, den):
        r = num.sum() / den.sum()
        return (num - r * den) / den.mean() + r

    num_all, den_all = np.concatenate([nc, nt]), np.concatenate([dc, dt])
    pn_all, pd_all = np.concatenate([pnc, pnt]), np.concatenate([pdc, pdt])
    ly, lx = lin(num_all, den_all), lin(pn_all, pd_all)
    theta = np.cov(ly, lx, ddof=1)[0, 1] / lx.var(ddof=1)
    rx_pool = pn_all.sum() / pd_all.sum()
    adj_c = lin(nc, dc) - theta * (lin(pnc, pdc) - rx_pool)
    adj_t = lin(nt, dt) - theta * (lin(pnt, pdt) - rx_pool)
    cm = CompareMeans(DescrStatsW(adj_t), DescrStatsW(adj_c))
    _z, p = cm.ztest_ind(usevar="unequal")
    assert res.theta == pytest.approx(theta, rel=1e-8)
    assert res.diff == pytest.approx(adj_t.mean() - adj_c.mean(), rel=1e-8)
    assert res.p_value == pytest.approx(p, rel=1e-7)
    assert res.ci == pytest.approx(cm.zconfint_diff(usevar="unequal"), rel=1e-7)
    assert 0.0 < res.variance_reduction < 1.0


def test_cuped_ratio_with_unit_pre_denominator_equals_scalar_covariate_cuped():
    nc, dc = _ratio_data(41, 600, 0.2)
    nt, dt = _ratio_data(42, 600, 0.2)
    xc, xt = dc * 0.9, dt * 1.1
    res = cuped_ratio(
        CovariateRatioStatistic.from_values(nc, dc, xc, np.ones(600)),
        CovariateRatioStatistic.from_values(nt, dt, xt, np.ones(600)),
    )
    assert res.computable and res.theta is not None and res.se > 0


# --- undefined cases: never a crash, never p = 0, never a zero-width CI -------------------


def test_empty_arm_is_not_computable():
    res = welch(MeanStatistic(0, 0.0, 0.0), MeanStatistic.from_values([1.0, 2.0, 3.0]))
    assert not res.computable and "empty arm" in res.reason and "control" in res.reason
    assert res.p_value is None and res.ci is None and res.se is None


def test_single_unit_arm_is_not_computable():
    res = ztest(MeanStatistic.from_values([1.0]), MeanStatistic.from_values([1.0, 2.0]))
    assert not res.computable and "fewer than 2" in res.reason and res.p_value is None


def test_zero_variance_in_both_arms_is_not_computable():
    res = welch(MeanStatistic.from_values([2.0] * 50), MeanStatistic.from_values([3.0] * 40))
    assert not res.computable and "zero variance in both arms" in res.reason
    assert res.diff == pytest.approx(1.0) and res.p_value is None and res.ci is None


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # scipy warns about the constant arm
def test_one_arm_with_zero_variance_is_a_valid_welch_test():
    t = np.array([1.0, 2.0, 4.0, 3.0, 5.0, 2.5])
    c = np.full(8, 2.0)
    res = welch(MeanStatistic.from_values(c), MeanStatistic.from_values(t))
    ref = scipy.stats.ttest_ind(t, c, equal_var=False)
    assert res.computable
    assert res.df == pytest.approx(len(t) - 1)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert res.ci[1] - res.ci[0] > 0


def test_zero_control_mean_reports_absolute_difference_but_no_lift():
    c = np.array([-1.0, 1.0, -2.0, 2.0])
    t = np.array([0.5, 1.5, 1.0, 2.0])
    res = welch(MeanStatistic.from_values(c), MeanStatistic.from_values(t))
    assert not res.computable and "control mean is 0" in res.reason
    assert res.rel_lift is None and res.rel_lift_ci is None
    assert res.p_value == pytest.approx(scipy.stats.ttest_ind(t, c, equal_var=False).pvalue, rel=1e-9)


def test_ratio_with_zero_denominator_is_not_computable():
    res = ratio_delta(
        RatioStatistic.from_values([0.0, 0.0], [0.0, 0.0]), RatioStatistic.from_values([1.0, 2.0], [3.0, 4.0])
    )
    assert not res.computable and "denominator" in res.reason


def test_huge_effects_never_report_p_zero():
    c = MeanStatistic.from_values(np.linspace(0, 1, 10_000))
    t = MeanStatistic.from_values(np.linspace(100, 101, 10_000))
    for res in (welch(c, t), ztest(c, t)):
        assert res.p_value > 0.0
        assert res.ci[1] > res.ci[0]


def test_alpha_is_validated():
    with pytest.raises(ValueError):
        welch(MeanStatistic(3, 1, 1), MeanStatistic(3, 1, 1), alpha=1.5)


def test_result_to_dict_is_json_ready(arms):
    import json

    c, t = arms
    d = welch(MeanStatistic.from_values(c), MeanStatistic.from_values(t)).to_dict()
    assert isinstance(d["ci"], list) and json.loads(json.dumps(d))["p_value"] == d["p_value"]
