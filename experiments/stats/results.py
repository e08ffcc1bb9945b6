"""Result types: frozen, slotted, JSON-ready through ``to_dict()``.

Every result carries ``computable`` and ``reason``.  An undefined statistic (an empty arm,
zero variance in both arms, a zero control mean for a relative quantity) is reported as
``computable=False`` with the reason, and the undefined fields are ``None`` — never a crash,
never p = 0, never a zero-width interval (DESIGN.md, "Statistical conventions").  Fields
that *are* defined are still filled in: with a zero control mean the absolute difference,
its CI and p-value are valid although the relative lift is not.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

Interval = tuple[float, float]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


class _ToDict:
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (tuples become lists), for JSON."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ComparisonResult(_ToDict):
    """Treatment − control for one metric.

    ``df`` is the Welch–Satterthwaite degrees of freedom for t-based methods and ``None``
    for z-based ones (z-test, delta-method ratios, quantiles, stratified).  ``ci`` is the
    two-sided (1 − α) interval of ``diff``; ``rel_lift`` = treatment/control − 1 with its
    delta-method (or Fieller) interval.  ``control_mean`` / ``treatment_mean`` are the
    observed (unadjusted) arm values — each arm's ratio for ratio metrics and its quantile
    for quantile metrics; CUPED also reports the adjusted means.  ``control_se`` and
    ``treatment_se`` are the standard errors of the (adjusted) arm means, and
    ``control_variance`` / ``treatment_variance`` the per-unit variances used.

    CUPED (DESIGN.md): ``rel_lift`` = adjusted diff / UNADJUSTED control mean; its delta-method
    SE uses ``control_mean_variance`` = Var(ȳ_c) and ``diff_control_covariance`` = Cov(diff, ȳ_c),
    kept so that a stratified pool can form the same ratio over its strata.
    """

    method: str
    alpha: float
    n_control: int
    n_treatment: int
    control_mean: float | None
    treatment_mean: float | None
    control_variance: float | None
    treatment_variance: float | None
    diff: float | None
    se: float | None
    df: float | None
    statistic: float | None
    p_value: float | None
    ci: Interval | None
    rel_lift: float | None
    rel_lift_se: float | None
    rel_lift_ci: Interval | None
    control_se: float | None
    treatment_se: float | None
    computable: bool
    reason: str
    theta: float | None = None
    variance_reduction: float | None = None
    control_mean_adjusted: float | None = None
    treatment_mean_adjusted: float | None = None
    rel_ci_method: str = "delta"
    control_mean_variance: float | None = None
    diff_control_covariance: float | None = None


@dataclass(frozen=True, slots=True)
class EquivalenceResult(_ToDict):
    """Two one-sided tests (TOST) of H0: diff ≤ lower or diff ≥ upper.

    ``margin`` is the absolute δ (``lower`` = −δ, ``upper`` = +δ for a symmetric margin);
    ``ci`` is the (1 − 2α) interval, and ``equivalent`` ⇔ p_value < α ⇔ ci ⊂ (lower, upper).
    """

    margin: float | None
    lower: float | None
    upper: float | None
    diff: float | None
    se: float | None
    df: float | None
    p_lower: float | None
    p_upper: float | None
    p_value: float | None
    ci: Interval | None
    equivalent: bool
    alpha: float
    computable: bool
    reason: str


@dataclass(frozen=True, slots=True)
class NonInferiorityResult(_ToDict):
    """One-sided test against the margin.

    direction ``higher`` (higher is better): H0 diff ≤ −δ; ``bound`` is the one-sided
    (1 − α) lower confidence bound and non-inferior ⇔ bound > −δ.  direction ``lower``
    (lower is better, e.g. latency): H0 diff ≥ +δ; ``bound`` is the upper bound and
    non-inferior ⇔ bound < +δ.  δ = 0 is a one-sided superiority test.
    """

    margin: float | None
    direction: str
    threshold: float | None
    diff: float | None
    se: float | None
    df: float | None
    p_value: float | None
    bound: float | None
    noninferior: bool
    alpha: float
    computable: bool
    reason: str


@dataclass(frozen=True, slots=True)
class SrmResult(_ToDict):
    """Pearson χ² goodness of fit of unit counts to the configured split."""

    chi2: float | None
    df: int
    p_value: float | None
    flagged: bool
    observed: tuple[int, ...]
    expected: tuple[float, ...]
    threshold: float
    computable: bool
    reason: str


@dataclass(frozen=True, slots=True)
class AdjustedPValues(_ToDict):
    """Multiplicity-adjusted p-values in the input order; reject ⇔ adjusted ≤ α."""

    method: str
    alpha: float
    adjusted: tuple[float, ...]
    reject: tuple[bool, ...]
