"""mSPRT (normal mixture): formulas pinned to numerical integration of the mixture."""

import math

import numpy as np
import pytest
import scipy.integrate
import scipy.stats

from experiments.stats import MeanStatistic, msprt, msprt_path, welch
from experiments.stats.sequential import _log_lr_one_sided, _log_lr_two_sided


def _mixture_lr(theta_hat: float, v: float, tau: float, null: float, one_sided: bool) -> float:
    """Reference: ∫ N(θ̂; θ, V)/N(θ̂; θ0, V) dπ(θ) by quadrature (Robbins 1970)."""
    lr = lambda u: math.exp(u * (theta_hat - null) / v - u * u / (2 * v))  # noqa: E731
    if one_sided:
        dens = lambda u: 2.0 * scipy.stats.norm.pdf(u, 0, tau)  # noqa: E731
        return scipy.integrate.quad(lambda u: lr(u) * dens(u), 0, np.inf, epsabs=0, epsrel=1e-11)[0]
    dens = lambda u: scipy.stats.norm.pdf(u, 0, tau)  # noqa: E731
    return scipy.integrate.quad(lambda u: lr(u) * dens(u), -np.inf, np.inf, epsabs=0, epsrel=1e-11)[0]


@pytest.mark.parametrize("theta_hat,v,tau", [(0.3, 0.01, 0.2), (-0.05, 0.002, 0.05), (0.0, 0.5, 1.0)])
def test_two_sided_mixture_lr_matches_quadrature(theta_hat, v, tau):
    ref = _mixture_lr(theta_hat, v, tau, 0.0, one_sided=False)
    assert math.exp(_log_lr_two_sided(theta_hat, v, tau * tau)) == pytest.approx(ref, rel=1e-8)


@pytest.mark.parametrize("delta,v,tau", [(0.3, 0.01, 0.2), (-0.05, 0.002, 0.05), (0.01, 0.5, 1.0)])
def test_one_sided_mixture_lr_matches_quadrature(delta, v, tau):
    ref = _mixture_lr(delta, v, tau, 0.0, one_sided=True)
    assert math.exp(_log_lr_one_sided(delta, v, tau * tau)) == pytest.approx(ref, rel=1e-8)


def _look(seed: int, n: int, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    return welch(
        MeanStatistic.from_values(rng.normal(0, 1, n)), MeanStatistic.from_values(rng.normal(shift, 1, n))
    )


def test_confidence_sequence_edges_are_where_the_mixture_reaches_one_over_alpha():
    res = _look(1, 2_000, 0.1)
    seq = msprt(res, mixture_sd=0.1)
    v = res.se**2
    for edge in seq.ci:
        assert _log_lr_two_sided(res.diff - edge, v, 0.01) == pytest.approx(math.log(20.0), rel=1e-9)
    assert seq.p_value == pytest.approx(min(1.0, math.exp(-seq.log_lr)), rel=1e-12)
    # Always-valid intervals are wider than the fixed-horizon one.
    assert seq.ci[0] < res.ci[0] and seq.ci[1] > res.ci[1]


@pytest.mark.parametrize("direction", ["higher", "lower"])
def test_one_sided_bound_solves_the_half_normal_mixture(direction):
    res = _look(2, 3_000, 0.05)
    seq = msprt(res, direction=direction, margin=0.1, mixture_sd=0.1)
    v = res.se**2
    reach = res.diff - seq.bound if direction == "higher" else seq.bound - res.diff
    assert _log_lr_one_sided(reach, v, 0.01) == pytest.approx(math.log(20.0), rel=1e-9)
    assert seq.null == pytest.approx(-0.1 if direction == "higher" else 0.1)
    assert seq.reject == (seq.p_value < 0.05)
    assert seq.reject == (seq.bound > -0.1 if direction == "higher" else seq.bound < 0.1)


def test_chained_looks_keep_the_running_minimum_and_intersection():
    looks = [_look(10 + k, 500 * (k + 1), 0.0) for k in range(6)]
    state = None
    for r in looks:
        state = msprt(r, previous=state)
    path = msprt_path([r.diff for r in looks], [r.se**2 for r in looks], state.mixture_sd)
    assert state.looks == 6
    assert state.p_value == pytest.approx(path.p_value[-1], rel=1e-9)
    assert state.ci == pytest.approx((path.ci_lower[-1], path.ci_upper[-1]), rel=1e-9)
    assert np.all(np.diff(path.p_value) <= 0)


def test_path_one_sided_bound_agrees_with_scalar():
    looks = [_look(40 + k, 800 * (k + 1), 0.02) for k in range(4)]
    state = None
    for r in looks:
        state = msprt(r, direction="lower", margin=0.05, mixture_sd=0.2, previous=state)
    path = msprt_path([r.diff for r in looks], [r.se**2 for r in looks], 0.2, direction="lower", null=0.05)
    assert state.bound == pytest.approx(path.bound[-1], rel=1e-7)
    assert state.p_value == pytest.approx(path.p_value[-1], rel=1e-9)


def test_default_mixture_scale_is_a_tenth_of_a_unit_sd_and_is_carried_forward():
    first = msprt(_look(3, 1_000))
    sd = math.sqrt((_look(3, 1_000).control_variance + _look(3, 1_000).treatment_variance) / 2)
    assert first.mixture_sd == pytest.approx(0.1 * sd)
    second = msprt(_look(4, 4_000), previous=first)
    assert second.mixture_sd == first.mixture_sd


def test_sequential_not_computable_without_variance():
    flat = welch(MeanStatistic.from_values([1.0] * 4), MeanStatistic.from_values([1.0] * 4))
    s = msprt(flat)
    assert not s.computable and s.p_value is None
    with pytest.raises(ValueError):
        msprt(_look(5, 100), margin=0.1)  # a margin needs a direction


def test_extreme_estimates_neither_overflow_nor_report_p_zero():
    base = _look(6, 1_000)
    from dataclasses import replace

    far_bad = replace(base, diff=-50.0)
    s = msprt(far_bad, direction="higher", margin=0.1, mixture_sd=0.1)
    assert s.p_value == 1.0 and not s.reject
    far_good = replace(base, diff=50.0)
    s = msprt(far_good, mixture_sd=0.1)
    assert 0.0 < s.p_value < 1e-300 and s.reject
    path = msprt_path([-50.0, 50.0], [base.se**2] * 2, 0.1, direction="higher", null=-0.1)
    assert path.p_value[0] == 1.0 and path.p_value[1] > 0.0
