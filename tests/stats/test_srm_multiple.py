"""SRM pinned to scipy.stats.chisquare; multiplicity pinned to statsmodels multipletests."""

import numpy as np
import pytest
import scipy.stats
from statsmodels.stats.multitest import multipletests

from experiments.stats import adjust_pvalues, srm


def test_srm_two_arms_matches_scipy():
    res = srm([50600, 49400], [0.5, 0.5])
    ref = scipy.stats.chisquare([50600, 49400], [50000, 50000])
    assert res.chi2 == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert res.flagged  # p ≈ 1.5e-4 < 0.001


def test_srm_against_a_configured_unequal_split_with_three_arms():
    observed = [1020, 4950, 4030]
    weights = [0.1, 0.5, 0.4]
    res = srm(observed, weights)
    ref = scipy.stats.chisquare(observed, np.array(weights) * sum(observed))
    assert res.df == 2
    assert res.chi2 == pytest.approx(ref.statistic, rel=1e-12)
    assert res.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert not res.flagged


def test_srm_one_percent_ramp_is_judged_against_its_own_split():
    # 1% treatment: 1000 of 100000 is exactly on target, although far from 50/50.
    assert not srm([99_000, 1_000], [0.99, 0.01]).flagged
    assert srm([99_000, 1_000], [0.5, 0.5]).flagged


def test_srm_edge_cases():
    empty = srm([0, 0])
    assert not empty.computable and not empty.flagged
    with pytest.raises(ValueError):
        srm([10, 10], [1.0, 0.0])
    with pytest.raises(ValueError):
        srm([10, -1])
    with pytest.raises(ValueError):
        srm([10, 10, 10], [0.5, 0.5])
    assert srm([10**7, 0]).p_value > 0.0  # underflow is floored, never exactly 0


@pytest.mark.parametrize(
    "method,sm", [("bonferroni", "bonferroni"), ("holm", "holm"), ("bh", "fdr_bh"), ("by", "fdr_by")]
)
def test_adjust_matches_statsmodels(method, sm):
    rng = np.random.default_rng(5)
    p = np.concatenate([rng.uniform(0, 0.05, 8), rng.uniform(0, 1, 12), [0.01, 0.01, 1.0]])  # ties included
    res = adjust_pvalues(p, method, alpha=0.05)
    reject, adjusted, _, _ = multipletests(p, alpha=0.05, method=sm)
    assert np.allclose(res.adjusted, adjusted, rtol=1e-12, atol=0)
    assert list(res.reject) == list(reject)


def test_adjust_contract_example():
    res = adjust_pvalues([0.01, 0.04, 0.2], "bonferroni")
    assert res.adjusted == pytest.approx((0.03, 0.12, 0.6))
    assert res.reject == (True, False, False)


def test_adjust_validates_input():
    with pytest.raises(ValueError, match="unknown method"):
        adjust_pvalues([0.1], "sidak-ish")
    with pytest.raises(ValueError):
        adjust_pvalues([1.5], "holm")
    assert adjust_pvalues([], "bh").adjusted == ()
