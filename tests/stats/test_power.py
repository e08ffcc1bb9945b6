"""Power / sample size pinned to statsmodels NormalIndPower; TOST power to its definition."""

import math

import pytest
import scipy.stats
from statsmodels.stats.power import NormalIndPower

from experiments.stats import days_needed, mde, power, sample_size, tost_power, tost_sample_size


@pytest.mark.parametrize("split,rho", [(0.5, 0.0), (0.5, 0.6), (0.01, 0.0), (0.2, 0.4)])
def test_sample_size_matches_statsmodels(split, rho):
    cv, m = 2.5, 0.02
    res = sample_size(cv=cv, rel_mde=m, alpha=0.05, power=0.8, cuped_rho=rho, split=split)
    effect = m / (cv * math.sqrt(1 - rho**2))
    # statsmodels: nobs1 is the first sample (treatment), ratio = nobs2/nobs1.
    n1 = NormalIndPower().solve_power(effect_size=effect, alpha=0.05, power=0.8, ratio=(1 - split) / split)
    assert res.n_treatment == pytest.approx(n1, rel=1e-6)
    assert res.n_per_arm == res.n_treatment
    assert res.n_control == pytest.approx(n1 * (1 - split) / split, rel=1e-6)
    assert res.n_per_arm_rounded == math.ceil(res.n_per_arm)


def test_textbook_closed_form_for_an_even_split():
    # n per arm = 2(z_{1−α/2} + z_{1−β})²·cv²/m² (one tail; the far tail is negligible here).
    res = sample_size(cv=1.0, rel_mde=0.05, alpha=0.05, power=0.8)
    z = scipy.stats.norm.ppf(0.975) + scipy.stats.norm.ppf(0.8)
    assert res.n_per_arm == pytest.approx(2 * z**2 / 0.05**2, rel=1e-5)


def test_power_matches_statsmodels_and_inverts_sample_size():
    p = power(cv=2.0, rel_effect=0.01, n_treatment=50_000, n_control=150_000, alpha=0.05)
    ref = NormalIndPower().power(effect_size=0.01 / 2.0, nobs1=50_000, alpha=0.05, ratio=3.0)
    assert p == pytest.approx(ref, rel=1e-10)
    n = sample_size(cv=2.0, rel_mde=0.01, power=0.9, split=0.25)
    assert power(cv=2.0, rel_effect=0.01, n_treatment=n.n_treatment, n_control=n.n_control) == pytest.approx(
        0.9, rel=1e-8
    )


def test_cuped_rho_shrinks_the_sample_by_one_minus_rho_squared():
    plain = sample_size(cv=3, rel_mde=0.01)
    adjusted = sample_size(cv=3, rel_mde=0.01, cuped_rho=0.7)
    assert adjusted.n_total / plain.n_total == pytest.approx(1 - 0.49, rel=1e-6)


def test_mde_inverts_the_closed_form():
    n = sample_size(cv=2.0, rel_mde=0.03, power=0.8)
    m = mde(cv=2.0, n_treatment=n.n_treatment, n_control=n.n_control, power=0.8)
    assert m == pytest.approx(0.03, rel=1e-4)


def test_days_needed():
    assert days_needed(n_total=1_000_000, daily_units=300_000) == 4
    assert days_needed(n_total=900_000, daily_units=300_000) == 3
    res = sample_size(cv=2.0, rel_mde=0.01, split=0.01, daily_units=1_000_000)
    assert res.days == math.ceil(res.n_total_rounded / 1_000_000)


def test_tost_power_is_the_probability_that_the_ci_sits_inside_the_margin():
    cv, margin, n_t, n_c, true = 2.0, 0.02, 400_000, 600_000, 0.005
    se = cv * math.sqrt(1 / n_t + 1 / n_c)
    z = scipy.stats.norm.ppf(0.95)
    # P(−δ + z·se < D̂ < δ − z·se), D̂ ~ N(true, se²)
    ref = scipy.stats.norm.cdf(margin - z * se, true, se) - scipy.stats.norm.cdf(-margin + z * se, true, se)
    assert tost_power(
        cv=cv, margin_rel=margin, n_treatment=n_t, n_control=n_c, true_rel_diff=true
    ) == pytest.approx(ref, rel=1e-9)


def test_tost_sample_size_closed_form_at_zero_true_difference():
    # δ/se = z_{1−α} + z_{1−β/2} (Chow, Shao & Wang §3.2) ⇒ n per arm = 2cv²(z_{1−α}+z_{1−β/2})²/δ².
    res = tost_sample_size(cv=1.5, margin_rel=0.01, power=0.8)
    z = scipy.stats.norm.ppf(0.95) + scipy.stats.norm.ppf(0.9)
    assert res.n_per_arm == pytest.approx(2 * 1.5**2 * z**2 / 0.01**2, rel=1e-6)
    assert tost_power(
        cv=1.5, margin_rel=0.01, n_treatment=res.n_treatment, n_control=res.n_control
    ) == pytest.approx(0.8, rel=1e-8)


def test_power_validation():
    with pytest.raises(ValueError):
        sample_size(cv=0, rel_mde=0.01)
    with pytest.raises(ValueError):
        sample_size(cv=1, rel_mde=0.01, split=1.0)
    with pytest.raises(ValueError):
        tost_sample_size(cv=1, margin_rel=0.01, true_rel_diff=0.02)
