"""Sufficient statistics: one-pass construction, SQL rows, additivity (pinned to numpy)."""

import math

import numpy as np
import pytest

from experiments.stats import CovariateMeanStatistic, CovariateRatioStatistic, MeanStatistic, RatioStatistic
from experiments.stats import statistics as stats_module


def test_mean_statistic_matches_numpy_two_pass_moments():
    rng = np.random.default_rng(1)
    y = rng.lognormal(1.0, 1.0, 5_000)
    s = MeanStatistic.from_values(y)
    assert s.n == 5_000
    assert s.sum == pytest.approx(y.sum(), rel=1e-12)
    assert s.sum_squares == pytest.approx((y * y).sum(), rel=1e-12)
    assert s.mean == pytest.approx(y.mean(), rel=1e-12)
    assert s.variance == pytest.approx(y.var(ddof=1), rel=1e-10)


def test_covariate_statistic_moments_match_numpy_cov():
    rng = np.random.default_rng(2)
    x = rng.normal(5, 2, 3_000)
    y = 0.7 * x + rng.normal(0, 1, 3_000)
    s = CovariateMeanStatistic.from_values(y, x)
    cov = np.cov(y, x, ddof=1)
    assert s.variance == pytest.approx(cov[0, 0], rel=1e-10)
    assert s.x_variance == pytest.approx(cov[1, 1], rel=1e-10)
    assert s.covariance == pytest.approx(cov[0, 1], rel=1e-10)
    assert s.y == MeanStatistic(s.n, s.sum, s.sum_squares, s.shift, s.sum_cubes)


def test_parallel_blocked_path_equals_numpy_on_large_arrays():
    # Above the threading threshold the arrays are reduced in chunks by several threads.
    rng = np.random.default_rng(3)
    n = stats_module._PARALLEL_MIN + 12_345
    y, x = rng.normal(3, 1, n), rng.normal(1, 2, n)
    s = CovariateMeanStatistic.from_values(y, x)
    assert s.n == n
    assert s.sum == pytest.approx(math.fsum(y), rel=1e-12)
    assert s.x_sum_squares == pytest.approx(math.fsum(x * x), rel=1e-12)
    assert s.xy_sum == pytest.approx(math.fsum(x * y), rel=1e-12)


def test_partitions_add_up_to_the_whole():
    rng = np.random.default_rng(4)
    num = rng.poisson(3, 900).astype(float)
    den = num + rng.poisson(10, 900)
    days = np.array_split(np.arange(900), 3)
    parts = [RatioStatistic.from_values(num[d], den[d]) for d in days]
    whole = RatioStatistic.from_values(num, den)
    total = parts[0] + parts[1] + parts[2]
    for field in ("n", "num_sum", "num_sum_squares", "den_sum", "den_sum_squares", "num_den_sum"):
        assert getattr(total, field) == pytest.approx(getattr(whole, field), rel=1e-12)
    a = CovariateRatioStatistic.from_values(num[:400], den[:400], den[:400], num[:400] + 1)
    b = CovariateRatioStatistic.from_values(num[400:], den[400:], den[400:], num[400:] + 1)
    ab = CovariateRatioStatistic.from_values(num, den, den, num + 1)
    assert (a + b).pre_num_sum_squares == pytest.approx(ab.pre_num_sum_squares, rel=1e-12)
    assert (a + b).den_pre_den_sum == pytest.approx(ab.den_pre_den_sum, rel=1e-12)


def test_from_row_and_from_sums_build_the_same_statistic():
    row = {"n": "10", "sum": "25.5", "sum_squares": 80.25}
    assert MeanStatistic.from_row(row) == MeanStatistic.from_sums(10, 25.5, 80.25)
    with pytest.raises(ValueError, match="missing 'sum_squares'"):
        MeanStatistic.from_row({"n": 1, "sum": 2})
    with pytest.raises(ValueError, match="not a number"):
        MeanStatistic.from_row({"n": 1, "sum": "x", "sum_squares": 1})


def test_non_finite_values_are_rejected():
    with pytest.raises(ValueError, match="NaN"):
        MeanStatistic.from_values(np.array([1.0, np.nan, 2.0]))


def test_proportion_is_a_mean_of_zero_one_values():
    y = np.array([1, 0, 0, 1, 1, 0, 1, 1], dtype=float)
    s = MeanStatistic.from_values(y)
    p = y.mean()
    assert s.variance == pytest.approx(p * (1 - p) * len(y) / (len(y) - 1), rel=1e-12)
    assert MeanStatistic.from_counts(8, 5) == s
    with pytest.raises(ValueError):
        MeanStatistic.from_counts(3, 4)


def test_ratio_linearised_variance_is_the_influence_value_variance():
    rng = np.random.default_rng(5)
    den = rng.poisson(20, 2_000) + 1.0
    num = rng.binomial(den.astype(int), 0.1).astype(float)
    s = RatioStatistic.from_values(num, den)
    r = num.sum() / den.sum()
    influence = (num - r * den) / den.mean()
    assert s.ratio == pytest.approx(r, rel=1e-12)
    assert s.variance == pytest.approx(influence.var(ddof=1), rel=1e-9)


@pytest.mark.parametrize("n", [0, 1, 255, 256, 32_767, 32_768, 32_769, 3 * 65_536 + 7])
def test_blocked_moments_cover_every_value_once(n):
    # Whole blocks are summed as 256-wide rows times ones, the tail by np.add.reduce; every
    # array count (1, 2 unrolled; 4 general) and strided input must give the exact sums.
    rng = np.random.default_rng(n)
    y, x = rng.normal(5, 3, n), rng.lognormal(0, 1, n)
    cases = [
        ([y], [(0, 0)]),
        ([y, x], [(0, 0), (1, 1), (0, 1)]),
        ([y, x, x[::-1].copy(), 2 * y], [(0, 0), (1, 1), (0, 1), (2, 2), (3, 3), (2, 3), (0, 2), (1, 3)]),
    ]
    wide = rng.normal(1, 1, 2 * n)
    cases.append(([wide[::2], wide[1::2]], [(0, 0), (1, 1), (0, 1)]))
    cases.append(([y + 1e8, x], [(0, 0), (1, 1), (0, 1)]))  # a shifted array (K ≠ 0)
    for arrays, pairs in cases:
        for cubes in ((), (0,)):
            shifts, sums, prods, cube_sums = stats_module._moments(arrays, pairs, cubes)
            shifted = [a - k for a, k in zip(arrays, shifts, strict=True)]
            assert sums == pytest.approx([math.fsum(a) for a in shifted], rel=1e-13, abs=1e-9)
            expected = [math.fsum(shifted[i] * shifted[j]) for i, j in pairs]
            assert prods == pytest.approx(expected, rel=1e-13, abs=1e-9)
            assert cube_sums == pytest.approx(
                [math.fsum(shifted[i] ** 3) for i in cubes], rel=1e-12, abs=1e-9
            )


def test_threaded_moments_agree_with_one_thread(monkeypatch):
    rng = np.random.default_rng(6)
    n = 3 * stats_module._TASK + 1_001
    y, x = rng.normal(10, 2, n), rng.normal(3, 1, n)
    monkeypatch.setattr(stats_module, "_PARALLEL_MIN", 1)
    monkeypatch.setattr(stats_module, "_WORKERS", 3)
    threaded = CovariateMeanStatistic.from_values(y, x)
    monkeypatch.setattr(stats_module, "_WORKERS", 1)
    single = CovariateMeanStatistic.from_values(y, x)
    for field in ("sum", "sum_squares", "x_sum", "x_sum_squares", "xy_sum"):
        assert getattr(threaded, field) == pytest.approx(getattr(single, field), rel=1e-13)
    assert threaded.sum == pytest.approx(math.fsum(y), rel=1e-14)
