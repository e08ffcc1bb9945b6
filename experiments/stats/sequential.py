"""Always-valid sequential inference: the mixture sequential probability ratio test.

Method: **mSPRT with a normal mixture** (Robbins 1970, "Statistical methods related to the
law of the iterated logarithm", *Ann. Math. Statist.* 41:1397–1409; Johari, Koomen, Pekelis
& Walsh 2022, "Always Valid Inference: Continuous Monitoring of A/B Tests", *Operations
Research* 70(3):1806–1821, §4 — the method behind Optimizely's Stats Engine).

At every look the comparison gives an estimate θ̂ of treatment − control with variance
V = se² (Welch, CUPED, delta-method ratio, quantile — any asymptotically normal
estimator).  In information time I = 1/V, S = θ̂/V is a Brownian motion with drift θ, so
mixing its likelihood ratio against H0: θ = θ0 over θ − θ0 ~ N(0, τ²) gives a
non-negative martingale under H0 (Johari et al. eq. 11 with V in place of 2σ²/n)::

    Λ = sqrt(V/(V + τ²)) · exp( τ²(θ̂ − θ0)² / (2V(V + τ²)) )

By Ville's inequality P(sup_n Λ_n ≥ 1/α) ≤ α, so

- the always-valid p-value p_n = min(p_{n−1}, 1/Λ_n) may be watched continuously;
- the confidence sequence {θ0 : Λ_n(θ0) < 1/α} is θ̂ ± h with
  h² = V(V + τ²)/τ² · (2·log(1/α) + log((V + τ²)/V)), intersected over looks.

Non-inferiority (guardrails) and one-sided superiority use the half-normal mixture over
alternatives on the good side only, θ − θ0 ~ N⁺(0, τ²), which stays a super-martingale
under the whole composite null (θ ≤ θ0 for "higher is better")::

    Λ⁺ = 2·sqrt(V/(V + τ²)) · exp(τ²Δ²/(2V(V + τ²))) · Φ(τΔ / sqrt(V(V + τ²)))

with Δ = θ̂ − θ0 ("higher") or θ0 − θ̂ ("lower") and θ0 = ∓δ.  The always-valid one-sided
bound is θ̂ ∓ Δ* with Λ⁺(Δ*) = 1/α (bracketed by the two-sided half-widths at 2α and α).

The mixing scale τ should be the size of effect one hopes to detect; the default is 0.1
per-unit standard deviations (a small standardised effect), fixed at the first look and
carried forward through ``previous`` so the martingale argument holds.  The guarantee is
exact for Gaussian increments with known variance and asymptotic with estimated
variances (Johari et al. §4.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.optimize import brentq
from scipy.special import log_ndtr

from experiments.stats import _dist
from experiments.stats.results import ComparisonResult, Interval, _ToDict

__all__ = ["DEFAULT_MIXTURE_SD_UNITS", "SequentialPath", "SequentialResult", "msprt", "msprt_path"]

DEFAULT_MIXTURE_SD_UNITS = 0.1
_LOG2 = math.log(2.0)


@dataclass(frozen=True, slots=True)
class SequentialResult(_ToDict):
    """State of an always-valid test after the latest look (pass it back as ``previous``)."""

    method: str
    direction: str
    null: float
    alpha: float
    mixture_sd: float | None
    diff: float | None
    se: float | None
    log_lr: float | None
    p_value: float | None
    ci: Interval | None
    bound: float | None
    reject: bool
    looks: int
    computable: bool
    reason: str


def _half_width(v: float, tau2: float, alpha: float) -> float:
    return math.sqrt(v * (v + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + math.log((v + tau2) / v)))


def _log_lr_two_sided(delta: float, v: float, tau2: float) -> float:
    return 0.5 * math.log(v / (v + tau2)) + tau2 * delta * delta / (2.0 * v * (v + tau2))


def _log_lr_one_sided(delta: float, v: float, tau2: float) -> float:
    s = math.sqrt(v * (v + tau2))
    return (
        _LOG2
        + 0.5 * math.log(v / (v + tau2))
        + tau2 * delta * delta / (2.0 * v * (v + tau2))
        + float(log_ndtr(math.sqrt(tau2) * delta / s))
    )


def _one_sided_reach(v: float, tau2: float, alpha: float) -> float:
    """Δ* > 0 with Λ⁺(Δ*) = 1/α: how far the bound sits from θ̂."""
    target = math.log(1.0 / alpha)
    lo = _half_width(v, tau2, min(2.0 * alpha, 0.999))
    hi = _half_width(v, tau2, alpha)
    if hi <= lo:
        return hi
    return float(
        brentq(lambda d: _log_lr_one_sided(d, v, tau2) - target, lo, hi, xtol=1e-14 * hi, rtol=1e-12)
    )


def _default_tau(result: ComparisonResult) -> float | None:
    vc, vt = result.control_variance, result.treatment_variance
    if vc is None or vt is None:
        return None
    sd = math.sqrt((vc + vt) / 2.0)
    return DEFAULT_MIXTURE_SD_UNITS * sd if sd > 0.0 else None


def msprt(
    result: ComparisonResult,
    alpha: float = 0.05,
    *,
    direction: str = "two-sided",
    margin: float = 0.0,
    relative: bool = False,
    mixture_sd: float | None = None,
    previous: SequentialResult | None = None,
) -> SequentialResult:
    """One look of the always-valid test on a (cumulative) comparison.

    ``direction='two-sided'`` tests H0: diff = 0 (superiority either way) and reports the
    confidence sequence ``ci``.  ``'higher'`` / ``'lower'`` test non-inferiority against
    −δ / +δ (δ = ``margin``, or margin·|ȳ_c| with ``relative``; δ = 0 is one-sided
    superiority) and report the always-valid one-sided ``bound``.  Chain looks with
    ``previous`` to carry the running minimum p-value, the intersected interval and τ.
    """
    if direction not in ("two-sided", "higher", "lower"):
        raise ValueError(f"direction must be 'two-sided', 'higher' or 'lower', got {direction!r}")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")
    if margin < 0.0 or not math.isfinite(margin):
        raise ValueError(f"margin must be finite and >= 0, got {margin}")
    if direction == "two-sided" and margin != 0.0:
        raise ValueError("a margin needs direction 'higher' or 'lower'")
    if previous is not None and (previous.direction != direction or previous.alpha != alpha):
        raise ValueError("previous look used a different direction or alpha")
    looks = (previous.looks if previous is not None else 0) + 1
    tau = mixture_sd
    if tau is None and previous is not None:
        tau = previous.mixture_sd
    if tau is None:
        tau = _default_tau(result)
    delta_margin = margin
    reason = ""
    if relative and margin > 0.0:
        if result.control_mean is None or result.control_mean == 0.0:
            reason = "control mean is 0: a relative margin is undefined"
        else:
            delta_margin = margin * abs(result.control_mean)
    null = 0.0 if direction == "two-sided" else (-delta_margin if direction == "higher" else delta_margin)
    if not reason and (result.diff is None or result.se is None or not result.se > 0.0):
        reason = result.reason or "the comparison has no standard error"
    if not reason and (tau is None or not tau > 0.0):
        reason = "mixture_sd is undefined (zero variance): pass mixture_sd explicitly"
    if reason:
        return SequentialResult(
            "msprt-normal-mixture", direction, null, alpha, tau, result.diff, result.se, None,
            previous.p_value if previous else None, previous.ci if previous else None,
            previous.bound if previous else None, previous.reject if previous else False, looks, False, reason,
        )  # fmt: skip
    assert tau is not None and result.diff is not None and result.se is not None
    v = result.se * result.se
    tau2 = tau * tau
    diff = result.diff
    ci: Interval | None = None
    bound: float | None = None
    if direction == "two-sided":
        log_lr = _log_lr_two_sided(diff - null, v, tau2)
        h = _half_width(v, tau2, alpha)
        ci = (diff - h, diff + h)
        if previous is not None and previous.ci is not None:
            ci = (max(ci[0], previous.ci[0]), min(ci[1], previous.ci[1]))
            if ci[0] > ci[1]:  # empty intersection: only possible when the model is wrong
                ci = (diff - h, diff + h)
    else:
        d = diff - null if direction == "higher" else null - diff
        log_lr = _log_lr_one_sided(d, v, tau2)
        reach = _one_sided_reach(v, tau2, alpha)
        bound = diff - reach if direction == "higher" else diff + reach
        if previous is not None and previous.bound is not None:
            bound = max(bound, previous.bound) if direction == "higher" else min(bound, previous.bound)
    # p = min(1, 1/Λ); computed from log Λ so that neither tail overflows.
    p = 1.0 if log_lr <= 0.0 else _dist.floor_p(math.exp(-log_lr) if log_lr < 745.0 else 0.0)
    if previous is not None and previous.p_value is not None:
        p = min(p, previous.p_value)
    return SequentialResult(
        "msprt-normal-mixture",
        direction,
        null,
        alpha,
        tau,
        diff,
        result.se,
        log_lr,
        p,
        ci,
        bound,
        p < alpha,
        looks,
        True,
        "",
    )


@dataclass(frozen=True, slots=True)
class SequentialPath:
    """Vectorised always-valid statistics along looks (last axis), e.g. for a readout chart."""

    log_lr: npt.NDArray[np.float64]
    p_value: npt.NDArray[np.float64]
    ci_lower: npt.NDArray[np.float64] | None
    ci_upper: npt.NDArray[np.float64] | None
    bound: npt.NDArray[np.float64] | None
    reject: npt.NDArray[np.bool_]


def msprt_path(
    diffs: npt.ArrayLike,
    variances: npt.ArrayLike,
    mixture_sd: float | npt.ArrayLike,
    alpha: float = 0.05,
    *,
    direction: str = "two-sided",
    null: float = 0.0,
) -> SequentialPath:
    """The same test over many looks at once: ``diffs``/``variances`` are θ̂ and se² with
    looks on the last axis (any leading axes, e.g. simulations).  Running minimum
    p-values and running intersections of the intervals/bounds, as ``msprt`` chains them.
    """
    if direction not in ("two-sided", "higher", "lower"):
        raise ValueError(f"direction must be 'two-sided', 'higher' or 'lower', got {direction!r}")
    d = np.asarray(diffs, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)
    tau2 = np.asarray(mixture_sd, dtype=np.float64) ** 2
    if tau2.ndim:
        tau2 = tau2[..., None]
    ratio = v / (v + tau2)
    quad = tau2 / (2.0 * v * (v + tau2))
    ci_lo = ci_hi = bound = None
    if direction == "two-sided":
        log_lr = 0.5 * np.log(ratio) + quad * (d - null) ** 2
        h = np.sqrt(v * (v + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + np.log((v + tau2) / v)))
        ci_lo = np.maximum.accumulate(d - h, axis=-1)
        ci_hi = np.minimum.accumulate(d + h, axis=-1)
    else:
        delta = d - null if direction == "higher" else null - d
        s = np.sqrt(v * (v + tau2))
        log_lr = _LOG2 + 0.5 * np.log(ratio) + quad * delta**2 + log_ndtr(np.sqrt(tau2) * delta / s)
        # Vectorised bisection for Δ* (Λ⁺ is increasing in Δ), bracketed as in msprt.
        target = math.log(1.0 / alpha)
        lo = np.sqrt(
            v * (v + tau2) / tau2 * (2.0 * math.log(1.0 / min(2 * alpha, 0.999)) + np.log((v + tau2) / v))
        )
        hi = np.sqrt(v * (v + tau2) / tau2 * (2.0 * math.log(1.0 / alpha) + np.log((v + tau2) / v)))
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            val = _LOG2 + 0.5 * np.log(ratio) + quad * mid**2 + log_ndtr(np.sqrt(tau2) * mid / s)
            up = val < target
            lo = np.where(up, mid, lo)
            hi = np.where(up, hi, mid)
        reach = 0.5 * (lo + hi)
        if direction == "higher":
            bound = np.maximum.accumulate(d - reach, axis=-1)
        else:
            bound = np.minimum.accumulate(d + reach, axis=-1)
    p = np.minimum.accumulate(np.clip(np.exp(-np.clip(log_lr, 0.0, 700.0)), _dist.P_FLOOR, 1.0), axis=-1)
    return SequentialPath(log_lr, p, ci_lo, ci_hi, bound, p < alpha)
