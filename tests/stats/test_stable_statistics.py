"""Numerically stable sufficient statistics (issue #16, items 1–3): the numpy path.

Values at offsets 1e6, 1e8 and 1e10 with a spread of about 1: raw one-pass sums lose the
variance there (1e8 ± 1 gave 0). Reference: the same float64 values, exactly (``Fraction``),
two-pass. Partitions built about different shifts must add to the same statistic.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from experiments.stats import (
    CovariateMeanStatistic,
    CovariateRatioStatistic,
    MeanStatistic,
    RatioStatistic,
    cuped,
    ratio_delta,
    welch,
    ztest,
)
from experiments.stats.statistics import reshift

OFFSETS = (1e6, 1e8, 1e10)
REL = 1e-6
noise = st.lists(st.floats(-10.0, 10.0, allow_nan=False, allow_subnormal=False), min_size=6, max_size=60)


def _fr(values: np.ndarray) -> list[Fraction]:
    return [Fraction(float(v)) for v in values]


def _two_pass(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, s² ddof 1, g₁) exactly, two-pass."""
    v = _fr(values)
    n = len(v)
    mean = sum(v, Fraction(0)) / n
    d = [a - mean for a in v]
    m2 = sum((a * a for a in d), Fraction(0))
    m3 = sum((a**3 for a in d), Fraction(0)) / n
    skew = float(m3) / (float(m2 / n) ** 1.5) if m2 else math.nan
    return float(mean), float(m2 / (n - 1)), skew


def _two_pass_cov(x: np.ndarray, y: np.ndarray) -> float:
    fx, fy = _fr(x), _fr(y)
    n = len(fx)
    mx, my = sum(fx, Fraction(0)) / n, sum(fy, Fraction(0)) / n
    return float(sum(((a - mx) * (b - my) for a, b in zip(fx, fy, strict=True)), Fraction(0)) / (n - 1))


def _spread(*arrays: np.ndarray) -> bool:
    return all(float(np.ptp(a)) > 0.5 for a in arrays)


@pytest.mark.parametrize("offset", OFFSETS)
@settings(max_examples=40, deadline=None)
@given(ys=noise, xs=noise, cut=st.integers(1, 5))
def test_numpy_moments_match_an_exact_two_pass(
    offset: float, ys: list[float], xs: list[float], cut: int
) -> None:
    n = min(len(ys), len(xs))
    y = offset + np.asarray(ys[:n])
    x = offset + np.asarray(xs[:n])
    assume(_spread(y, x))
    mean, var, skew = _two_pass(y)
    s = CovariateMeanStatistic.from_values(y, x)
    assert s.problem is None
    assert s.mean == pytest.approx(mean, rel=1e-15)
    assert s.variance == pytest.approx(var, rel=REL)
    assert s.x_variance == pytest.approx(_two_pass(x)[1], rel=REL)
    assert s.covariance == pytest.approx(
        _two_pass_cov(x, y), rel=REL, abs=REL * math.sqrt(var * _two_pass(x)[1])
    )
    assert s.skewness == pytest.approx(skew, rel=REL, abs=REL)
    # Partitions about different shifts (each picks its own K) add to the same statistic.
    parts = [
        CovariateMeanStatistic.from_values(y[:cut] - 0.0, x[:cut]),
        CovariateMeanStatistic.from_values(y[cut:] + 0.0, x[cut:]),
    ]
    total = parts[0] + parts[1]
    assert total.n == n
    assert total.variance == pytest.approx(var, rel=REL)
    assert total.skewness == pytest.approx(skew, rel=REL, abs=REL)
    m = MeanStatistic.from_values(y)
    assert m.variance == pytest.approx(var, rel=REL)
    assert (
        MeanStatistic.from_values(y[:cut]) + MeanStatistic.from_values(y[cut:])
    ).variance == pytest.approx(var, rel=REL)


@pytest.mark.parametrize("offset", OFFSETS)
@settings(max_examples=30, deadline=None)
@given(nums=noise, dens=noise)
def test_numpy_ratio_moments_match_an_exact_two_pass(
    offset: float, nums: list[float], dens: list[float]
) -> None:
    n = min(len(nums), len(dens))
    num = offset + np.asarray(nums[:n])
    den = offset + np.asarray(dens[:n])
    assume(_spread(num, den))
    s = RatioStatistic.from_values(num, den)
    fn, fd = _fr(num), _fr(den)
    r = sum(fn, Fraction(0)) / sum(fd, Fraction(0))
    d_bar = sum(fd, Fraction(0)) / n
    infl = [(a - r * b) / d_bar for a, b in zip(fn, fd, strict=True)]
    mean_i = sum(infl, Fraction(0)) / n
    var = float(sum(((a - mean_i) ** 2 for a in infl), Fraction(0)) / (n - 1))
    assert s.ratio == pytest.approx(float(r), rel=1e-15)
    assert s.variance == pytest.approx(var, rel=REL)
    both = RatioStatistic.from_values(num[:3], den[:3]) + RatioStatistic.from_values(num[3:], den[3:])
    assert both.variance == pytest.approx(var, rel=REL)
    c = CovariateRatioStatistic.from_values(num, den, den, num)
    assert c.ratio.variance == pytest.approx(var, rel=REL)


def test_issue_examples_give_the_two_pass_answers_at_every_offset() -> None:
    # The issue's measurement: values offset ± 1. The comparison must not depend on the offset.
    rng = np.random.default_rng(16)
    c0, t0 = rng.normal(0.0, 1.0, 500), rng.normal(0.13, 1.0, 500)
    xc0, xt0 = c0 + rng.normal(0, 0.5, 500), t0 - 0.13 + rng.normal(0, 0.5, 500)
    ref = scipy.stats.ttest_ind(t0, c0, equal_var=False)
    for offset in (0.0, *OFFSETS):
        c, t = offset + c0, offset + t0
        res = welch(MeanStatistic.from_values(c), MeanStatistic.from_values(t))
        assert res.computable
        assert res.control_variance == pytest.approx(np.var(c, ddof=1), rel=REL)
        assert res.p_value == pytest.approx(ref.pvalue, rel=1e-4)  # values rounded at the offset
        adj = cuped(
            CovariateMeanStatistic.from_values(c, offset + xc0),
            CovariateMeanStatistic.from_values(t, offset + xt0),
        )
        base = cuped(CovariateMeanStatistic.from_values(c0, xc0), CovariateMeanStatistic.from_values(t0, xt0))
        assert adj.theta == pytest.approx(base.theta, rel=1e-4)
        assert adj.p_value == pytest.approx(base.p_value, rel=1e-3)


def test_skewness_matches_scipy() -> None:
    # scipy.stats.skew(bias=True): g₁ = m₃ / m₂^{3/2}, central moments with 1/n.
    rng = np.random.default_rng(3)
    y = np.where(rng.random(5000) < 0.7, 0.0, rng.lognormal(1.0, 1.2, 5000))
    s = MeanStatistic.from_values(y)
    assert s.skewness == pytest.approx(scipy.stats.skew(y), rel=1e-10)
    assert CovariateMeanStatistic.from_values(y, y[::-1]).skewness == pytest.approx(
        scipy.stats.skew(y), rel=1e-10
    )
    assert MeanStatistic.from_counts(100, 10).skewness == pytest.approx(
        scipy.stats.skew(np.r_[np.ones(10), np.zeros(90)]), rel=1e-12
    )
    assert MeanStatistic.from_sums(10, 5.0, 30.0).skewness is None  # Σ(y−K)³ not supplied
    assert MeanStatistic.from_values(np.full(10, 3.0)).skewness is None  # no variance


def test_reshift_is_the_binomial_expansion() -> None:
    rng = np.random.default_rng(9)
    x, y = rng.normal(5, 1, 50), rng.normal(-3, 2, 50)

    def sums(kx: float, ky: float) -> dict[str, float]:
        dx, dy = x - kx, y - ky
        return {
            "sum": dy.sum(),
            "sum_squares": dy @ dy,
            "sum_cubes": (dy * dy) @ dy,
            "x_sum": dx.sum(),
            "x_sum_squares": dx @ dx,
            "xy_sum": dx @ dy,
        }

    moved = reshift(50, sums(1.0, 2.0), {"x": 1.0, "y": 2.0}, {"x": 4.5, "y": -3.0})
    for key, value in sums(4.5, -3.0).items():
        assert moved[key] == pytest.approx(value, rel=1e-12, abs=1e-9)


# -- item 2: impossible statistics are refused with a reason ---------------------------------------
@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda: MeanStatistic.from_sums(100, math.nan, 1.0), "sum = nan is not finite"),
        (lambda: MeanStatistic.from_sums(100, 5.0, math.inf), "sum_squares = inf is not finite"),
        (lambda: MeanStatistic.from_sums(-1, 0.0, 0.0), "n = -1 is negative"),
        (lambda: MeanStatistic.from_sums(0, 1.0, 1.0), "n = 0 but the sums are not 0"),
        (lambda: MeanStatistic.from_sums(10, 100.0, 5.0), "a negative variance is impossible"),
        (lambda: CovariateMeanStatistic.from_sums(10, 1.0, 1.0, 10.0, 1.0, 0.0), "x_sum_squares"),
        (lambda: RatioStatistic.from_sums(10, 1.0, 1.0, math.nan, 1.0, 0.0), "den_sum = nan"),
        (
            lambda: CovariateRatioStatistic.from_sums(
                n=3, num_sum=1, num_sum_squares=1, den_sum=1, den_sum_squares=1, num_den_sum=1,
                pre_num_sum=1, pre_num_sum_squares=1, pre_den_sum=1, pre_den_sum_squares=1,
                pre_num_pre_den_sum=1, num_pre_num_sum=1, num_pre_den_sum=1, den_pre_num_sum=1,
                den_pre_den_sum=math.inf,
            ),
            "den_pre_den_sum = inf",
        ),
    ],
)  # fmt: skip
def test_from_sums_refuses_impossible_statistics(build: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(")):
        build()  # type: ignore[operator]


def test_comparisons_report_impossible_rows_as_not_computable() -> None:
    good = MeanStatistic.from_sums(100, 50.0, 60.0)
    for bad, words in (
        (MeanStatistic(100, math.nan, 1.0), "sum = nan is not finite"),
        (MeanStatistic(100, 100.0, 5.0), "negative variance"),
        (MeanStatistic(100, 1e308 * 10, 1.0), "not finite"),
    ):
        for test in (welch, ztest):
            res = test(good, bad)
            assert not res.computable and res.p_value is None
            assert "treatment statistics refused" in res.reason and words in res.reason
    res = ratio_delta(RatioStatistic(10, 1, 1, 5, 1, 1), RatioStatistic.from_sums(10, 1, 1, 5, 3, 1))
    assert not res.computable and "control statistics refused" in res.reason
    bad_cov = CovariateMeanStatistic(10, 1.0, 1.0, 1.0, math.inf, 0.0)
    res = cuped(bad_cov, CovariateMeanStatistic.from_sums(10, 1.0, 1.0, 1.0, 1.0, 0.0))
    assert not res.computable and "x_sum_squares = inf" in res.reason


def test_a_negative_variance_within_rounding_is_zero() -> None:
    # (Σy)²/n exceeds Σy² by one ulp: rounding, not an impossible statistic.
    s2 = 1e6 * 1e6 / 3
    s = MeanStatistic.from_sums(3, 1e6, math.nextafter(s2, 0.0))
    assert s.problem is None and s.variance == 0.0
