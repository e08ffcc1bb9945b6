"""TOST, non-inferiority and superiority pinned to statsmodels."""

import numpy as np
import pytest
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind, ttost_ind

from experiments.stats import MeanStatistic, noninferiority, superiority, tost, welch, ztest


@pytest.fixture
def arms():
    rng = np.random.default_rng(17)
    return rng.normal(10.0, 2.0, 600), rng.normal(10.05, 2.5, 550)


def _stats(c, t):
    return MeanStatistic.from_values(c), MeanStatistic.from_values(t)


def test_tost_matches_statsmodels_ttost_ind(arms):
    c, t = arms
    res = tost(welch(*_stats(c, t)), margin=0.4)
    p, lower, upper = ttost_ind(t, c, -0.4, 0.4, usevar="unequal")
    assert res.p_value == pytest.approx(p, rel=1e-9)
    assert res.p_lower == pytest.approx(lower[1], rel=1e-9)
    assert res.p_upper == pytest.approx(upper[1], rel=1e-9)
    assert res.equivalent == (p < 0.05)
    # The (1 − 2α) CI lies inside ±δ exactly when TOST rejects.
    assert (res.ci[0] > -0.4 and res.ci[1] < 0.4) == res.equivalent


def test_tost_accepts_a_pair_of_statistics(arms):
    c, t = arms
    assert tost(_stats(c, t), 0.4) == tost(welch(*_stats(c, t)), 0.4)


def test_tost_z_matches_statsmodels_ztost(arms):
    c, t = arms
    res = tost(ztest(*_stats(c, t)), margin=(-0.3, 0.5))
    p, lower, upper = CompareMeans(DescrStatsW(t), DescrStatsW(c)).ztost_ind(-0.3, 0.5, usevar="unequal")
    assert res.p_value == pytest.approx(p, rel=1e-9)
    assert res.p_lower == pytest.approx(lower[1], rel=1e-9)
    assert res.p_upper == pytest.approx(upper[1], rel=1e-9)


def test_relative_margin_scales_the_control_mean(arms):
    c, t = arms
    res = tost(welch(*_stats(c, t)), margin=0.03, relative=True)
    delta = 0.03 * c.mean()
    assert res.margin == pytest.approx(delta, rel=1e-12)
    p, _, _ = ttost_ind(t, c, -delta, delta, usevar="unequal")
    assert res.p_value == pytest.approx(p, rel=1e-9)


def test_tost_not_computable_cases(arms):
    c, t = arms
    r = welch(*_stats(c, t))
    zero = tost(r, 0.0)
    assert not zero.computable and "margin is 0" in zero.reason
    flat = welch(MeanStatistic.from_values([1.0] * 5), MeanStatistic.from_values([1.0] * 5))
    res = tost(flat, 0.1)
    assert not res.computable and res.p_value is None and res.ci is None
    zc = welch(MeanStatistic.from_values([-1.0, 1.0]), MeanStatistic.from_values([0.0, 2.0]))
    assert not tost(zc, 0.1, relative=True).computable
    assert tost(zc, 0.1).computable  # an absolute margin is fine with a zero control mean


@pytest.mark.parametrize("direction,alternative,sign", [("higher", "larger", -1), ("lower", "smaller", 1)])
def test_noninferiority_matches_statsmodels_one_sided_welch(arms, direction, alternative, sign):
    c, t = arms
    res = noninferiority(welch(*_stats(c, t)), margin=0.2, direction=direction)
    _stat, p, df = ttest_ind(t, c, alternative=alternative, usevar="unequal", value=sign * 0.2)
    assert res.p_value == pytest.approx(p, rel=1e-9)
    assert res.df == pytest.approx(df, rel=1e-9)
    assert res.threshold == pytest.approx(sign * 0.2)
    assert res.noninferior == (p < 0.05)
    # The one-sided bound clears the margin exactly when the test rejects.
    clears = res.bound > -0.2 if direction == "higher" else res.bound < 0.2
    assert clears == res.noninferior


def test_lower_is_better_latency_guardrail_flags_a_regression():
    rng = np.random.default_rng(3)
    c = rng.normal(200.0, 20.0, 5_000)
    t = rng.normal(210.0, 20.0, 5_000)  # +5% latency
    res = noninferiority(welch(*_stats(c, t)), margin=0.02, direction="lower", relative=True)
    assert res.computable and not res.noninferior and res.bound > res.threshold


def test_superiority_is_noninferiority_with_zero_margin(arms):
    c, t = arms
    r = welch(*_stats(c, t))
    sup = superiority(r, "higher")
    _, p, _ = ttest_ind(t, c, alternative="larger", usevar="unequal")
    assert sup.p_value == pytest.approx(p, rel=1e-9)


def test_noninferiority_validates_direction(arms):
    c, t = arms
    with pytest.raises(ValueError, match="direction"):
        noninferiority(welch(*_stats(c, t)), 0.1, direction="up")
