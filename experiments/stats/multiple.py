"""Multiple-testing adjustment of p-values.

With p_(1) ≤ … ≤ p_(m) the sorted p-values (adjusted values are then put back in the
input order and capped at 1):

- Bonferroni:  p̃_i = m·p_i.
- Holm (1979, *Scand. J. Statist.* 6:65–70), step-down FWER:
  p̃_(i) = max_{j ≤ i} (m − j + 1)·p_(j).
- Benjamini–Hochberg (1995, *JRSS B* 57:289–300), step-up FDR:
  p̃_(i) = min_{j ≥ i} m·p_(j)/j.
- Benjamini–Yekutieli (2001, *Ann. Statist.* 29:1165–1188), FDR under any dependence:
  BH multiplied by c(m) = Σ_{k=1}^m 1/k.

Reject ⇔ p̃ ≤ α.  Pinned to ``statsmodels.stats.multitest.multipletests`` with methods
``bonferroni``, ``holm``, ``fdr_bh``, ``fdr_by``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from experiments.stats.results import AdjustedPValues

__all__ = ["METHODS", "adjust_pvalues"]

METHODS = ("bonferroni", "holm", "bh", "by")
_ALIASES = {"fdr_bh": "bh", "fdr_by": "by", "benjamini-hochberg": "bh", "benjamini-yekutieli": "by"}


def adjust_pvalues(
    p: Sequence[float] | npt.NDArray[np.float64], method: str = "holm", alpha: float = 0.05
) -> AdjustedPValues:
    """Adjust p-values for multiplicity; see the module docstring for the formulas."""
    name = _ALIASES.get(method.lower(), method.lower())
    if name not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    pv = np.asarray(p, dtype=np.float64).reshape(-1)
    if pv.size == 0:
        return AdjustedPValues(name, alpha, (), ())
    if not np.all((pv >= 0.0) & (pv <= 1.0)):
        raise ValueError("p-values must lie in [0, 1]")
    m = pv.size
    if name == "bonferroni":
        adj = np.minimum(pv * m, 1.0)
    else:
        order = np.argsort(pv, kind="mergesort")
        ps = pv[order]
        ranks = np.arange(1, m + 1, dtype=np.float64)
        if name == "holm":
            sorted_adj = np.maximum.accumulate((m - ranks + 1.0) * ps)
        else:
            factor = 1.0 if name == "bh" else float(np.sum(1.0 / ranks))
            sorted_adj = np.minimum.accumulate((factor * m * ps / ranks)[::-1])[::-1]
        sorted_adj = np.minimum(sorted_adj, 1.0)
        adj = np.empty(m)
        adj[order] = sorted_adj
    return AdjustedPValues(name, alpha, tuple(float(v) for v in adj), tuple(bool(v) for v in adj <= alpha))
