"""Evaluation and value-model formulas pinned to independent references (scipy, statsmodels)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.stats import mannwhitneyu

from rankers.engine.evaluation import auc, dcg, expected_calibration_error, log_loss, ndcg_at_k
from rankers.engine.value import ValueModelRegistry, ValueWeights, fit_survey_weights, rescale_like
from rankers.engine.world import HEADS


def test_auc_matches_mann_whitney_u_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(500) < 0.2
    p = np.round(rng.random(500) + 0.3 * y, 2)  # rounding creates ties
    u = mannwhitneyu(p[y], p[~y]).statistic  # scipy: U of the first sample, mid-ranks for ties
    assert auc(y, p) == pytest.approx(u / (y.sum() * (~y).sum()), rel=1e-12)
    assert math.isnan(auc(np.zeros(5), np.arange(5)))


def test_log_loss_and_ece():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.1, 0.6, 0.4])
    expected = -np.mean([math.log(0.9), math.log(0.9), math.log(0.6), math.log(0.6)])
    assert log_loss(y, p) == pytest.approx(expected)
    # Perfectly calibrated in expectation: large sample ECE is small; a 2x over-prediction is not.
    rng = np.random.default_rng(1)
    q = rng.random(200_000) * 0.2
    yy = rng.random(q.size) < q
    assert expected_calibration_error(yy, q) < 0.003
    assert expected_calibration_error(yy, 2 * q) > 0.05


def test_ndcg_hand_computed():
    served = np.array([3.0, 0.0, 2.0])
    all_gains = np.array([3.0, 2.0, 1.0, 0.0])
    ideal = 3 + 2 / math.log2(3) + 1 / math.log2(4)
    got = 3 + 0 + 2 / math.log2(4)
    assert dcg(served, 3) == pytest.approx(got)
    assert ndcg_at_k(served, all_gains, 3) == pytest.approx(got / ideal)
    assert ndcg_at_k(np.array([3.0, 2.0, 1.0]), all_gains, 3) == pytest.approx(1.0)
    assert math.isnan(ndcg_at_k(served, np.zeros(4), 3))


def test_survey_ols_matches_statsmodels():
    rng = np.random.default_rng(2)
    n = 4000
    y_pred = np.column_stack([rng.beta(1, 12, n) for _ in range(5)] + [rng.normal(1.5, 0.5, n)])
    true_w = np.array([0.3, 0.5, 0.6, -0.4, -0.5, 0.1])
    answers = (rng.random(n) < np.clip(0.2 + y_pred @ true_w, 0, 1)).astype(float)
    fit = fit_survey_weights(y_pred, answers)
    ref = sm.OLS(answers, sm.add_constant(y_pred)).fit()
    np.testing.assert_allclose([fit.weights[h] for h in HEADS], ref.params[1:], rtol=1e-6)
    np.testing.assert_allclose([fit.std_errors[h] for h in HEADS], ref.bse[1:], rtol=1e-6)
    assert fit.r2 == pytest.approx(ref.rsquared, rel=1e-9)
    # And the fit recovers the generating weights within a few standard errors.
    for k, h in enumerate(HEADS):
        assert abs(fit.weights[h] - true_w[k]) < 4 * fit.std_errors[h] + 1e-3


def test_survey_fit_shrinks_toward_the_parent_direction():
    rng = np.random.default_rng(3)
    n = 600
    base = rng.beta(1, 12, n)
    # Collinear predictions, small sample: OLS is unstable, the shrunk fit stays near the prior.
    y_pred = np.column_stack([base + rng.normal(0, 0.002, n) for _ in range(5)] + [rng.normal(1.5, 0.5, n)])
    prior = {"like": 1.0, "comment": 2.0, "share": 3.0, "hide": -4.0, "report": -8.0, "dwell": 0.2}
    w_prior = np.array([prior[h] for h in HEADS])
    answers = (rng.random(n) < np.clip(0.3 + 0.02 * (y_pred @ w_prior), 0, 1)).astype(float)
    fit = fit_survey_weights(y_pred, answers, prior=prior)
    assert fit.shrinkage > 0
    proposed = rescale_like(fit.weights, prior)
    cos = np.dot([proposed[h] for h in HEADS], w_prior) / (
        np.linalg.norm(w_prior) * np.linalg.norm([proposed[h] for h in HEADS])
    )
    assert cos > 0.9
    assert sum(abs(v) for v in proposed.values()) == pytest.approx(sum(abs(v) for v in prior.values()))


def test_value_registry_is_append_only_and_round_trips():
    reg = ValueModelRegistry()
    v2 = reg.propose({h: 1.0 for h in HEADS}, source="survey_fit")
    assert (reg.active, v2.version, v2.parent) == ("v1", "v2", "v1")
    reg.activate("v2")
    again = ValueModelRegistry.from_json(reg.to_json())
    assert again.active == "v2" and again.get("v1").weights == reg.get("v1").weights
    with pytest.raises(KeyError):
        reg.activate("v9")
    with pytest.raises(ValueError):
        ValueWeights("v3", {"like": 1.0})
    y = np.array([[0.1, 0.01, 0.01, 0.05, 0.0, 2.0]])
    assert reg.get("v1").score(y)[0] == pytest.approx(0.1 + 0.02 + 0.03 - 0.2 + 0.4)


def test_survey_fit_respects_the_value_model_signs():
    rng = np.random.default_rng(4)
    n = 3000
    y_pred = np.column_stack([rng.beta(1, 12, n) for _ in range(5)] + [rng.normal(1.5, 0.5, n)])
    # Data in which hides look *good* and comments look bad: the proposal must still keep
    # hide ≤ 0 and comment ≥ 0 (the value model's contract), at the bound.
    answers = (
        rng.random(n) < np.clip(0.3 + 0.8 * y_pred[:, 3] - 0.8 * y_pred[:, 1] + 0.5 * y_pred[:, 0], 0, 1)
    ).astype(float)
    prior = {"like": 1.0, "comment": 2.0, "share": 3.0, "hide": -4.0, "report": -8.0, "dwell": 0.2}
    fit = fit_survey_weights(y_pred, answers, prior=prior)
    assert fit.weights["hide"] <= 0 and fit.weights["report"] <= 0
    assert min(fit.weights["like"], fit.weights["comment"], fit.weights["share"], fit.weights["dwell"]) >= 0
    assert fit.weights["like"] > 0
    assert set(fit.cv_mse) == {"0.0", "0.01", "0.1", "1.0", "10.0", "100.0"}
