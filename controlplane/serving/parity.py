"""Ranking parity between a live list and a shadow list — pure Python + numpy, no Django.

All functions take two ranked lists of item ids (best first) and, where scores matter, the
scores each stack gave its own items.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RBO_P = 0.9  # persistence: the top ~10 ranks carry ~86 % of the weight (Webber et al. 2010, §4.2)


def overlap_at(live: Sequence[int], shadow: Sequence[int], k: int) -> float:
    """|top-k(live) ∩ top-k(shadow)| / k (the share of the live top-k the shadow stack also shows)."""
    if k <= 0:
        raise ValueError("k must be positive")
    return len(set(live[:k]) & set(shadow[:k])) / k


def rbo_extrapolated(live: Sequence[int], shadow: Sequence[int], p: float = RBO_P) -> float:
    """Extrapolated rank-biased overlap of two lists evaluated to the same depth.

    Webber, Moffat & Zobel, "A similarity measure for indefinite rankings", ACM TOIS 28(4), 2010,
    eq. (32), with ``k`` the evaluation depth (the shorter list's length) and
    ``X_d = |S_{1:d} ∩ T_{1:d}|`` the overlap at depth ``d``::

        RBO_ext = (X_k / k) · p^k + (1 − p)/p · Σ_{d=1..k} (X_d / d) · p^d

    Identical lists score 1, disjoint lists 0; agreement at the top weighs most.
    """
    if not 0.0 < p < 1.0:
        raise ValueError("p must lie in (0, 1)")
    k = min(len(live), len(shadow))
    if k == 0:
        return 0.0
    seen_live: set[int] = set()
    seen_shadow: set[int] = set()
    overlap = 0
    total = 0.0
    weight = 1.0
    for d in range(1, k + 1):
        a, b = live[d - 1], shadow[d - 1]
        if a == b:
            overlap += 1
        else:
            overlap += (a in seen_shadow) + (b in seen_live)
        seen_live.add(a)
        seen_shadow.add(b)
        weight *= p
        total += overlap / d * weight
    return float(overlap / k * weight + (1.0 - p) / p * total)


def kendall_tau_b(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float | None:
    """Kendall's τ-b between two paired samples (None when fewer than two pairs or no variation).

    τ_b = (C − D) / sqrt((n0 − n1)(n0 − n2)) with n0 = n(n−1)/2 and n1, n2 the tied pairs in x and
    y (Kendall 1945; the default variant of ``scipy.stats.kendalltau``). O(n²), n ≤ a few hundred.
    """
    a = np.asarray(x, dtype=float)
    b = np.asarray(y, dtype=float)
    n = a.shape[0]
    if n < 2 or b.shape[0] != n:
        return None
    iu = np.triu_indices(n, k=1)
    da = np.sign(a[:, None] - a[None, :])[iu]
    db = np.sign(b[:, None] - b[None, :])[iu]
    n0 = n * (n - 1) / 2
    n1 = float(np.count_nonzero(da == 0))
    n2 = float(np.count_nonzero(db == 0))
    denominator = np.sqrt((n0 - n1) * (n0 - n2))
    if denominator == 0:
        return None
    return float(np.sum(da * db) / denominator)


@dataclass(frozen=True, slots=True)
class Parity:
    overlap_10: float
    overlap_50: float
    rbo: float
    kendall_tau: float | None
    shared_items: int
    calibration_diff: float | None


def ranking_parity(
    live_ids: Sequence[int],
    live_scores: Sequence[float],
    shadow_ids: Sequence[int],
    shadow_scores: Sequence[float],
) -> Parity:
    """Every per-request parity figure between a live and a shadow ranked list.

    Kendall τ compares the positions of the items both lists contain (how the two stacks order
    what they agree to show). The calibration difference is mean(shadow score) − mean(live score)
    over those shared items: zero when both stacks score the same posts alike, and it moves when
    a model is re-scaled or its features drift (train-serve skew).
    """
    live = [int(i) for i in live_ids]
    shadow = [int(i) for i in shadow_ids]
    live_pos = {item: pos for pos, item in enumerate(live)}
    shadow_pos = {item: pos for pos, item in enumerate(shadow)}
    shared = [item for item in live if item in shadow_pos]
    tau = kendall_tau_b([live_pos[i] for i in shared], [shadow_pos[i] for i in shared]) if shared else None
    calibration = None
    if shared:
        live_mean = float(np.mean([live_scores[live_pos[i]] for i in shared]))
        shadow_mean = float(np.mean([shadow_scores[shadow_pos[i]] for i in shared]))
        calibration = shadow_mean - live_mean
    return Parity(
        overlap_10=overlap_at(live, shadow, 10),
        overlap_50=overlap_at(live, shadow, 50),
        rbo=rbo_extrapolated(live, shadow),
        kendall_tau=tau,
        shared_items=len(shared),
        calibration_diff=calibration,
    )
