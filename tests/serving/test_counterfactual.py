"""Exploration propensities, IPS unbiasedness and position-bias recovery on a known click model."""

from __future__ import annotations

import numpy as np
import pytest

from controlplane.serving.counterfactual import explore_top_k, ips_value, position_bias

K, EPS = 5, 0.4
THETA = (1.0 + np.arange(K)) ** -0.7  # examination probability per position (position-based model)


def test_explored_positions_follow_the_logged_propensities():
    counts = np.zeros((K, K))
    n = 20_000
    for r in range(n):
        explored = explore_top_k(f"req-{r}", K, EPS, k=K)
        for position, item in enumerate(explored.order):
            counts[item, position] += 1
        # Logged propensity of what was served equals the policy's probability of that placement.
        for position, item in enumerate(explored.order):
            expected = (1 - EPS) * (item == position) + EPS / K
            assert explored.propensities[position] == pytest.approx(expected)
    freq = counts / n
    expected = (1 - EPS) * np.eye(K) + EPS / K
    assert np.abs(freq - expected).max() < 0.015
    assert explore_top_k("any", 10, 0.0).explored is False


def _simulate(n_requests: int, seed: int):
    """Logging policy: identity order with RandTop-K; clicks = examination(position) × relevance(item)."""
    rng = np.random.default_rng(seed)
    # The logging order is good: item i's relevance falls with i, so reordering changes the value.
    relevance = np.array([0.8, 0.6, 0.4, 0.25, 0.1])[None, :] * rng.uniform(0.5, 1.0, size=(n_requests, K))
    req, pos, prop, reward, items, explored_flags = [], [], [], [], [], []
    for r in range(n_requests):
        explored = explore_top_k(f"s{seed}-{r}", K, EPS, k=K)
        for position, item in enumerate(explored.order):
            click = rng.random() < THETA[position] * relevance[r, item]
            req.append(r)
            pos.append(position)
            prop.append(explored.propensities[position])
            reward.append(float(click))
            items.append(item)
            explored_flags.append(explored.explored)
    return relevance, *(np.array(a) for a in (req, pos, prop, reward, items, explored_flags))


def test_ips_is_unbiased_for_a_different_ranking():
    relevance, req, pos, prop, reward, items, _ = _simulate(30_000, seed=1)
    candidate_order = np.array([3, 1, 4, 0, 2])  # candidate puts item candidate_order[j] at position j
    candidate_position = np.argsort(candidate_order)[items]
    estimate = ips_value(req, pos, prop, reward, candidate_position)
    # Ground truth: expected clicks per request when the candidate's order is served.
    truth = float(np.mean(np.sum(THETA[None, :] * relevance[:, candidate_order], axis=1)))
    assert abs(estimate.value - truth) < 3 * estimate.se
    assert abs(estimate.snips - truth) < 3 * estimate.se
    assert estimate.mean_weight == pytest.approx(1.0, abs=0.05)
    # The naive logged mean measures the logging policy, not the candidate.
    deterministic = np.sum(THETA[None, :] * relevance, axis=1)
    shuffled = THETA.mean() * relevance.sum(axis=1)
    logged_truth = float(np.mean((1 - EPS) * deterministic + EPS * shuffled))
    assert abs(reward.sum() / 30_000 - logged_truth) < 0.02
    assert abs(truth - logged_truth) > 4 * estimate.se


def test_position_bias_recovers_the_examination_curve():
    _, _req, pos, _, reward, _, explored = _simulate(30_000, seed=2)
    bias = position_bias(pos, reward, explored, k=K)
    ratio = np.array(bias["relative_examination"])
    se = np.array(bias["se"])
    expected = THETA / THETA[0]
    assert np.all(np.abs(ratio[1:] - expected[1:]) < 4 * se[1:] + 1e-9)
    assert ratio[0] == 1.0 and np.all(np.diff(ratio) < 0.05)


def test_ips_refuses_bad_propensities():
    with pytest.raises(ValueError):
        ips_value([0], [0], [0.0], [1.0], [0])
