"""The analysis outcome: one typed contract that gates, readouts, pages, exports and the API read.

``experiments.analysis.analyze`` builds an :class:`AnalysisOutcome`; ``AnalysisRun.result`` stores
its :meth:`AnalysisOutcome.to_dict` (with ``schema_version``). Every reader goes through
:func:`analysis_outcome`, the one adapter that also reads rows written before the schema had a
version (schema 1: the same keys, verdicts decided by the engine, but no ``margin_rel``,
``harm_beyond_margin`` or ``sequential_worse``; those are derived here, once, with the rules the
runbook gates used to apply themselves).

Each metric's verdict is decided once, by the engine; nobody downstream re-derives it.

Margins have two named forms: ``margin_abs`` (in the metric's unit, δ of the tests) and
``margin_rel`` (a fraction of the control mean); ``margin_kind`` says which one was configured.

Pure: no Django, so the gates' and the engine's tests need no database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

from experiments.stats import EquivalenceResult, NonInferiorityResult, SequentialResult
from experiments.stats.skew import SkewRule

SCHEMA_VERSION = 2
POOLED = "pooled"

Interval = tuple[float, float]


class Verdict(StrEnum):
    """A metric's verdict. Values are the strings stored since schema 1 (``noninferior``)."""

    BETTER = "better"
    WORSE = "worse"
    EQUIVALENT = "equivalent"
    NON_INFERIOR = "noninferior"
    INFERIOR = "inferior"
    INCONCLUSIVE = "inconclusive"
    NOT_COMPUTABLE = "not_computable"

    @property
    def shown_fine(self) -> bool:
        return self in (Verdict.NON_INFERIOR, Verdict.EQUIVALENT, Verdict.BETTER)


class RecommendationVerdict(StrEnum):
    SHIP = "ship"
    HOLD = "hold"
    ROLLBACK = "rollback"
    EXTEND = "extend"


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _interval(value: Any) -> Interval | None:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        return None
    lo, hi = _float(value[0]), _float(value[1])
    return None if lo is None or hi is None else (lo, hi)


def _list(value: Interval | None) -> list[float] | None:
    return [value[0], value[1]] if value is not None else None


def bad_side(direction: str) -> int:
    """+1 when higher values are bad (lower-is-better metrics), −1 when lower values are bad."""
    return 1 if direction == "lower" else -1


def sequential_worse(
    direction: str,
    ci: Interval | None,
    *,
    p_value: float | None = None,
    diff: float | None = None,
    alpha: float = 0.05,
) -> bool | None:
    """Whether the always-valid (mSPRT) interval lies wholly on the bad side of zero.

    Under continuous monitoring only an always-valid confidence sequence keeps the false-rollback
    rate at α (Johari et al., "Always valid inference", Operations Research 2022). Without an
    interval, an always-valid p-value below α with the estimate on the bad side counts; None
    when neither is available.
    """
    bad = bad_side(direction)
    if ci is not None:
        return ci[0] > 0 if bad > 0 else ci[1] < 0
    if p_value is None or diff is None:
        return None
    return p_value < alpha and diff * bad > 0


def harm_beyond_margin(
    *,
    direction: str,
    margin_kind: str | None,
    margin_rel: float | None,
    margin_abs: float | None,
    estimate_rel: float | None,
    estimate_abs: float | None,
) -> bool | None:
    """Whether the point estimate of harm exceeds the configured margin; None without one.

    A guardrail significantly worse than control whose estimated harm is within its tolerance is
    held (more data settles it); beyond the tolerance it is a breach. A relative margin compares
    the relative lift, an absolute one the difference.
    """
    if margin_kind is None:
        return None
    margin, value = (margin_rel, estimate_rel) if margin_kind == "relative" else (margin_abs, estimate_abs)
    if margin is None or value is None:
        return None
    return value * bad_side(direction) > margin


def beyond_margin(direction: str, ci: Interval | None, threshold: float | None) -> bool:
    """The whole two-sided interval lies on the harmful side of the margin threshold."""
    if ci is None or threshold is None:
        return False
    return ci[0] > threshold if direction == "lower" else ci[1] < threshold


@dataclass(frozen=True, slots=True)
class Capping:
    """A pre-registered cap (mean metrics): winsorised at ``quantile`` of ``source``; ``cap`` the value."""

    quantile: float
    source: str  # control | pre
    cap: float | None = None

    @property
    def note(self) -> str:
        """How the readout names the cap."""
        where = "the pre-period" if self.source == "pre" else "the control arm"
        value = f" = {self.cap:.6g}" if self.cap is not None else ""
        return f"capped at the {self.quantile:g} quantile of {where}{value}"

    def to_dict(self) -> dict[str, Any]:
        return {"quantile": self.quantile, "source": self.source, "cap": self.cap}

    @classmethod
    def from_dict(cls, data: Any) -> Capping | None:
        if not isinstance(data, Mapping) or data.get("quantile") is None:
            return None
        return cls(float(data["quantile"]), str(data.get("source") or "control"), _float(data.get("cap")))


def _skew_rule(data: Any) -> SkewRule | None:
    if not isinstance(data, Mapping) or data.get("need") is None:
        return None
    return SkewRule(
        int(data["need"]),
        int(data.get("have") or 0),
        bool(data.get("holds", True)),
        _float(data.get("skewness")),
        str(data.get("arm") or ""),
    )


@dataclass(frozen=True, slots=True)
class MetricOutcome:
    """One metric in one population (or pooled): the estimate, its tests, and the verdict."""

    metric: str
    name: str
    role: str  # primary | secondary | guardrail
    kind: str  # mean | proportion | ratio | quantile
    direction: str  # higher | lower (the better side)
    population: str
    verdict: Verdict
    reason: str = ""
    computable: bool = True
    method: str = ""
    n_control: int = 0
    n_treatment: int = 0
    control_mean: float | None = None
    treatment_mean: float | None = None
    estimate_abs: float | None = None  # treatment − control
    estimate_rel: float | None = None  # treatment / control − 1
    se: float | None = None
    ci_abs: Interval | None = None
    ci_rel: Interval | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    variance_reduction: float | None = None
    margin_kind: str | None = None  # which form was configured: relative | absolute; None: no margin
    margin_abs: float | None = None
    margin_rel: float | None = None
    equivalence: EquivalenceResult | None = None
    noninferiority: NonInferiorityResult | None = None
    tost_p_value: float | None = None
    equivalent: bool | None = None
    ni_p_value: float | None = None
    noninferior: bool | None = None
    sequential: SequentialResult | None = None  # the always-valid test's state (chained run to run)
    sequential_ci: Interval | None = None
    sequential_p_value: float | None = None
    sequential_worse: bool | None = None
    harm_beyond_margin: bool | None = None
    units_needed: float | None = None
    skewness: Mapping[str, float | None] | None = None  # per arm (g1); None for ratio and quantile metrics
    skew_rule: SkewRule | None = None  # Kohavi et al. 2014: n > 355·s² per arm (the binding arm)
    capping: Capping | None = None

    @property
    def is_sequential(self) -> bool:
        """Whether an always-valid interval backs this metric (then it decides under peeking)."""
        return self.sequential_worse is not None

    @property
    def subject(self) -> str:
        return f"{self.metric}/{self.population}"

    @property
    def statement(self) -> str:
        """``metric/population: verdict v``: how gates, the runbook's *Why* and pages name a verdict."""
        return f"{self.subject}: verdict {self.verdict}"

    @property
    def rel_band(self) -> Interval | None:
        """The margin as a symmetric band of relative lift (the forest plot's shaded region)."""
        return (-self.margin_rel, self.margin_rel) if self.margin_rel is not None else None

    @property
    def test_label(self) -> str:
        if self.equivalence is not None or self.tost_p_value is not None or self.equivalent is not None:
            return f"TOST p={self.tost_p_value:.3g}" if self.tost_p_value is not None else "TOST n/a"
        if self.noninferiority is not None or self.ni_p_value is not None or self.noninferior is not None:
            return f"NI p={self.ni_p_value:.3g}" if self.ni_p_value is not None else "NI n/a"
        return ""

    def to_dict(self) -> dict[str, Any]:
        """JSON; estimate and CI keep their schema-1 names (``diff``, ``ci``, ``rel_lift``, ``rel_lift_ci``)."""
        sequential: dict[str, Any] | None = None
        if self.sequential is not None:
            sequential = self.sequential.to_dict()
        elif self.sequential_ci is not None or self.sequential_p_value is not None:
            sequential = {
                "ci": _list(self.sequential_ci),
                "p_value": self.sequential_p_value,
                "computable": True,
            }
        equivalence: dict[str, Any] | None = None
        if self.equivalence is not None:
            equivalence = self.equivalence.to_dict()
        elif self.tost_p_value is not None or self.equivalent is not None:
            equivalence = {
                "p_value": self.tost_p_value,
                "equivalent": self.equivalent,
                "margin": self.margin_abs,
            }
        noninferiority: dict[str, Any] | None = None
        if self.noninferiority is not None:
            noninferiority = self.noninferiority.to_dict()
        elif self.ni_p_value is not None or self.noninferior is not None:
            noninferiority = {
                "p_value": self.ni_p_value,
                "noninferior": self.noninferior,
                "margin": self.margin_abs,
            }
        return {
            "metric": self.metric,
            "name": self.name,
            "role": self.role,
            "kind": self.kind,
            "direction": self.direction,
            "population": self.population,
            "computable": self.computable,
            "reason": self.reason,
            "method": self.method,
            "n_control": self.n_control,
            "n_treatment": self.n_treatment,
            "control_mean": self.control_mean,
            "treatment_mean": self.treatment_mean,
            "diff": self.estimate_abs,
            "se": self.se,
            "ci": _list(self.ci_abs),
            "rel_lift": self.estimate_rel,
            "rel_lift_ci": _list(self.ci_rel),
            "p_value": self.p_value,
            "p_adjusted": self.p_adjusted,
            "variance_reduction": self.variance_reduction,
            "margin_kind": self.margin_kind,
            "margin_abs": self.margin_abs,
            "margin_rel": self.margin_rel,
            "rel_band": _list(self.rel_band),
            "equivalence": equivalence,
            "noninferiority": noninferiority,
            "sequential": sequential,
            "sequential_worse": self.sequential_worse,
            "harm_beyond_margin": self.harm_beyond_margin,
            "verdict": str(self.verdict),
            "units_needed": self.units_needed,
            "skewness": dict(self.skewness) if self.skewness is not None else None,
            "skew_rule": self.skew_rule.to_dict() if self.skew_rule is not None else None,
            "capping": self.capping.to_dict() if self.capping is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricOutcome:
        """Read a metric entry of either schema (see :func:`analysis_outcome`)."""
        direction = str(data.get("direction") or "higher")
        role = str(data.get("role") or "")
        eq_raw = data.get("equivalence") if isinstance(data.get("equivalence"), Mapping) else None
        ni_raw = data.get("noninferiority") if isinstance(data.get("noninferiority"), Mapping) else None
        seq_raw = data.get("sequential") if isinstance(data.get("sequential"), Mapping) else None
        computable = bool(data.get("computable", True))
        verdict = _verdict(data.get("verdict"), computable)
        estimate_abs, estimate_rel = _float(data.get("diff")), _float(data.get("rel_lift"))
        control_mean = _float(data.get("control_mean"))
        margin_kind, margin_rel, margin_abs = _margins(data, eq_raw, ni_raw, control_mean)
        seq_ci = _interval(seq_raw.get("ci")) if seq_raw else None
        seq_p = _float(seq_raw.get("p_value")) if seq_raw else None
        if "sequential_worse" in data:
            seq_worse = data["sequential_worse"]
        elif seq_raw is None or seq_raw.get("computable") is False:
            seq_worse = None
        else:
            seq_worse = sequential_worse(
                direction,
                seq_ci,
                p_value=seq_p,
                diff=_float(seq_raw.get("diff")),
                alpha=_float(seq_raw.get("alpha")) or 0.05,
            )
        if "harm_beyond_margin" in data:
            harm = data["harm_beyond_margin"]
        else:
            harm = harm_beyond_margin(
                direction=direction,
                margin_kind=margin_kind,
                margin_rel=margin_rel,
                margin_abs=margin_abs,
                estimate_rel=estimate_rel,
                estimate_abs=estimate_abs,
            )
        return cls(
            metric=str(data.get("metric") or ""),
            name=str(data.get("name") or data.get("metric") or ""),
            role=role,
            kind=str(data.get("kind") or ""),
            direction=direction,
            population=str(data.get("population") or POOLED),
            verdict=verdict,
            reason=str(data.get("reason") or ""),
            computable=computable,
            method=str(data.get("method") or ""),
            n_control=int(data.get("n_control") or 0),
            n_treatment=int(data.get("n_treatment") or 0),
            control_mean=control_mean,
            treatment_mean=_float(data.get("treatment_mean")),
            estimate_abs=estimate_abs,
            estimate_rel=estimate_rel,
            se=_float(data.get("se")),
            ci_abs=_interval(data.get("ci")),
            ci_rel=_interval(data.get("rel_lift_ci")),
            p_value=_float(data.get("p_value")),
            p_adjusted=_float(data.get("p_adjusted")),
            variance_reduction=_float(data.get("variance_reduction")),
            margin_kind=margin_kind,
            margin_abs=margin_abs,
            margin_rel=margin_rel,
            equivalence=_stat(EquivalenceResult, eq_raw),
            noninferiority=_stat(NonInferiorityResult, ni_raw),
            tost_p_value=_float(eq_raw.get("p_value")) if eq_raw else None,
            equivalent=bool(eq_raw["equivalent"])
            if eq_raw and eq_raw.get("equivalent") is not None
            else None,
            ni_p_value=_float(ni_raw.get("p_value")) if ni_raw else None,
            noninferior=bool(ni_raw["noninferior"])
            if ni_raw and ni_raw.get("noninferior") is not None
            else None,
            sequential=_stat(SequentialResult, seq_raw),
            sequential_ci=seq_ci,
            sequential_p_value=seq_p,
            sequential_worse=None if seq_worse is None else bool(seq_worse),
            harm_beyond_margin=None if harm is None else bool(harm),
            units_needed=_float(data.get("units_needed")),
            skewness=dict(data["skewness"]) if isinstance(data.get("skewness"), Mapping) else None,
            skew_rule=_skew_rule(data.get("skew_rule")),
            capping=Capping.from_dict(data.get("capping")),
        )


def _verdict(value: Any, computable: bool) -> Verdict:
    if not computable:
        return Verdict.NOT_COMPUTABLE
    try:
        return Verdict(str(value)) if value else Verdict.INCONCLUSIVE
    except ValueError:
        return Verdict.INCONCLUSIVE


def _margins(
    data: Mapping[str, Any],
    eq_raw: Mapping[str, Any] | None,
    ni_raw: Mapping[str, Any] | None,
    control_mean: float | None,
) -> tuple[str | None, float | None, float | None]:
    """(margin_kind, margin_rel, margin_abs) of a stored entry.

    Schema 2 names both forms. Schema 1 stored the configured value as ``margin`` (a fraction or an
    absolute value, by ``margin_kind``) and the absolute one as ``margin_abs``; hand-written rows may
    carry only the tests' δ (``noninferiority.margin`` / ``equivalence.margin``, always absolute).
    """
    if "margin_rel" in data:
        kind = data.get("margin_kind")
        return (str(kind) if kind else None), _float(data.get("margin_rel")), _float(data.get("margin_abs"))
    configured = _float(data.get("margin"))
    margin_abs = _float(data.get("margin_abs"))
    if margin_abs is None:  # the δ the tests used (absolute whatever was configured)
        margin_abs = next(
            (
                _float(b.get("margin"))
                for b in (ni_raw, eq_raw)
                if b is not None and _float(b.get("margin")) is not None
            ),
            None,
        )
    if configured is None:
        return None, None, margin_abs
    kind = str(data.get("margin_kind") or "relative")
    if kind == "relative":
        return kind, configured, margin_abs
    band = _interval(data.get("rel_band"))
    margin_rel = band[1] if band is not None else None
    if margin_rel is None and control_mean:
        margin_rel = configured / abs(control_mean)
    return kind, margin_rel, configured


def _stat(cls: Any, raw: Mapping[str, Any] | None) -> Any:
    """A stats result dataclass from its stored dict; None when the dict is partial or absent."""
    if raw is None:
        return None
    names = {f.name for f in fields(cls)}
    if not names <= set(raw):
        return None
    values = {k: raw[k] for k in names}
    for key in ("ci",):
        if isinstance(values.get(key), list):
            values[key] = tuple(values[key])
    try:
        return cls(**values)
    except TypeError:
        return None


@dataclass(frozen=True, slots=True)
class SrmCheck:
    """Sample-ratio check of one population (or pooled) against the configured split."""

    population: str
    observed_control: int
    observed_treatment: int
    expected_share: float | None
    chi2: float | None
    p_value: float | None
    flagged: bool
    computable: bool
    reason: str = ""

    @property
    def observed(self) -> dict[str, int]:
        return {"control": self.observed_control, "treatment": self.observed_treatment}

    def to_dict(self) -> dict[str, Any]:
        return {
            "observed": self.observed,
            "expected_share": self.expected_share,
            "chi2": self.chi2,
            "p_value": self.p_value,
            "flagged": self.flagged,
            "computable": self.computable,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, population: str, data: Mapping[str, Any]) -> SrmCheck:
        observed = data.get("observed") if isinstance(data.get("observed"), Mapping) else {}
        assert isinstance(observed, Mapping)
        return cls(
            population=population,
            observed_control=int(observed.get("control") or 0),
            observed_treatment=int(observed.get("treatment") or 0),
            expected_share=_float(data.get("expected_share")),
            chi2=_float(data.get("chi2")),
            p_value=_float(data.get("p_value")),
            flagged=bool(data.get("flagged")),
            computable=bool(data.get("computable", data.get("p_value") is not None)),
            reason=str(data.get("reason") or ""),
        )


@dataclass(frozen=True, slots=True)
class HealthCheck:
    check: str  # srm | no_data | both_arms | pre_period_balance
    ok: bool
    detail: str
    share: float | None = None  # both_arms: the crossed share

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.check, "ok": self.ok, "detail": self.detail}
        if self.share is not None:
            out["share"] = self.share
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HealthCheck:
        return cls(
            check=str(data.get("check") or ""),
            ok=bool(data.get("ok")),
            detail=str(data.get("detail") or ""),
            share=_float(data.get("share")),
        )


@dataclass(frozen=True, slots=True)
class Units:
    control: int = 0
    treatment: int = 0
    by_population: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.control + self.treatment

    def to_dict(self) -> dict[str, Any]:
        return {
            "control": self.control,
            "treatment": self.treatment,
            "by_population": {p: dict(c) for p, c in self.by_population.items()},
        }


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The engine's recommendation with its reasons and the metrics that block shipping."""

    verdict: RecommendationVerdict | None
    reasons: tuple[str, ...] = ()
    blocking: tuple[str, ...] = ()
    days_needed: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": str(self.verdict) if self.verdict is not None else None,
            "reasons": list(self.reasons),
            "blocking": list(self.blocking),
            "days_needed": self.days_needed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Recommendation:
        raw = data.get("verdict")
        try:
            verdict = RecommendationVerdict(str(raw)) if raw else None
        except ValueError:
            verdict = None
        return cls(
            verdict=verdict,
            reasons=tuple(str(r) for r in data.get("reasons") or ()),
            blocking=tuple(str(b) for b in data.get("blocking") or ()),
            days_needed=_float(data.get("days_needed")),
        )


@dataclass(frozen=True, slots=True)
class AnalysisOutcome:
    """One analysis: per-metric outcomes, SRM and health checks, and the recommendation."""

    computed_at: str
    metrics: tuple[MetricOutcome, ...] = ()
    srm: Mapping[str, SrmCheck] = field(default_factory=dict)
    health: tuple[HealthCheck, ...] = ()
    recommendation: Recommendation = field(default_factory=lambda: Recommendation(None))
    units: Units = field(default_factory=Units)
    as_of: str | None = None
    daily_new_units: float | None = None
    population_weights: Mapping[str, float] = field(default_factory=dict)
    source: str | None = None
    rollup_days: int | None = None
    schema_version: int = SCHEMA_VERSION
    # Set by the reader, not stored: the run the outcome came from and, when reused, its age.
    analysis_run_id: int | None = None
    reused_age_s: float | None = None

    @property
    def pooled(self) -> dict[str, MetricOutcome]:
        return {m.metric: m for m in self.metrics if m.population == POOLED}

    def metric(self, key: str, population: str = POOLED) -> MetricOutcome | None:
        return next((m for m in self.metrics if m.metric == key and m.population == population), None)

    def populations(self) -> list[str]:
        return list(self.units.by_population)

    def units_needed_of_blocking(self) -> list[float]:
        """Units each pooled blocking metric needs for the target power (known ones)."""
        blocking = set(self.recommendation.blocking)
        return [
            m.units_needed
            for m in self.metrics
            if m.population == POOLED and m.metric in blocking and m.units_needed
        ]

    def verdicts(self) -> dict[tuple[str, str], str]:
        """(metric, population) → verdict: what every reader must agree on."""
        return {(m.metric, m.population): str(m.verdict) for m in self.metrics}

    def with_run(self, run_id: int | None, *, reused_age_s: float | None = None) -> AnalysisOutcome:
        return replace(self, analysis_run_id=run_id, reused_age_s=reused_age_s)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "computed_at": self.computed_at,
            "as_of": self.as_of,
            "units": self.units.to_dict(),
            "srm": {p: s.to_dict() for p, s in self.srm.items()},
            "health": [h.to_dict() for h in self.health],
            "metrics": [m.to_dict() for m in self.metrics],
            "decision": self.recommendation.to_dict(),
            "daily_new_units": self.daily_new_units,
            "population_weights": dict(self.population_weights),
        }
        if self.source is not None:
            out["source"] = self.source
        if self.rollup_days is not None:
            out["rollup_days"] = self.rollup_days
        if self.analysis_run_id is not None:
            out["analysis_run_id"] = self.analysis_run_id
        if self.reused_age_s is not None:
            out["reused_age_s"] = self.reused_age_s
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AnalysisOutcome:
        units = data.get("units") if isinstance(data.get("units"), Mapping) else {}
        assert isinstance(units, Mapping)
        srm = data.get("srm") if isinstance(data.get("srm"), Mapping) else {}
        assert isinstance(srm, Mapping)
        decision = data.get("decision") if isinstance(data.get("decision"), Mapping) else {}
        assert isinstance(decision, Mapping)
        by_population = units.get("by_population") or {}
        return cls(
            computed_at=str(data.get("computed_at") or ""),
            as_of=str(data["as_of"]) if data.get("as_of") is not None else None,
            metrics=tuple(
                MetricOutcome.from_dict(m) for m in data.get("metrics") or () if isinstance(m, Mapping)
            ),
            srm={str(p): SrmCheck.from_dict(str(p), s) for p, s in srm.items() if isinstance(s, Mapping)},
            health=tuple(
                HealthCheck.from_dict(h) for h in data.get("health") or () if isinstance(h, Mapping)
            ),
            recommendation=Recommendation.from_dict(decision),
            units=Units(
                control=int(units.get("control") or 0),
                treatment=int(units.get("treatment") or 0),
                by_population={
                    str(p): {str(a): int(n or 0) for a, n in c.items()} for p, c in by_population.items()
                },
            ),
            daily_new_units=_float(data.get("daily_new_units")),
            population_weights={str(p): float(w) for p, w in (data.get("population_weights") or {}).items()},
            source=str(data["source"]) if data.get("source") is not None else None,
            rollup_days=int(data["rollup_days"]) if data.get("rollup_days") is not None else None,
            schema_version=int(data.get("schema_version") or 1),
            analysis_run_id=int(data["analysis_run_id"]) if data.get("analysis_run_id") is not None else None,
            reused_age_s=_float(data.get("reused_age_s")),
        )


def analysis_outcome(result: AnalysisOutcome | Mapping[str, Any] | None) -> AnalysisOutcome | None:
    """THE adapter: any stored ``AnalysisRun.result`` (schema 1 or 2), or an outcome, as an outcome.

    Schema 1 rows (no ``schema_version``) and schema 2 rows differ only in the fields schema 2 adds;
    :meth:`MetricOutcome.from_dict` derives those for schema 1 with the same functions the engine
    uses, so an old row and a new one with the same numbers read the same.
    """
    if result is None:
        return None
    if isinstance(result, AnalysisOutcome):
        return result
    if not isinstance(result, Mapping) or not result:
        return None
    version = int(result.get("schema_version") or 1)
    if version > SCHEMA_VERSION:
        raise ValueError(f"analysis result schema {version} is newer than this code reads ({SCHEMA_VERSION})")
    return AnalysisOutcome.from_dict(result)


__all__ = [
    "POOLED",
    "SCHEMA_VERSION",
    "AnalysisOutcome",
    "HealthCheck",
    "MetricOutcome",
    "Recommendation",
    "RecommendationVerdict",
    "SrmCheck",
    "Units",
    "Verdict",
    "analysis_outcome",
    "beyond_margin",
    "harm_beyond_margin",
    "sequential_worse",
]
