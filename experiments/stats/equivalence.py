"""Equivalence (TOST), non-inferiority and one-sided superiority from a comparison.

TOST (Schuirmann 1987, "A comparison of the two one-sided tests procedure and the power
approach for assessing the equivalence of average bioavailability", *J. Pharmacokinet.
Biopharm.* 15:657–680)::

    H0: diff ≤ L  or  diff ≥ U          (L = −δ, U = +δ for a symmetric margin)
    p_lower = 1 − F((diff − L)/se)      (H0: diff ≤ L)
    p_upper = F((diff − U)/se)          (H0: diff ≥ U)
    p_TOST  = max(p_lower, p_upper);  equivalent ⇔ p_TOST < α ⇔ the (1 − 2α) CI ⊂ (L, U)

F is Student t with the comparison's Welch df, or N(0, 1) when df is None; pinned to
statsmodels ``ttost_ind(usevar='unequal')`` / ``ztost``.

Non-inferiority (e.g. Rothmann, Wiens & Chan, *Design and Analysis of Non-Inferiority
Trials*, 2011, ch. 1): a one-sided test against the margin,

    higher is better:  H0 diff ≤ −δ,  p = 1 − F((diff + δ)/se),  bound = diff − q_{1−α}·se
    lower is better:   H0 diff ≥ +δ,  p = F((diff − δ)/se),      bound = diff + q_{1−α}·se

non-inferior ⇔ p < α ⇔ the one-sided bound clears the margin.  δ = 0 is superiority.
A relative margin m means δ = m·|control mean| (the *unadjusted* control mean).
"""

from __future__ import annotations

import math

from experiments.stats import _dist
from experiments.stats.comparisons import welch
from experiments.stats.results import ComparisonResult, EquivalenceResult, NonInferiorityResult
from experiments.stats.statistics import MeanStatistic

__all__ = ["noninferiority", "superiority", "tost"]


def _as_result(
    result_or_stats: ComparisonResult | tuple[MeanStatistic, MeanStatistic], alpha: float
) -> ComparisonResult:
    if isinstance(result_or_stats, ComparisonResult):
        return result_or_stats
    control, treatment = result_or_stats
    return welch(control, treatment, alpha)


def _usable(result: ComparisonResult) -> str:
    """Empty when diff and se allow a test; else why not."""
    if result.diff is None or result.se is None or not result.se > 0.0:
        return result.reason or "the comparison has no standard error"
    return ""


def _absolute_margin(margin: float, relative: bool, result: ComparisonResult) -> tuple[float | None, str]:
    if not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin}")
    if not relative:
        return margin, ""
    if result.control_mean is None or result.control_mean == 0.0:
        return None, "control mean is 0: a relative margin is undefined"
    return margin * abs(result.control_mean), ""


def tost(
    result_or_stats: ComparisonResult | tuple[MeanStatistic, MeanStatistic],
    margin: float | tuple[float, float],
    alpha: float = 0.05,
    *,
    relative: bool = False,
) -> EquivalenceResult:
    """Two one-sided tests for equivalence (launch-neutrality).

    ``margin`` is δ > 0 (bounds ±δ) or a ``(lower, upper)`` pair with lower < upper;
    ``relative=True`` scales it by the unadjusted control mean.  Accepts a
    ``ComparisonResult`` (any method: Welch, CUPED, ratio, quantile…) or a
    ``(control, treatment)`` pair of ``MeanStatistic`` (Welch is run first).
    """
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5) for TOST, got {alpha}")
    result = _as_result(result_or_stats, alpha)
    delta: float | None
    if isinstance(margin, tuple):
        lo_m, hi_m = float(margin[0]), float(margin[1])
        if not lo_m < hi_m:
            raise ValueError(f"margin bounds must satisfy lower < upper, got {margin}")
        scale = 1.0
        reason = ""
        if relative:
            if result.control_mean is None or result.control_mean == 0.0:
                scale, reason = math.nan, "control mean is 0: a relative margin is undefined"
            else:
                scale = abs(result.control_mean)
        lower: float | None = lo_m * scale if not reason else None
        upper: float | None = hi_m * scale if not reason else None
        delta = None
    else:
        delta, reason = _absolute_margin(float(margin), relative, result)
        if delta is not None and delta == 0.0:
            reason = "margin is 0: equivalence within a zero-width region cannot be shown"
        lower, upper = (-delta, delta) if delta is not None else (None, None)
    why = reason or _usable(result)
    if why or lower is None or upper is None:
        return EquivalenceResult(
            margin=delta,
            lower=lower,
            upper=upper,
            diff=result.diff,
            se=result.se,
            df=result.df,
            p_lower=None,
            p_upper=None,
            p_value=None,
            ci=None,
            equivalent=False,
            alpha=alpha,
            computable=False,
            reason=why,
        )
    diff, se, df = result.diff, result.se, result.df
    assert diff is not None and se is not None  # guaranteed by _usable
    p_lower = _dist.floor_p(_dist.sf((diff - lower) / se, df))
    p_upper = _dist.floor_p(_dist.cdf((diff - upper) / se, df))
    p = max(p_lower, p_upper)
    half = _dist.quantile(1.0 - alpha, df) * se
    return EquivalenceResult(
        margin=delta,
        lower=lower,
        upper=upper,
        diff=diff,
        se=se,
        df=df,
        p_lower=p_lower,
        p_upper=p_upper,
        p_value=p,
        ci=(diff - half, diff + half),
        equivalent=p < alpha,
        alpha=alpha,
        computable=True,
        reason="",
    )


def noninferiority(
    result: ComparisonResult,
    margin: float,
    direction: str = "higher",
    alpha: float = 0.05,
    *,
    relative: bool = False,
) -> NonInferiorityResult:
    """One-sided non-inferiority test for guardrails.

    ``direction='higher'``: higher is better, the treatment may be at most δ worse
    (diff > −δ).  ``direction='lower'``: lower is better (latency, hide rate), the
    treatment may be at most δ higher (diff < +δ).  ``relative=True``: δ = margin·|ȳ_c|.
    """
    if direction not in ("higher", "lower"):
        raise ValueError(f"direction must be 'higher' or 'lower', got {direction!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    delta, reason = _absolute_margin(float(margin), relative, result)
    why = reason or _usable(result)
    threshold = None if delta is None else (-delta if direction == "higher" else delta)
    if why or threshold is None:
        return NonInferiorityResult(
            margin=delta,
            direction=direction,
            threshold=threshold,
            diff=result.diff,
            se=result.se,
            df=result.df,
            p_value=None,
            bound=None,
            noninferior=False,
            alpha=alpha,
            computable=False,
            reason=why,
        )
    diff, se, df = result.diff, result.se, result.df
    assert diff is not None and se is not None
    q = _dist.quantile(1.0 - alpha, df)
    stat = (diff - threshold) / se
    if direction == "higher":
        p = _dist.sf(stat, df)
        bound = diff - q * se
    else:
        p = _dist.cdf(stat, df)
        bound = diff + q * se
    p = _dist.floor_p(p)
    return NonInferiorityResult(
        margin=delta,
        direction=direction,
        threshold=threshold,
        diff=diff,
        se=se,
        df=df,
        p_value=p,
        bound=bound,
        noninferior=p < alpha,
        alpha=alpha,
        computable=True,
        reason="",
    )


def superiority(
    result: ComparisonResult, direction: str = "higher", alpha: float = 0.05
) -> NonInferiorityResult:
    """One-sided superiority: non-inferiority with δ = 0 (H0 diff ≤ 0 for 'higher')."""
    return noninferiority(result, 0.0, direction, alpha)
