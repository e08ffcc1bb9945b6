"""Sample ratio mismatch: Pearson χ² of unit counts against the *configured* split.

    E_i = N·w_i / Σw,   χ² = Σ (O_i − E_i)² / E_i,   p = P(χ²_{k−1} ≥ χ²)

(Pearson 1900; Fabijan et al. 2019, "Diagnosing Sample Ratio Mismatch in Online Controlled
Experiments", KDD).  Flagged at p < 0.001, the conventional SRM threshold, which keeps
false alarms rare across the many arms and populations a program checks every day.
Pinned to ``scipy.stats.chisquare``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from experiments.stats import _dist
from experiments.stats.results import SrmResult

__all__ = ["SRM_THRESHOLD", "srm"]

SRM_THRESHOLD = 0.001


def srm(
    observed: Sequence[int], weights: Sequence[float] | None = None, *, threshold: float = SRM_THRESHOLD
) -> SrmResult:
    """χ² SRM test for any number of arms; ``weights`` default to an equal split.

    Raises ``ValueError`` for malformed input (negative counts, non-positive weights,
    mismatched lengths, fewer than two arms); zero units in total is not computable.
    """
    obs = [int(o) for o in observed]
    if len(obs) < 2:
        raise ValueError("srm needs at least two arms")
    if any(o < 0 for o in obs):
        raise ValueError(f"observed counts must be >= 0, got {obs}")
    w = [1.0] * len(obs) if weights is None else [float(v) for v in weights]
    if len(w) != len(obs):
        raise ValueError(f"{len(obs)} observed counts but {len(w)} weights")
    if any(not math.isfinite(v) or v <= 0.0 for v in w):
        raise ValueError(f"weights must be finite and > 0, got {w}")
    total = sum(obs)
    k = len(obs) - 1
    if total == 0:
        return SrmResult(
            None, k, None, False, tuple(obs), (0.0,) * len(obs), threshold, False, "no units observed"
        )
    w_total = sum(w)
    expected = tuple(total * v / w_total for v in w)
    chi2 = sum((o - e) ** 2 / e for o, e in zip(obs, expected, strict=True))
    p = _dist.chi2_sf(chi2, k)
    return SrmResult(chi2, k, p, p < threshold, tuple(obs), expected, threshold, True, "")
