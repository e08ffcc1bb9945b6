"""Difference of quantiles (e.g. p99 latency) with a bootstrap-free confidence interval.

Method (Price & Bonett 2002, "Distribution-free confidence intervals for difference and
ratio of medians", *J. Statist. Comput. Simul.* 72:119–124, generalised from the median to
any quantile q, as in Bonett & Price 2002 for quantiles):

1. Per arm, the point estimate is the order statistic x_(⌈nq⌉) (numpy's
   ``method='inverted_cdf'``).
2. Per arm, the exact distribution-free order-statistic interval [x_(l), x_(u)] for the
   q-quantile (Hahn & Meeker, *Statistical Intervals*, §5.2): with K ~ Binomial(n, q),
   l = F_K⁻¹(α/2) and u = F_K⁻¹ from the upper tail at α/2 (1-based ranks as in
   ``scipy.stats.quantile_test(...).confidence_interval``, to which this is pinned).
3. The interval's span gives the arm's standard error through the sparsity estimate of
   the asymptotic variance q(1 − q)/(n·f(ξ_q)²) of a sample quantile (Bloch & Gastwirth
   1968, *Ann. Math. Statist.* 39:1083–1085; Hall & Sheather 1988, *JRSS B* 50:381–391),
   with the binomial ranks as the bandwidth:  1/f ≈ (x_(u) − x_(l)) / ((u − l)/n), so
   se = sqrt(n·q(1 − q))·(x_(u) − x_(l)) / (u − l).  When u − l = 2·z_{1−α/2}·sqrt(nq(1 − q))
   this is the McKean–Schrader (1984) estimator (x_(u) − x_(l))/(2z) used by Price & Bonett;
   dividing by the actual rank gap removes the excess width that the discreteness of the
   binomial adds (which made the pooled interval over-cover, ≈ 96.7% instead of 95%).
4. The arms are independent: diff = q̂_t − q̂_c, se² = se²_t + se²_c, z-test and
   diff ± z_{1−α/2}·se.  The relative lift uses the delta method as for means.

Assumes independent observations: pass one value per randomisation unit (e.g. each
user's p99 or each user's latency sample).  Many correlated samples per user make the
interval too narrow.  Quantile estimates are not additive: they need the raw values.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.special import bdtr, bdtrc, ndtri

from experiments.stats.comparisons import _check_alpha, _compare, _empty_result
from experiments.stats.results import ComparisonResult

__all__ = ["quantile_diff", "quantile_interval"]


def _binom_ppf(prob: float, n: int, p: float) -> int:
    """Smallest k with P(K ≤ k) ≥ prob, K ~ Binomial(n, p) (as ``scipy.stats.binom.ppf``)."""
    k = int(max(0, min(n, math.floor(n * p + ndtri(prob) * math.sqrt(n * p * (1 - p))))))
    while k < n and bdtr(k, n, p) < prob:
        k += 1
    while k > 0 and bdtr(k - 1, n, p) >= prob:
        k -= 1
    return k


def _binom_isf(prob: float, n: int, p: float) -> int:
    """Smallest k with P(K > k) ≤ prob (as ``scipy.stats.binom.isf``)."""
    k = int(max(0, min(n, math.floor(n * p - ndtri(prob) * math.sqrt(n * p * (1 - p))))))
    while k < n and bdtrc(k, n, p) > prob:
        k += 1
    while k > 0 and bdtrc(k - 1, n, p) <= prob:
        k -= 1
    return k


def quantile_interval(
    values: npt.ArrayLike, q: float, alpha: float = 0.05
) -> tuple[float, tuple[float, float] | None, int]:
    """(point estimate, distribution-free (1 − α) interval or None when n is too small, n)."""
    point, ci, n, _ = _quantile_interval_ranks(values, q, alpha)
    return point, ci, n


def _quantile_interval_ranks(
    values: npt.ArrayLike, q: float, alpha: float
) -> tuple[float, tuple[float, float] | None, int, int]:
    """As ``quantile_interval`` plus the rank gap u − l of the interval's order statistics."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = int(x.shape[0])
    if n == 0:
        return math.nan, None, 0, 0
    if not np.isfinite(x).all():
        raise ValueError("values contain NaN or infinity")
    k = max(0, math.ceil(n * q) - 1)  # 0-based index of x_(⌈nq⌉)
    lo = _binom_ppf(alpha / 2.0, n, q) - 1
    hi = _binom_isf(alpha / 2.0, n, q)
    kth = sorted({k, *(i for i in (lo, hi) if 0 <= i < n)})
    part = np.partition(x, kth)
    point = float(part[k])
    if lo < 0 or hi >= n:
        return point, None, n, 0
    return point, (float(part[lo]), float(part[hi])), n, hi - lo


def quantile_diff(
    control: npt.ArrayLike, treatment: npt.ArrayLike, q: float = 0.99, alpha: float = 0.05
) -> ComparisonResult:
    """Treatment − control difference of the q-quantile, z-based (df = None).

    Use with ``noninferiority(result, margin, direction='lower')`` for a p99 latency guardrail.
    """
    _check_alpha(alpha)
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    method = f"quantile-p{q * 100:g}"
    qc, ci_c, n_c, gap_c = _quantile_interval_ranks(control, q, alpha)
    qt, ci_t, n_t, gap_t = _quantile_interval_ranks(treatment, q, alpha)
    if n_c == 0 or n_t == 0:
        empty = " and ".join(a for a, n in (("control", n_c), ("treatment", n_t)) if n == 0)
        return _empty_result(method, alpha, n_c, n_t, f"empty arm: {empty} has no units")
    if ci_c is None or ci_t is None:
        small = " and ".join(a for a, c in (("control", ci_c), ("treatment", ci_t)) if c is None)
        return _empty_result(
            method,
            alpha,
            n_c,
            n_t,
            f"{small} has too few units for an order-statistic interval of the {q:g} quantile",
            control_mean=qc,
            treatment_mean=qt,
            diff=qt - qc,
        )
    se_c = math.sqrt(n_c * q * (1.0 - q)) * (ci_c[1] - ci_c[0]) / gap_c
    se_t = math.sqrt(n_t * q * (1.0 - q)) * (ci_t[1] - ci_t[0]) / gap_t
    # Per-unit "variances" n·se² so results read like the other methods (and the
    # sequential test's default mixture scale is defined).
    return _compare(
        method, alpha, n_c, n_t, qc, qt, n_c * se_c * se_c, n_t * se_t * se_t, False, "delta",
        b_c=se_c * se_c, b_t=se_t * se_t,
    )  # fmt: skip
