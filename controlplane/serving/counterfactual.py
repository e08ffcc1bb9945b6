"""Counterfactual evaluation from logged rankings — pure numpy, no Django.

Exploration (the logging side)
------------------------------
With probability ``ε`` a request's top-``K`` is served in a uniformly random order ("RandTop-K",
Joachims, Swaminathan & Schnabel, "Unbiased Learning-to-Rank with Biased Feedback", WSDM 2017,
§5). The probability that the logging policy shows item ``i`` at position ``j < K`` is then::

    p(i, j) = (1 − ε)·1[j = rank(i)] + ε / K

and ``p = 1`` below the explored block. The shuffle is seeded by the request id, so a logged
request can be replayed.

Position bias
-------------
On explored requests every item of the top-K is equally likely at each position, so the mean
reward at position ``j`` is proportional to the examination probability ``θ_j`` of the
position-based click model (Richardson et al. 2007; Wang et al., "Learning to Rank with
Selection Bias in Personal Search", SIGIR 2016). :func:`position_bias` reports ``θ_j / θ_0``.

Off-policy value of a candidate ranking
---------------------------------------
The item-position IPS estimator (Li et al., "Offline Evaluation of Ranking Policies with Click
Models", KDD 2018, §4.2): with logged impressions ``(r, i, j, p, c)``::

    V̂(π) = (1/R) Σ_r Σ_{(i, j) ∈ r} c · 1[π puts i at j] / p(i, j)

unbiased under the item-position click model whenever the logging policy gives every
(item, position) pair the candidate uses a positive probability. The self-normalised variant
(SNIPS; Swaminathan & Joachims, NIPS 2015) divides by the mean importance weight instead of 1.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


def _request_rng(request_id: str) -> np.random.Generator:
    seed = int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "little")
    return np.random.default_rng(seed)


@dataclass(frozen=True, slots=True)
class ExploredList:
    order: list[int]  # indexes into the ranked list, in served order
    propensities: list[float]  # P(served item at its served position) under the logging policy
    explored: bool


def explore_top_k(request_id: str, n_items: int, epsilon: float, k: int = 10) -> ExploredList:
    """Apply RandTop-K exploration to a ranked list of ``n_items`` (see module docstring)."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError("epsilon must lie in [0, 1]")
    k = min(k, n_items)
    order = list(range(n_items))
    if epsilon <= 0.0 or k < 2:
        return ExploredList(order, [1.0] * n_items, False)
    rng = _request_rng(request_id)
    explored = bool(rng.random() < epsilon)
    if explored:
        order[:k] = [int(i) for i in rng.permutation(k)]
    props = [((1.0 - epsilon) * (order[j] == j) + epsilon / k) if j < k else 1.0 for j in range(n_items)]
    return ExploredList(order, props, explored)


@dataclass(frozen=True, slots=True)
class IpsEstimate:
    value: float
    se: float
    snips: float
    requests: int
    matched: int  # logged impressions whose (item, position) the candidate reproduces
    mean_weight: float  # ≈ 1 when the logging policy covers the candidate's choices

    def to_dict(self) -> dict[str, float | int]:
        return {
            "value": self.value,
            "se": self.se,
            "snips": self.snips,
            "requests": self.requests,
            "matched": self.matched,
            "mean_weight": self.mean_weight,
        }


def ips_value(
    request_index: npt.ArrayLike,
    logged_position: npt.ArrayLike,
    propensity: npt.ArrayLike,
    reward: npt.ArrayLike,
    candidate_position: npt.ArrayLike,
    n_requests: int | None = None,
) -> IpsEstimate:
    """Item-position IPS and SNIPS value of a candidate ranking policy (Li et al. 2018).

    Each array has one entry per logged impression: the request it belongs to (0..R−1), the
    position it was shown at, the logging propensity of that (item, position), the observed reward,
    and the position the candidate policy would give the same item in the same request (−1 when
    the candidate would not show it). Per-request sums make the standard error honest about
    within-request correlation: SE = sd(request sums) / sqrt(R).
    """
    req = np.asarray(request_index, dtype=np.int64)
    pos = np.asarray(logged_position, dtype=np.int64)
    p = np.asarray(propensity, dtype=float)
    c = np.asarray(reward, dtype=float)
    cand = np.asarray(candidate_position, dtype=np.int64)
    if not (req.shape == pos.shape == p.shape == c.shape == cand.shape):
        raise ValueError("all arrays need one entry per logged impression")
    if np.any(p <= 0) or np.any(p > 1):
        raise ValueError("propensities must lie in (0, 1]")
    r = int(n_requests if n_requests is not None else (req.max() + 1 if req.size else 0))
    if r == 0:
        return IpsEstimate(float("nan"), float("nan"), float("nan"), 0, 0, float("nan"))
    match = cand == pos
    weights = np.where(match, 1.0 / p, 0.0)
    per_request = np.bincount(req, weights=weights * c, minlength=r)
    value = float(per_request.mean())
    se = float(per_request.std(ddof=1) / np.sqrt(r)) if r > 1 else float("nan")
    # SNIPS, normalised per position: at a position j, E_log[w] = 1 when the logging policy covers
    # the candidate's item, so Σ w·c / Σ w replaces the 1/n_j of plain IPS there.
    width = int(pos.max()) + 1 if pos.size else 0
    num = np.bincount(pos, weights=weights * c, minlength=width)
    den = np.bincount(pos, weights=weights, minlength=width)
    n_at = np.bincount(pos, minlength=width).astype(float)
    covered = den > 0
    snips = float(np.sum(num[covered] / den[covered] * n_at[covered]) / r)
    mean_weight = float(weights.mean()) if weights.size else float("nan")
    return IpsEstimate(value, se, snips, r, int(match.sum()), mean_weight)


def position_bias(
    position: npt.ArrayLike, reward: npt.ArrayLike, explored: npt.ArrayLike, k: int = 10
) -> dict[str, list[float]]:
    """Relative examination θ_j/θ_0 for positions 0..k−1, from explored (RandTop-K) impressions.

    Returns the ratios, their delta-method standard errors and the impression counts. Only
    impressions of explored requests inside the shuffled block are used: there, item relevance is
    independent of position, so E[reward | j] = θ_j · E[relevance].
    """
    pos = np.asarray(position, dtype=np.int64)
    c = np.asarray(reward, dtype=float)
    mask = np.asarray(explored, dtype=bool) & (pos < k)
    counts = np.bincount(pos[mask], minlength=k)[:k].astype(float)
    sums = np.bincount(pos[mask], weights=c[mask], minlength=k)[:k]
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = sums / counts
        var = rate * (1 - rate) / counts  # Bernoulli variance of each mean
        ratio = rate / rate[0]
        # Var(a/b) ≈ (a/b)² (Var a / a² + Var b / b²) for independent position means.
        se = np.abs(ratio) * np.sqrt(var / rate**2 + var[0] / rate[0] ** 2)
    return {
        "relative_examination": [float(x) for x in ratio],
        "se": [float(x) for x in se],
        "impressions": [int(x) for x in counts],
    }
