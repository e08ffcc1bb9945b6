"""Minimum sample size for skewed metrics (Kohavi et al. 2014, rule of thumb #7).

Kohavi, Deng, Longbotham & Xu, "Seven Rules of Thumb for Web Site Experimenters", KDD 2014,
§3.7: for the mean of a skewed metric to be close enough to normal that a 95% interval covers
about 95% (the normal approximation's error is driven by the skewness, Boos & Hughes-Oliver
2000), each variant needs

    n > 355 · s²,    s = the metric's skewness coefficient in that variant.

``s`` here is the sample skewness g₁ = m₃/m₂^{3/2} (``MeanStatistic.skewness``, the convention of
``scipy.stats.skew``). The rule is applied per arm; the comparison satisfies it when both arms
do. Below it the caller should wait ("too few units for a skewed metric: need N, have M"), or
cap the metric (pre-registered winsorisation lowers s).  Unknown skewness (ratio metrics, sums
without Σ(y − K)³, n < 3 or no variance) puts no requirement: ``known`` is then False.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["KOHAVI_FACTOR", "SkewRule", "skew_rule", "skew_rule_arms"]

KOHAVI_FACTOR = 355.0


@dataclass(frozen=True, slots=True)
class SkewRule:
    """Outcome of the rule n > 355·s² for one arm (or the binding arm of a comparison)."""

    need: int  # smallest n with n > 355·s² (0 when the skewness is unknown)
    have: int
    holds: bool
    skewness: float | None = None
    arm: str = ""

    @property
    def known(self) -> bool:
        return self.skewness is not None

    @property
    def message(self) -> str:
        """The sentence a gate shows while it waits ('' when the rule holds)."""
        if self.holds:
            return ""
        return f"too few units for a skewed metric: need {self.need}, have {self.have}"

    def __iter__(self) -> Any:
        # (need, have, holds) unpacks like a tuple.
        return iter((self.need, self.have, self.holds))

    def to_dict(self) -> dict[str, Any]:
        return {
            "need": self.need,
            "have": self.have,
            "holds": self.holds,
            "skewness": self.skewness,
            "arm": self.arm,
            "message": self.message,
        }


def skew_rule(skewness: float | None, n: int, *, arm: str = "") -> SkewRule:
    """(need, have, holds) of n > 355·s² for one arm with ``n`` units and skewness ``s``.

    need = ⌊355·s²⌋ + 1, the smallest integer n with n > 355·s².
    """
    have = max(int(n), 0)
    if skewness is None or not math.isfinite(skewness):
        return SkewRule(0, have, True, None, arm)
    need = math.floor(KOHAVI_FACTOR * skewness * skewness) + 1
    return SkewRule(need, have, have >= need, float(skewness), arm)


def skew_rule_arms(control: tuple[float | None, int], treatment: tuple[float | None, int]) -> SkewRule:
    """The rule for a comparison: each arm's (skewness, n); returns the binding arm's outcome.

    Holds when it holds in both arms; otherwise the arm furthest from it (smallest have/need,
    the small arm of a 1/99 ramp step) is reported.
    """
    rules = [skew_rule(s, n, arm=a) for a, (s, n) in (("control", control), ("treatment", treatment))]
    failing = [r for r in rules if not r.holds]
    if failing:
        return min(failing, key=lambda r: r.have / r.need)
    known = [r for r in rules if r.known]
    return max(known, key=lambda r: r.need) if known else rules[0]
