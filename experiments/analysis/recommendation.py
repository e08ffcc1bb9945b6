"""The recommendation: ship / hold / rollback / extend with reasons, blocking metrics and the days
needed at the current rate of new units (power calculation)."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence

from experiments.analysis.design import MAX_EXTEND_DAYS, POOLED, Design, finite
from experiments.outcome import (
    HealthCheck,
    MetricOutcome,
    Recommendation,
    RecommendationVerdict,
    Units,
    Verdict,
)


def daily_new_units(daily: Mapping[str, int], as_of: dt.date) -> float:
    """Mean new units per day over the last (up to) 7 days with exposures, up to the as-of day."""
    days = sorted(d for d in daily if d <= as_of.isoformat())
    recent = days[-7:]
    if not recent:
        return 0.0
    first = dt.date.fromisoformat(recent[0])
    span = max(1, (as_of - first).days + 1)
    return sum(daily[d] for d in recent) / span


def recommend(
    design: Design,
    outcomes: Sequence[MetricOutcome],
    health: Sequence[HealthCheck],
    units: Units,
    daily: Mapping[str, int],
    as_of: dt.date,
) -> Recommendation:
    """Harm rolls back; a data problem holds; shown launch-neutral ships; otherwise extend while
    more data can settle it within :data:`MAX_EXTEND_DAYS`, else hold."""
    reasons: list[str] = []
    blocking: list[str] = []
    pooled = {m.metric: m for m in outcomes if m.population == POOLED}
    checks = {h.check: h for h in health}

    def block(key: str) -> None:
        if key not in blocking:
            blocking.append(key)

    def done(verdict: RecommendationVerdict, days_needed: float | None = None) -> Recommendation:
        return Recommendation(verdict, tuple(reasons), tuple(blocking), days_needed)

    if units.control == 0 or units.treatment == 0:
        return Recommendation(
            RecommendationVerdict.EXTEND, (checks["no_data"].detail + ": wait for traffic",)
        )

    # Harm first: a guardrail beyond its margin (pooled or in any population), or a primary
    # significantly worse and not within its equivalence margin, rolls back.
    harm = False
    for m in outcomes:
        if m.role == "guardrail" and m.verdict == Verdict.INFERIOR:
            harm = True
            block(m.metric)
            where = "overall" if m.population == POOLED else f"for {m.population} users"
            reasons.append(
                f"{m.name} is worse than its non-inferiority margin {where} "
                f"(lift {_pct(m.estimate_rel)}, CI {_pct_ci(m.ci_rel)})"
            )
        if m.role == "primary" and m.population == POOLED and m.verdict == Verdict.WORSE:
            harm = True
            block(m.metric)
            reasons.append(
                f"{m.name} is significantly worse and not within ±{margin_text(m)} (lift {_pct(m.estimate_rel)})"
            )
    if harm:
        return done(RecommendationVerdict.ROLLBACK)

    if not checks["srm"].ok:
        reasons.append(checks["srm"].detail + ": the arms are not comparable until the cause is fixed")
    for name in ("both_arms", "pre_period_balance"):
        if not checks[name].ok:
            reasons.append(checks[name].detail)
    data_problem = bool(reasons)

    pending: list[tuple[str, float | None]] = []
    for metric in design.metrics:
        pm = pooled.get(metric.key)
        if pm is None or metric.role == "secondary":
            continue
        wanted = (Verdict.EQUIVALENT, Verdict.BETTER) if metric.role == "primary" else (Verdict.NON_INFERIOR,)
        if pm.verdict in wanted:
            continue
        block(metric.key)
        pending.append((metric.key, pm.units_needed))
        if pm.verdict == Verdict.NOT_COMPUTABLE:
            reasons.append(f"{pm.name}: not computable ({pm.reason or 'no data'})")
        elif metric.role == "primary":
            reasons.append(
                f"{pm.name}: not yet shown equivalent within ±{margin_text(pm)} "
                f"(lift {_pct(pm.estimate_rel)}, CI {_pct_ci(pm.ci_rel)})"
            )
        else:
            reasons.append(
                f"{pm.name}: non-inferiority within {margin_text(pm)} not yet shown "
                f"(lift {_pct(pm.estimate_rel)}, CI {_pct_ci(pm.ci_rel)})"
            )
    if data_problem:
        return done(RecommendationVerdict.HOLD)
    if not pending:
        primaries = [m.name for m in design.metrics if m.role == "primary"]
        return Recommendation(
            RecommendationVerdict.SHIP,
            (
                f"primaries equivalent or better ({', '.join(primaries)}); every guardrail non-inferior "
                "(latency included); SRM clean",
            ),
        )
    # Extend: how long at the current rate of new units until every blocking test has power.
    rate = daily_new_units(daily, as_of)
    n_now = units.control + units.treatment
    days: list[float] = []
    unreachable = []
    for key, needed in pending:
        if needed is None:
            unreachable.append(key)
            continue
        days.append(max(0.0, needed - n_now) / rate if rate > 0 else math.inf)
    if unreachable or not days:
        reasons.append(
            "more data will not settle "
            + ", ".join(pooled[k].name for k in unreachable)
            + ": its estimate lies outside the margin or it has no data"
            if unreachable
            else "no traffic rate to project"
        )
        return done(RecommendationVerdict.HOLD)
    need = max(days)
    if not math.isfinite(need) or need > MAX_EXTEND_DAYS:
        reasons.append(
            f"would need {need:.0f} more days at {rate:.0f} new units/day (more than {MAX_EXTEND_DAYS})"
        )
        return done(RecommendationVerdict.HOLD, finite(need))
    reasons.append(
        f"about {math.ceil(need)} more days at the current {rate:.0f} new units/day reach "
        f"{design.power:.0%} power for every blocking metric"
    )
    return done(RecommendationVerdict.EXTEND, float(math.ceil(need * 10) / 10))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.2f}%"


def _pct_ci(ci: Sequence[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "n/a"
    return f"[{ci[0] * 100:+.2f}%, {ci[1] * 100:+.2f}%]"


def margin_text(m: MetricOutcome) -> str:
    """The configured margin as the PM wrote it: a percentage or an absolute value."""
    if m.margin_kind is None:
        return "no margin"
    if m.margin_kind == "relative" and m.margin_rel is not None:
        return f"{m.margin_rel * 100:g}%"
    if m.margin_abs is not None:
        return f"{m.margin_abs:g} (absolute)"
    return "no margin"
