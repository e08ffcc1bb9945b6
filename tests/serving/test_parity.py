"""Ranking parity metrics, pinned to scipy and to a direct evaluation of the published formula."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from controlplane.serving.parity import kendall_tau_b, overlap_at, ranking_parity, rbo_extrapolated


def rbo_ext_direct(s: list[int], t: list[int], p: float) -> float:
    """Webber et al. 2010 eq. (32), evaluated literally with set intersections at every depth."""
    k = min(len(s), len(t))
    x = [len(set(s[:d]) & set(t[:d])) for d in range(1, k + 1)]
    return x[-1] / k * p**k + (1 - p) / p * sum(x[d - 1] / d * p**d for d in range(1, k + 1))


def test_rbo_matches_the_literal_formula_on_random_lists():
    rng = np.random.default_rng(3)
    for _ in range(50):
        pool = rng.permutation(80)
        s = [int(i) for i in pool[:50]]
        t = [int(i) for i in rng.permutation(pool[:65])[:50]]
        for p in (0.5, 0.9, 0.98):
            assert rbo_extrapolated(s, t, p) == pytest.approx(rbo_ext_direct(s, t, p), rel=1e-12)


def test_rbo_bounds_and_top_weighting():
    a = list(range(50))
    assert rbo_extrapolated(a, a) == pytest.approx(1.0)
    assert rbo_extrapolated(a, list(range(100, 150))) == 0.0
    swapped_top = [1, 0, *a[2:]]
    swapped_bottom = [*a[:48], 49, 48]
    # Disagreement at the top costs more than the same disagreement at the bottom.
    assert rbo_extrapolated(a, swapped_top) < rbo_extrapolated(a, swapped_bottom) < 1.0


def test_kendall_tau_b_matches_scipy_with_and_without_ties():
    rng = np.random.default_rng(5)
    for n in (2, 3, 10, 40):
        x = rng.permutation(n)
        y = x + rng.normal(0, n / 3, size=n)
        assert kendall_tau_b(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)
        xt = rng.integers(0, 4, size=n)
        yt = rng.integers(0, 4, size=n)
        ref = scipy.stats.kendalltau(xt, yt).statistic
        ours = kendall_tau_b(xt, yt)
        if np.isnan(ref):
            assert ours is None
        else:
            assert ours == pytest.approx(ref, abs=1e-12)
    assert kendall_tau_b([1], [1]) is None


def test_ranking_parity_of_a_list_with_itself_and_a_reversal():
    ids = list(range(100, 150))
    scores = [float(50 - i) for i in range(50)]
    same = ranking_parity(ids, scores, ids, scores)
    assert (same.overlap_10, same.overlap_50, same.rbo, same.kendall_tau) == (
        1.0,
        1.0,
        pytest.approx(1.0),
        1.0,
    )
    assert same.calibration_diff == 0.0 and same.shared_items == 50
    shifted = ranking_parity(ids, scores, ids[::-1], [s + 2.0 for s in scores])
    assert shifted.kendall_tau == pytest.approx(-1.0)
    assert shifted.overlap_50 == 1.0 and shifted.overlap_10 == 0.0
    assert shifted.calibration_diff == pytest.approx(2.0)


def test_overlap_counts_only_the_top_k():
    assert overlap_at([1, 2, 3, 4], [4, 3, 9, 8], 2) == 0.0
    assert overlap_at([1, 2, 3, 4], [4, 3, 2, 1], 4) == 1.0
