"""Power, minimum detectable effect, sample size and duration for two-arm z tests.

For a metric with coefficient of variation cv = σ/μ, a relative effect m (Δ = m·μ), a
treatment share s of the experiment's units (s = 0.5 is an even split; a 1% ramp against
the remaining 99% is s = 0.01) and CUPED with pre-period correlation ρ (the adjusted
variance is σ²(1 − ρ²), Deng et al. 2013 §3.2), the standard error of the difference with
N units in total is

    se = cv·μ·sqrt((1 − ρ²)·(1/(sN) + 1/((1 − s)N)))

and the two-sided power is (e.g. Chow, Shao & Wang, *Sample Size Calculations in Clinical
Research*, 2nd ed. 2008, §3.2; the same as statsmodels ``NormalIndPower``)

    power = Φ(Δ/se − z_{1−α/2}) + Φ(−Δ/se − z_{1−α/2}).

Ignoring the far tail gives the textbook closed form
N = (z_{1−α/2} + z_{power})²·cv²(1 − ρ²)(1/s + 1/(1 − s))/m², which is refined here by a
root search on the exact two-tail equation so the numbers equal statsmodels'.

TOST power for a neutrality margin ±δ with true difference Δ (Chow, Shao & Wang §3.2.3;
normal approximation):

    power = max(0, Φ((δ − Δ)/se − z_{1−α}) + Φ((δ + Δ)/se − z_{1−α}) − 1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.special import ndtr, ndtri

from experiments.stats.results import _ToDict

__all__ = [
    "SampleSize",
    "days_needed",
    "mde",
    "power",
    "sample_size",
    "tost_power",
    "tost_sample_size",
]


@dataclass(frozen=True, slots=True)
class SampleSize(_ToDict):
    """Units needed.  ``n_per_arm`` is the treatment arm's size (the arm with share
    ``split``); for an even split both arms need it.  ``n_per_arm_rounded`` rounds up."""

    n_per_arm: float
    n_per_arm_rounded: int
    n_treatment: float
    n_control: float
    n_total: float
    n_total_rounded: int
    split: float
    alpha: float
    power: float
    cv: float
    rel_mde: float
    cuped_rho: float
    variance_factor: float
    days: int | None


def _validate(cv: float, alpha: float, split: float, cuped_rho: float) -> None:
    if not (math.isfinite(cv) and cv > 0):
        raise ValueError(f"cv must be > 0, got {cv}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 0 < split < 1:
        raise ValueError(f"split must be in (0, 1), got {split}")
    if not -1 < cuped_rho < 1:
        raise ValueError(f"cuped_rho must be in (-1, 1), got {cuped_rho}")


def _se_per_total(cv: float, split: float, cuped_rho: float) -> float:
    """se·sqrt(N)/μ: the relative standard error of the difference at N = 1."""
    return cv * math.sqrt((1.0 - cuped_rho**2) * (1.0 / split + 1.0 / (1.0 - split)))


def power(
    *,
    cv: float,
    rel_effect: float,
    n_treatment: float,
    n_control: float,
    alpha: float = 0.05,
    cuped_rho: float = 0.0,
    two_sided: bool = True,
) -> float:
    """Power of the z-test to detect a relative effect ``rel_effect`` with the given arm sizes."""
    _validate(cv, alpha, 0.5, cuped_rho)
    if n_treatment <= 0 or n_control <= 0:
        raise ValueError("arm sizes must be > 0")
    se = cv * math.sqrt((1.0 - cuped_rho**2) * (1.0 / n_treatment + 1.0 / n_control))
    d = abs(rel_effect) / se
    if two_sided:
        z = float(ndtri(1.0 - alpha / 2.0))
        return float(ndtr(d - z) + ndtr(-d - z))
    return float(ndtr(d - float(ndtri(1.0 - alpha))))


def mde(
    *,
    cv: float,
    n_treatment: float,
    n_control: float,
    alpha: float = 0.05,
    power: float = 0.8,
    cuped_rho: float = 0.0,
) -> float:
    """Relative minimum detectable effect (z_{1−α/2} + z_power)·se/μ (one-tail approximation)."""
    _validate(cv, alpha, 0.5, cuped_rho)
    se = cv * math.sqrt((1.0 - cuped_rho**2) * (1.0 / n_treatment + 1.0 / n_control))
    return float((ndtri(1.0 - alpha / 2.0) + ndtri(power)) * se)


def days_needed(*, n_total: float, daily_units: float) -> int:
    """Whole days until ``n_total`` units have entered at ``daily_units`` new units per day
    (both arms together).  Assumes units arrive at a steady rate; returning users do not
    add units, so pass *new* eligible units per day."""
    if daily_units <= 0:
        raise ValueError(f"daily_units must be > 0, got {daily_units}")
    return max(1, math.ceil(n_total / daily_units - 1e-9))


def sample_size(
    *,
    cv: float,
    rel_mde: float,
    alpha: float = 0.05,
    power: float = 0.8,
    cuped_rho: float = 0.0,
    split: float = 0.5,
    daily_units: float | None = None,
) -> SampleSize:
    """Units needed for a two-sided z-test to detect ``rel_mde`` with the given power."""
    _validate(cv, alpha, split, cuped_rho)
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    if not (math.isfinite(rel_mde) and rel_mde != 0):
        raise ValueError(f"rel_mde must be non-zero, got {rel_mde}")
    k = _se_per_total(cv, split, cuped_rho)
    z_a = float(ndtri(1.0 - alpha / 2.0))
    z_b = float(ndtri(power))
    m = abs(rel_mde)
    n_closed = ((z_a + z_b) * k / m) ** 2

    def gap(n_total: float) -> float:
        d = m * math.sqrt(n_total) / k
        return float(ndtr(d - z_a) + ndtr(-d - z_a)) - power

    # The far tail only adds power, so the exact N is at most the closed form.
    lo = n_closed * 0.5
    n_total = (
        float(brentq(gap, lo, n_closed, xtol=1e-10 * n_closed, rtol=1e-14))
        if gap(lo) < 0 < gap(n_closed)
        else n_closed
    )
    return _sample_size_result(n_total, split, alpha, power, cv, m, cuped_rho, daily_units)


def _sample_size_result(
    n_total: float,
    split: float,
    alpha: float,
    pw: float,
    cv: float,
    m: float,
    rho: float,
    daily: float | None,
) -> SampleSize:
    n_t = n_total * split
    n_c = n_total - n_t
    n_t_round = math.ceil(n_t - 1e-9)
    n_c_round = math.ceil(n_c - 1e-9)
    total_round = n_t_round + n_c_round
    return SampleSize(
        n_per_arm=n_t,
        n_per_arm_rounded=n_t_round,
        n_treatment=n_t,
        n_control=n_c,
        n_total=n_total,
        n_total_rounded=total_round,
        split=split,
        alpha=alpha,
        power=pw,
        cv=cv,
        rel_mde=m,
        cuped_rho=rho,
        variance_factor=1.0 - rho**2,
        days=days_needed(n_total=total_round, daily_units=daily) if daily else None,
    )


def tost_power(
    *,
    cv: float,
    margin_rel: float,
    n_treatment: float,
    n_control: float,
    alpha: float = 0.05,
    true_rel_diff: float = 0.0,
    cuped_rho: float = 0.0,
) -> float:
    """Probability that TOST declares equivalence within ±margin_rel (relative to μ)."""
    _validate(cv, alpha, 0.5, cuped_rho)
    se = cv * math.sqrt((1.0 - cuped_rho**2) * (1.0 / n_treatment + 1.0 / n_control))
    z = float(ndtri(1.0 - alpha))
    pw = (
        float(ndtr((margin_rel - true_rel_diff) / se - z) + ndtr((margin_rel + true_rel_diff) / se - z)) - 1.0
    )
    return max(0.0, pw)


def tost_sample_size(
    *,
    cv: float,
    margin_rel: float,
    alpha: float = 0.05,
    power: float = 0.8,
    true_rel_diff: float = 0.0,
    cuped_rho: float = 0.0,
    split: float = 0.5,
    daily_units: float | None = None,
) -> SampleSize:
    """Units for TOST to show equivalence within ±margin_rel when the true difference is
    ``true_rel_diff`` (|true| < margin).  For true = 0 the closed form is
    N·… with δ/se = z_{1−α} + z_{1−β/2} (Chow, Shao & Wang eq. 3.2.4)."""
    _validate(cv, alpha, split, cuped_rho)
    if not margin_rel > 0 or abs(true_rel_diff) >= margin_rel:
        raise ValueError("need margin_rel > |true_rel_diff| >= 0")
    k = _se_per_total(cv, split, cuped_rho)

    def gap(n_total: float) -> float:
        n_t = n_total * split
        return tost_power(
            cv=cv, margin_rel=margin_rel, n_treatment=n_t, n_control=n_total - n_t, alpha=alpha,
            true_rel_diff=true_rel_diff, cuped_rho=cuped_rho,
        ) - power  # fmt: skip

    z = float(ndtri(1.0 - alpha))
    hi = ((z + float(ndtri(1.0 - (1.0 - power) / 2.0))) * k / (margin_rel - abs(true_rel_diff))) ** 2
    while gap(hi) < 0:
        hi *= 2.0
    n_total = float(brentq(gap, 1e-9, hi, xtol=1e-10 * hi, rtol=1e-14))
    return _sample_size_result(n_total, split, alpha, power, cv, margin_rel, cuped_rho, daily_units)
