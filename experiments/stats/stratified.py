"""Stratified (pooled) estimate across legacy populations.

On a surface each user is served by one legacy stack, so an experiment has one
comparison per legacy population (unified vs content-first, unified vs interest-first;
DESIGN.md).  The pooled effect is a weighted sum of the per-stratum effects
(Cochran, *Sampling Techniques*, 3rd ed. 1977, §5.3, stratified mean)::

    diff = Σ_s w_s·diff_s,   se² = Σ_s w_s²·se_s²,   Σ w_s = 1

with independent strata (units are randomised within each population).  Weighting:

- ``"population"`` (default): w_s = the stratum's share of units, (n_c,s + n_t,s)/Σ, or the
  explicit ``weights`` (e.g. each population's share of the surface's traffic, which is
  the estimand "effect of moving the whole surface").  Unbiased for that estimand.
- ``"inverse_variance"``: w_s ∝ 1/se_s², the fixed-effect meta-analysis estimate
  (most precise, but it estimates a precision-weighted effect; pinned to statsmodels
  ``combine_effects``).

z-test on the pooled difference.  The pooled relative lift is Σw·ȳ_t / Σw·ȳ_c − 1 with the
delta method, Var(Σw·ȳ_arm) = Σ w²·se²_arm,s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from experiments.stats.comparisons import _check_alpha, _compare, _empty_result
from experiments.stats.results import ComparisonResult, _ToDict

__all__ = ["StratifiedResult", "stratified"]


@dataclass(frozen=True, slots=True)
class StratifiedResult(_ToDict):
    """The pooled comparison, the weights used, and the per-stratum results."""

    pooled: ComparisonResult
    weighting: str
    strata: tuple[str, ...]
    weights: tuple[float, ...]
    per_stratum: tuple[ComparisonResult, ...]


def stratified(
    results: Mapping[str, ComparisonResult] | Sequence[ComparisonResult],
    weights: Mapping[str, float] | Sequence[float] | None = None,
    alpha: float = 0.05,
    *,
    weighting: str = "population",
) -> StratifiedResult:
    """Pool per-population comparisons into one estimate (see the module docstring)."""
    _check_alpha(alpha)
    if weighting not in ("population", "inverse_variance"):
        raise ValueError(f"weighting must be 'population' or 'inverse_variance', got {weighting!r}")
    if isinstance(results, Mapping):
        names = tuple(results)
        items = tuple(results[k] for k in names)
    else:
        items = tuple(results)
        names = tuple(f"stratum_{i}" for i in range(len(items)))
    if not items:
        raise ValueError("stratified needs at least one stratum")
    n_c = sum(r.n_control for r in items)
    n_t = sum(r.n_treatment for r in items)
    method = f"stratified-{weighting.replace('_', '-')}"
    bad: list[str] = []
    arm_c: list[tuple[float, float]] = []  # (mean, se² of the mean) per stratum
    arm_t: list[tuple[float, float]] = []
    for name, r in zip(names, items, strict=True):
        mc = r.control_mean_adjusted if r.control_mean_adjusted is not None else r.control_mean
        mt = r.treatment_mean_adjusted if r.treatment_mean_adjusted is not None else r.treatment_mean
        if (
            r.se is None
            or not r.se > 0.0
            or r.control_se is None
            or r.treatment_se is None
            or mc is None
            or mt is None
        ):
            bad.append(f"{name} ({r.reason or 'no standard error'})")
            continue
        # Each arm's (CUPED-adjusted where applicable) mean, so Σw·ȳ_t − Σw·ȳ_c = Σw·diff.
        arm_c.append((mc, r.control_se**2))
        arm_t.append((mt, r.treatment_se**2))
    if bad:
        return StratifiedResult(
            _empty_result(method, alpha, n_c, n_t, "stratum not computable: " + "; ".join(bad)),
            weighting, names, (), items,
        )  # fmt: skip
    if weighting == "inverse_variance":
        if weights is not None:
            raise ValueError("explicit weights only go with weighting='population'")
        raw = [1.0 / (c[1] + t[1]) for c, t in zip(arm_c, arm_t, strict=True)]
    elif weights is None:
        raw = [float(r.n_control + r.n_treatment) for r in items]
    elif isinstance(weights, Mapping):
        raw = [float(weights[k]) for k in names]
    else:
        raw = [float(w) for w in weights]
    if len(raw) != len(items) or any(not math.isfinite(w) or w < 0 for w in raw) or sum(raw) <= 0:
        raise ValueError(f"weights must be {len(items)} finite non-negative numbers with a positive sum")
    total = sum(raw)
    w = tuple(v / total for v in raw)
    m_c = sum(wi * m for wi, (m, _) in zip(w, arm_c, strict=True))
    m_t = sum(wi * m for wi, (m, _) in zip(w, arm_t, strict=True))
    b_c = sum(wi * wi * b for wi, (_, b) in zip(w, arm_c, strict=True))
    b_t = sum(wi * wi * b for wi, (_, b) in zip(w, arm_t, strict=True))
    extra: dict[str, Any] = {}
    cuped_parts = [
        (r.control_mean, r.treatment_mean, r.control_mean_variance, r.diff_control_covariance)
        for r in items
        if r.control_mean_adjusted is not None
    ]
    parts = [
        (mc0, mt0, v, c)
        for mc0, mt0, v, c in cuped_parts
        if mc0 is not None and mt0 is not None and v is not None and c is not None
    ]
    if items and len(parts) == len(items):
        # CUPED strata (DESIGN.md): the pooled relative lift is Σw·D_s over the pooled UNADJUSTED
        # control mean Σw·ȳ_c,s; strata are independent, so Var and Cov add with weights w².
        m0 = sum(wi * mc0 for wi, (mc0, _mt, _v, _c) in zip(w, parts, strict=True))
        v0 = sum(wi * wi * v for wi, (_m, _mt, v, _c) in zip(w, parts, strict=True))
        c0 = sum(wi * wi * c for wi, (_m, _mt, _v, c) in zip(w, parts, strict=True))
        extra = {
            "rel_over": (m0, v0, c0),
            "report_c": m0,
            "report_t": sum(wi * mt0 for wi, (_m, mt0, _v, _c) in zip(w, parts, strict=True)),
        }
    pooled = _compare(
        method, alpha, n_c, n_t, m_c, m_t, None, None, False, "delta", b_c=b_c, b_t=b_t, **extra
    )
    return StratifiedResult(pooled, weighting, names, w, items)
