"""Writes of the experiments app: pre-registered designs, analyses, warehouse statistics, decisions.

Every state change is validated, runs in a transaction, is idempotent where a retry can happen
(creation per key, warehouse uploads per client batch id) and is audited through
``controlplane.core.services.audit_record``. Once an experiment runs its design is locked: later
changes need a reason and are audited with the before/after design.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from controlplane.core import telemetry
from controlplane.core.errors import ApplicationError, ConflictError
from controlplane.core.models import Allocation, RankingStack, Surface
from controlplane.core.services import Actor, audit_record
from controlplane.core.updates import model_update
from controlplane.serving import selectors as serving_logs
from experiments import aggregation, analysis, rollups, stats
from experiments.metrics import (
    BASE_METRICS,
    KEY_RE,
    LATENCY_P99,
    RATIO_METRICS,
    STANDARD_SET,
    metric_components,
)
from experiments.models import (
    AnalysisRun,
    Decision,
    Experiment,
    ExperimentMetric,
    MetricDefinition,
    WarehouseStatistics,
)
from experiments.outcome import analysis_outcome

PRE_PERIOD_DAYS = 14
_SLUG_RE = re.compile(r"[^a-z0-9-]+")


def _actor_label(actor: Actor) -> str:
    if actor is None:
        return "system"
    if isinstance(actor, str):
        return actor
    return str(actor.get_username()) if getattr(actor, "is_authenticated", False) else "anonymous"


def _actor_user(actor: Actor) -> Any:
    return (
        actor
        if actor is not None and not isinstance(actor, str) and getattr(actor, "is_authenticated", False)
        else None
    )


# -- metric catalogue -------------------------------------------------------------------------------
@transaction.atomic
def metric_definitions_ensure_standard() -> int:
    """Create the standard metric definitions that are missing (never changes existing ones)."""
    existing = set(MetricDefinition.objects.values_list("key", flat=True))
    rows = [
        MetricDefinition(key=key, name=name, kind="mean", direction=direction, description=desc)
        for key, name, direction, desc in BASE_METRICS
        if key not in existing
    ]
    rows += [
        MetricDefinition(
            key=key,
            name=name,
            kind="ratio",
            direction=direction,
            numerator=num,
            denominator=den,
            ingestible=False,
            description=desc,
        )
        for key, name, direction, num, den, desc in RATIO_METRICS
        if key not in existing
    ]
    if LATENCY_P99 not in existing:
        rows.append(
            MetricDefinition(
                key=LATENCY_P99,
                name="p99 feed-load latency (ms)",
                kind="quantile",
                direction="lower",
                quantile=0.99,
                ingestible=False,
                description="99th percentile of per-request serving latency (samples logged by serving)",
            )
        )
    MetricDefinition.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


# -- design validation ------------------------------------------------------------------------------
def _validate_metrics(specs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check a metric list; return resolved specs or raise one error naming every bad field."""
    errors: dict[str, list[str]] = {}
    resolved: list[dict[str, Any]] = []

    def bad(index: int, name: str, message: str) -> None:
        errors.setdefault(f"metrics[{index}].{name}", []).append(message)

    if not specs:
        raise ApplicationError("an experiment needs at least one metric", field="metrics")
    definitions = {
        d.key: d for d in MetricDefinition.objects.filter(key__in=[s.get("metric") for s in specs])
    }
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        key = str(spec.get("metric") or "")
        if not KEY_RE.match(key):
            bad(i, "metric", "must be a metric key (lowercase letters, digits, - and _)")
            continue
        if key in seen:
            bad(i, "metric", f"{key} is listed twice")
        seen.add(key)
        role = spec.get("role")
        if role not in ExperimentMetric.Role.values:
            bad(i, "role", f"must be one of {', '.join(ExperimentMetric.Role.values)}")
        definition = definitions.get(key)
        kind = spec.get("kind") or (definition.kind if definition else "mean")
        numerator = (
            spec.get("numerator")
            if spec.get("numerator") is not None
            else (definition.numerator if definition else "")
        )
        denominator = (
            spec.get("denominator")
            if spec.get("denominator") is not None
            else (definition.denominator if definition else "")
        )
        quantile = (
            spec.get("quantile")
            if spec.get("quantile") is not None
            else (definition.quantile if definition else None)
        )
        if kind not in MetricDefinition.Kind.values:
            bad(i, "kind", f"must be one of {', '.join(MetricDefinition.Kind.values)}")
        if definition is not None:
            for name, value in (("kind", kind), ("numerator", numerator), ("denominator", denominator)):
                if (value or "") != (getattr(definition, name) or ""):
                    bad(i, name, f"{key} is already defined with {name}={getattr(definition, name)!r}")
        if kind == "ratio":
            for name, value in (("numerator", numerator), ("denominator", denominator)):
                if not value:
                    bad(i, name, f"a ratio metric needs a {name}")
                    continue
                try:
                    metric_components(str(value))
                except ValueError as exc:
                    bad(i, name, str(exc))
        if kind == "quantile" and not (isinstance(quantile, int | float) and 0 < float(quantile) < 1):
            bad(i, "quantile", "a quantile metric needs a quantile between 0 and 1 (0.99 for p99)")
        direction = spec.get("direction") or (definition.direction if definition else None)
        if direction is None:
            if role == "guardrail":
                bad(i, "direction", "a guardrail needs a direction: is higher or lower better?")
            direction = "higher"
        elif direction not in MetricDefinition.Direction.values:
            bad(i, "direction", "must be higher or lower")
        margin = spec.get("margin")
        margin_kind = spec.get("margin_kind") or "relative"
        if margin_kind not in ExperimentMetric.MarginKind.values:
            bad(i, "margin_kind", "must be absolute or relative")
        if margin is not None:
            if isinstance(margin, bool) or not isinstance(margin, int | float):
                bad(i, "margin", "must be a number")
            elif not margin > 0:
                bad(i, "margin", f"must be > 0 (got {margin}): a zero or negative margin cannot be tested")
            elif margin_kind == "relative" and margin >= 1:
                bad(i, "margin", "a relative margin is a fraction of the control value and must be below 1")
        elif role == "guardrail":
            bad(i, "margin", "a guardrail needs a non-inferiority margin > 0")
        # Pre-registered capping (issue #16): winsorise a skewed mean metric at a quantile of the
        # control arm or of the pre-period, computed in SQL where the rows live.
        cap_quantile = spec.get("cap_quantile")
        cap_source = spec.get("cap_source") or "control"
        if cap_quantile is not None:
            if isinstance(cap_quantile, bool) or not isinstance(cap_quantile, int | float):
                bad(i, "cap_quantile", "must be a number")
            elif not 0.5 < float(cap_quantile) < 1:
                bad(i, "cap_quantile", f"must be between 0.5 and 1 (0.99 caps at p99), got {cap_quantile}")
            elif kind != "mean":
                bad(i, "cap_quantile", f"capping applies to mean metrics, not {kind}")
        if cap_source not in ExperimentMetric.CapSource.values:
            bad(i, "cap_source", "must be control or pre")
        resolved.append(
            {
                "key": key,
                "definition": definition,
                "role": role,
                "kind": kind,
                "direction": direction,
                "numerator": numerator or "",
                "denominator": denominator or "",
                "quantile": quantile,
                "name": spec.get("name")
                or (definition.name if definition else key.replace("_", " ").capitalize()),
                "margin": float(margin)
                if isinstance(margin, int | float) and not isinstance(margin, bool)
                else None,
                "margin_kind": margin_kind,
                "cuped": bool(spec.get("cuped", kind != "quantile")) and kind != "quantile",
                "cap_quantile": float(cap_quantile)
                if isinstance(cap_quantile, int | float) and not isinstance(cap_quantile, bool)
                else None,
                "cap_source": cap_source,
            }
        )
    if not errors and not any(r["role"] == "primary" for r in resolved):
        errors.setdefault("metrics", []).append("at least one metric must be primary")
    if errors:
        field_name, messages = next(iter(errors.items()))
        raise ApplicationError(f"{field_name}: {messages[0]}", field=field_name, errors=errors)
    return resolved


def _write_metrics(experiment: Experiment, resolved: Sequence[Mapping[str, Any]]) -> None:
    ExperimentMetric.objects.filter(experiment=experiment).delete()
    for position, spec in enumerate(resolved):
        definition = spec["definition"]
        if definition is None:
            definition, _ = MetricDefinition.objects.get_or_create(
                key=spec["key"],
                defaults={
                    "name": spec["name"],
                    "kind": spec["kind"],
                    "direction": spec["direction"],
                    "numerator": spec["numerator"],
                    "denominator": spec["denominator"],
                    "quantile": spec["quantile"],
                    "ingestible": spec["kind"] in ("mean", "proportion"),
                },
            )
        ExperimentMetric.objects.create(
            experiment=experiment,
            metric=definition,
            role=spec["role"],
            direction=spec["direction"],
            margin_kind=spec["margin_kind"],
            margin=spec["margin"],
            cuped=spec["cuped"],
            cap_quantile=spec["cap_quantile"],
            cap_source=spec["cap_source"],
            position=position,
        )


def experiment_design(experiment: Experiment) -> dict[str, Any]:
    """The pre-registered design as JSON (audit snapshots, readout, API)."""
    return {
        "key": experiment.key,
        "name": experiment.name,
        "surface": experiment.surface.key,
        "hypothesis": experiment.hypothesis,
        "treatment_stack": experiment.treatment_stack.label,
        "controls": experiment.controls,
        "allocation_version": experiment.allocation.version if experiment.allocation is not None else None,
        "salt": experiment.salt,
        "window_start": experiment.window_start.isoformat(),
        "window_end": experiment.window_end.isoformat() if experiment.window_end else None,
        "pre_start": experiment.pre_start.isoformat() if experiment.pre_start else None,
        "pre_end": experiment.pre_end.isoformat() if experiment.pre_end else None,
        "alpha": experiment.alpha,
        "power": experiment.power,
        "sequential": experiment.sequential,
        "metrics": [
            {
                "metric": m.metric.key,
                "name": m.metric.name,
                "role": m.role,
                "kind": m.metric.kind,
                "direction": m.direction,
                "margin_kind": m.margin_kind,
                "margin": m.margin,
                "cuped": m.cuped,
                "cap_quantile": m.cap_quantile,
                "cap_source": m.cap_source,
                "numerator": m.metric.numerator,
                "denominator": m.metric.denominator,
                "quantile": m.metric.quantile,
            }
            for m in experiment.metrics.select_related("metric").order_by("position", "id")
        ],
    }


def _validate_dates(
    window_start: dt.date, window_end: dt.date | None, pre_start: dt.date | None, pre_end: dt.date | None
) -> None:
    if window_end is not None and window_end < window_start:
        raise ApplicationError("the window must end on or after its start", field="window_end")
    if (pre_start is None) != (pre_end is None):
        raise ApplicationError("give both ends of the pre-period, or neither", field="pre_start")
    if pre_start is not None and pre_end is not None:
        if pre_end < pre_start:
            raise ApplicationError("the pre-period must end on or after its start", field="pre_end")
        if pre_end >= window_start:
            raise ApplicationError("the pre-period must end before the window starts", field="pre_end")


def _controls(allocation: Allocation | None, surface: Surface) -> dict[str, str]:
    if allocation is not None:
        return {p["population"]: p["stack"] for p in allocation.populations}
    return {p.population: p.stack.label for p in surface.populations.select_related("stack")}


@transaction.atomic
def experiment_create(
    *,
    surface: Surface,
    key: str,
    treatment_stack: RankingStack,
    salt: str,
    window_start: dt.date,
    metrics: Sequence[Mapping[str, Any]],
    actor: Actor,
    now: dt.datetime | None = None,
    name: str = "",
    hypothesis: str = "",
    window_end: dt.date | None = None,
    pre_start: dt.date | None = None,
    pre_end: dt.date | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    sequential: bool = True,
    start: bool = False,
) -> Experiment:
    """Pre-register an experiment design (draft; ``start=True`` also starts and locks it)."""
    now = now or timezone.now()
    if not KEY_RE.match(key or "") or key == "standard":
        raise ApplicationError(
            "key must be a slug (lowercase letters, digits, - and _), not 'standard'", field="key"
        )
    if Experiment.objects.filter(key=key).exists():
        raise ConflictError(f"an experiment with key {key!r} exists", field="key")
    if treatment_stack.kind != RankingStack.Kind.UNIFIED_MTL:
        raise ApplicationError(
            "the treatment is the unified stack; legacy stacks are the controls", field="treatment_stack"
        )
    if not salt or not str(salt).strip():
        raise ApplicationError("the allocation salt is required", field="salt")
    if not 0 < alpha < 0.5:
        raise ApplicationError("alpha must be between 0 and 0.5", field="alpha")
    if not 0 < power < 1:
        raise ApplicationError("power must be between 0 and 1", field="power")
    if pre_start is None and pre_end is None:
        pre_end = window_start - dt.timedelta(days=1)
        pre_start = window_start - dt.timedelta(days=PRE_PERIOD_DAYS)
    _validate_dates(window_start, window_end, pre_start, pre_end)
    resolved = _validate_metrics(metrics)
    allocation = Allocation.objects.filter(surface=surface, salt=salt).order_by("-version").first()
    experiment = Experiment.objects.create(
        surface=surface,
        key=key,
        name=name or key,
        hypothesis=hypothesis,
        treatment_stack=treatment_stack,
        controls=_controls(allocation, surface),
        allocation=allocation,
        salt=salt,
        window_start=window_start,
        window_end=window_end,
        pre_start=pre_start,
        pre_end=pre_end,
        alpha=alpha,
        power=power,
        sequential=sequential,
        created_by=_actor_label(actor),
        created_at=now,
        updated_at=now,
    )
    _write_metrics(experiment, resolved)
    audit_record(
        actor=actor,
        verb="experiment.create",
        target=experiment,
        after=experiment_design(experiment),
        reason="pre-registered design",
        now=now,
    )
    if start:
        experiment = experiment_start(experiment=experiment, actor=actor, now=now)
    return experiment


@transaction.atomic
def experiment_start(*, experiment: Experiment, actor: Actor, now: dt.datetime | None = None) -> Experiment:
    """Start an experiment: the design is locked from here on (changes need a reason)."""
    now = now or timezone.now()
    experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
    if experiment.status == Experiment.Status.RUNNING:
        return experiment
    if experiment.status != Experiment.Status.DRAFT:
        raise ConflictError(f"experiment {experiment.key} is {experiment.status}; only a draft can start")
    model_update(instance=experiment, data={"status": Experiment.Status.RUNNING, "locked_at": now}, now=now)
    audit_record(
        actor=actor,
        verb="experiment.start",
        target=experiment,
        before={"status": "draft"},
        after={"status": "running", "locked_at": now.isoformat()},
        reason="design locked",
        now=now,
    )
    return experiment


_DESIGN_FIELDS = (
    "name",
    "hypothesis",
    "window_start",
    "window_end",
    "pre_start",
    "pre_end",
    "alpha",
    "power",
    "sequential",
)


@transaction.atomic
def experiment_update_design(
    *,
    experiment: Experiment,
    actor: Actor,
    reason: str = "",
    now: dt.datetime | None = None,
    metrics: Sequence[Mapping[str, Any]] | None = None,
    **changes: Any,
) -> Experiment:
    """Change a design. Drafts change freely; a locked design needs a reason and is audited."""
    now = now or timezone.now()
    unknown = set(changes) - set(_DESIGN_FIELDS)
    if unknown:
        raise ApplicationError(f"cannot change {', '.join(sorted(unknown))}", field=sorted(unknown)[0])
    experiment = (
        Experiment.objects.select_for_update()
        .select_related("surface", "treatment_stack")
        .get(pk=experiment.pk)
    )
    if experiment.status == Experiment.Status.DECIDED:
        raise ConflictError(f"experiment {experiment.key} is decided; its design is final")
    if experiment.locked and not (reason or "").strip():
        raise ApplicationError(
            "the design is locked since the experiment started: give a reason for the change", field="reason"
        )
    before = experiment_design(experiment)
    for name, value in changes.items():
        setattr(experiment, name, value)
    if "alpha" in changes and not 0 < experiment.alpha < 0.5:
        raise ApplicationError("alpha must be between 0 and 0.5", field="alpha")
    if "power" in changes and not 0 < experiment.power < 1:
        raise ApplicationError("power must be between 0 and 1", field="power")
    _validate_dates(experiment.window_start, experiment.window_end, experiment.pre_start, experiment.pre_end)
    resolved = _validate_metrics(metrics) if metrics is not None else None
    experiment.updated_at = now
    experiment.save()
    if resolved is not None:
        _write_metrics(experiment, resolved)
    after = experiment_design(experiment)
    if before != after:
        audit_record(
            actor=actor,
            verb="experiment.design_change" if experiment.locked else "experiment.update",
            target=experiment,
            before=before,
            after=after,
            reason=reason,
            now=now,
        )
    return experiment


@transaction.atomic
def experiment_stop(
    *,
    experiment: Experiment,
    actor: Actor,
    reason: str,
    now: dt.datetime | None = None,
    window_end: dt.date | None = None,
) -> Experiment:
    """Stop collecting: fix the window end (default: yesterday, the last complete day)."""
    now = now or timezone.now()
    if not (reason or "").strip():
        raise ApplicationError("a reason is required to stop an experiment", field="reason")
    experiment = Experiment.objects.select_for_update().get(pk=experiment.pk)
    if experiment.status == Experiment.Status.STOPPED:
        return experiment
    if experiment.status != Experiment.Status.RUNNING:
        raise ConflictError(
            f"experiment {experiment.key} is {experiment.status}; only a running one can stop"
        )
    end = window_end or max(experiment.window_start, now.date() - dt.timedelta(days=1))
    _validate_dates(experiment.window_start, end, experiment.pre_start, experiment.pre_end)
    before = {
        "status": experiment.status,
        "window_end": experiment.window_end.isoformat() if experiment.window_end else None,
    }
    model_update(instance=experiment, data={"status": Experiment.Status.STOPPED, "window_end": end}, now=now)
    audit_record(
        actor=actor,
        verb="experiment.stop",
        target=experiment,
        before=before,
        after={"status": "stopped", "window_end": end.isoformat()},
        reason=reason,
        now=now,
    )
    return experiment


def _default_key(surface: Surface, treatment_stack: RankingStack, salt: str) -> str:
    raw = f"{surface.key}-{treatment_stack.key}-{treatment_stack.version}-{salt}".lower()
    return _SLUG_RE.sub("-", raw).strip("-")[:80]


@transaction.atomic
def experiment_create_for_surface(
    *,
    surface: Surface,
    treatment_stack: RankingStack,
    salt: str,
    actor: Actor,
    now: dt.datetime | None = None,
    key: str | None = None,
    hypothesis: str = "",
    sequential: bool = True,
) -> Experiment:
    """A running experiment with the standard pre-registered metric set; idempotent per key.

    Window from today, pre-period the 14 days before. Primaries time spent and meaningful
    interactions with ±2 % equivalence margins; secondaries likes, sessions, engagement rate;
    guardrails hide + report rate, integrity rate, p99 latency (absolute ms), error rate.
    """
    now = now or timezone.now()
    key = key or _default_key(surface, treatment_stack, salt)
    existing = Experiment.objects.filter(key=key).first()
    if existing is not None:
        if (
            existing.surface_id != surface.pk
            or existing.salt != salt
            or existing.treatment_stack_id != treatment_stack.pk
        ):
            raise ConflictError(f"experiment {key} exists for another surface, salt or stack", field="key")
        return existing
    metric_definitions_ensure_standard()
    metrics = [
        {"metric": m.key, "role": m.role, "margin_kind": m.margin_kind, "margin": m.margin, "cuped": m.cuped}
        for m in STANDARD_SET
    ]
    return experiment_create(
        surface=surface,
        key=key,
        name=f"{treatment_stack.label} on {surface.key}",
        hypothesis=hypothesis
        or f"Serving {surface.key} with {treatment_stack.label} is launch-neutral against each legacy stack: "
        "primaries within ±2 % and no guardrail regression beyond its margin.",
        treatment_stack=treatment_stack,
        salt=salt,
        window_start=now.date(),
        metrics=metrics,
        actor=actor,
        now=now,
        sequential=sequential,
        start=True,
    )


# -- analysis ---------------------------------------------------------------------------------------
def analysis_design(experiment: Experiment) -> analysis.Design:
    """The pure-analysis view of an experiment's design and its allocation history."""
    # Plain values, no model instances: this runs for every ramp on every sweep (bench/ramps.py).
    columns = {
        "key": "metric__key",
        "name": "metric__name",
        "role": "role",
        "kind": "metric__kind",
        "direction": "direction",
        "margin_kind": "margin_kind",
        "margin": "margin",
        "cuped": "cuped",
        "numerator": "metric__numerator",
        "denominator": "metric__denominator",
        "quantile": "metric__quantile",
        "cap_quantile": "cap_quantile",
        "cap_source": "cap_source",
    }
    metrics = tuple(
        analysis.MetricDesign(**dict(zip(columns, row, strict=True)))
        for row in experiment.metrics.order_by("position", "id").values_list(*columns.values())
    )
    # Every version of this salt in one query, newest first: the splits, and the newest one's
    # population shares (all rows are this surface's, so newest first is the model's own order).
    versions = list(
        Allocation.objects.filter(surface_id=experiment.surface_id, salt=experiment.salt)
        .order_by("-version")
        .values_list("version", "treatment_bp", "holdout_bp", "populations")
    )
    splits = {
        version: analysis.AllocationSplit(version, treatment_bp, holdout_bp)
        for version, treatment_bp, holdout_bp, _ in versions
    }
    if versions:
        populations = {p["population"]: float(p["bp"]) for p in versions[0][3]}
    else:
        populations = {p.population: float(p.share_bp) for p in experiment.surface.populations.all()}
    return analysis.Design(
        alpha=experiment.alpha,
        power=experiment.power,
        sequential=experiment.sequential,
        metrics=metrics,
        populations=populations,
        splits=splits,
        has_pre_period=experiment.pre_start is not None and experiment.pre_end is not None,
    )


def analysis_as_of(experiment: Experiment, now: dt.datetime) -> dt.date:
    today = now.date()
    end = experiment.window_end or today
    return max(experiment.window_start, min(end, today))


def aggregate_spec(
    experiment: Experiment,
    *,
    as_of: dt.date,
    design: analysis.Design | None = None,
    exposure_table: str = aggregation.EXPOSURE_TABLE,
    metric_table: str = aggregation.METRIC_TABLE,
) -> aggregation.AggregateSpec:
    design = design or analysis_design(experiment)
    return aggregation.AggregateSpec(
        surface_id=experiment.surface_id,
        salt=experiment.salt,
        window_start=experiment.window_start,
        window_end=as_of,
        pre_start=experiment.pre_start,
        pre_end=experiment.pre_end,
        metrics=design.aggregate_metrics(),
        stable=design.stable(),
        exposure_table=exposure_table,
        metric_table=metric_table,
    )


def _quantile_samples(
    experiment: Experiment, design: analysis.Design, as_of: dt.date
) -> dict[str, dict[tuple[str, str], Any]]:
    """Per-request latency samples by arm × population (quantiles are not additive: raw values)."""
    import numpy as np

    keys = [m.key for m in design.metrics if m.kind == "quantile"]
    if not keys:
        return {}
    start = dt.datetime.combine(experiment.window_start, dt.time.min, tzinfo=dt.UTC)
    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    rows = serving_logs.latency_rows(
        surface_id=experiment.surface_id, salt=experiment.salt, start=start, end=end
    )
    grouped: dict[tuple[str, str], list[float]] = {}
    for arm, population, ms in rows.iterator(chunk_size=20000):
        grouped.setdefault((arm, population), []).append(ms)
    samples = {k: np.asarray(v, dtype=np.float64) for k, v in grouped.items()}
    return {key: samples for key in keys}


def _stable_q(stable: Mapping[int, aggregation.StableRange]) -> Any:
    """The ORM twin of :func:`aggregation.stable_filter`: exposures whose arm never changed."""
    from django.db.models import Q

    q = Q(bucket__isnull=True) | ~Q(allocation_version__in=list(stable))
    for version, rng in stable.items():
        q |= Q(allocation_version=version) & (
            Q(arm="treatment", bucket__gte=rng.treatment_lo, bucket__lt=rng.treatment_hi)
            | Q(arm="control", bucket__gte=rng.control_lo)
        )
    return q


def _crossover(
    experiment: Experiment, as_of: dt.date, design: analysis.Design, analysed_units: int | None
) -> dict[str, Any] | None:
    """Crossover among the analysed units, and how many crossed units the analysis left out.

    Units whose bucket moved arm during the ramp are excluded by the aggregate query
    (experiments/analysis, "Crossover"); what remains must never have been served by both arms. That is
    measured from serving's request log where it has this salt, else estimated on a sample of
    analysed exposures re-assigned with the current allocation.
    """
    stable = design.stable()
    end = dt.datetime.combine(as_of + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC)
    exposures = serving_logs.exposures(surface_id=experiment.surface_id, salt=experiment.salt, before=end)
    # One statement (this runs for every ramp on every sweep, and the ORM's compile of the
    # same counts cost ~8× their execution): all exposures (for the excluded count), the
    # analysed ones — the aggregate query's own stable filter — that the request log saw, and
    # those it saw in both arms; and whether the log has this salt at all.
    keep, keep_params = aggregation.stable_filter(stable, alias="e")
    when = connection.ops.adapt_datetimefield_value(end)
    log = (
        f"SELECT l.unit_id FROM {serving_logs.LATENCY_TABLE} l WHERE l.surface_id = %s AND l.salt = %s "
        "AND l.arm IN ('control', 'treatment') AND l.ts < %s"
    )
    log_params = [experiment.surface_id, experiment.salt, when]
    sql = (
        "SELECT COUNT(*),\n"
        f"  COALESCE(SUM(CASE WHEN 1 = 1{keep} AND e.unit_id IN ({log}) THEN 1 ELSE 0 END), 0),\n"
        f"  COALESCE(SUM(CASE WHEN 1 = 1{keep} AND e.unit_id IN ({log} GROUP BY l.unit_id "
        "HAVING COUNT(DISTINCT l.arm) > 1) THEN 1 ELSE 0 END), 0),\n"
        f"  EXISTS ({log})\n"
        f"FROM {serving_logs.EXPOSURE_TABLE} e\n"
        "WHERE e.surface_id = %s AND e.salt = %s AND e.arm IN ('control', 'treatment') "
        "AND e.first_exposed_at < %s"
    )
    params = [
        *keep_params,
        *log_params,
        *keep_params,
        *log_params,
        *log_params,
        experiment.surface_id,
        experiment.salt,
        when,
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        total, checked, crossed, logged = cursor.fetchone()
    total = int(total)
    if logged:
        excluded = max(0, total - analysed_units) if analysed_units is not None else None
        return {
            "checked": int(checked),
            "crossed": int(crossed),
            "excluded": excluded,
            "source": "request_log",
        }
    if analysed_units is None:
        excluded = None
    else:
        excluded = max(0, total - analysed_units)
    analysed = exposures.filter(_stable_q(stable)) if stable else exposures
    from controlplane.core.selectors import allocation_config

    allocation = (
        Allocation.objects.select_related("surface", "treatment_stack", "shadow_stack")
        .filter(surface_id=experiment.surface_id, salt=experiment.salt)
        .order_by("-version")
        .first()
    )
    if allocation is None:
        return None
    config = allocation_config(allocation)
    sample = list(analysed.values_list("unit_id", "arm")[:20000])
    crossed = sum(1 for unit_id, arm in sample if config.assign(unit_id).arm not in (arm, "holdout"))
    return {"checked": len(sample), "crossed": crossed, "excluded": excluded, "source": "assignment"}


def _previous_sequential(experiment: Experiment) -> dict[tuple[str, str], stats.SequentialResult]:
    """The latest run's always-valid tests, to chain this look from."""
    # Only the result column: the previous run's statistics (the query rows) are not needed here.
    result = (
        AnalysisRun.objects.filter(experiment=experiment)
        .order_by("-created_at", "-id")
        .values_list("result", flat=True)
        .first()
    )
    previous = analysis_outcome(result)
    if previous is None:
        return {}
    return {
        (m.metric, m.population): m.sequential
        for m in previous.metrics
        if m.sequential is not None and m.sequential.computable
    }


def _warehouse_rows(experiment: Experiment) -> tuple[list[dict[str, Any]], dt.date | None]:
    """Merge uploads oldest first; a later row replaces the same (arm, population, day, version)."""
    merged: dict[tuple[Any, ...], dict[str, Any]] = {}
    as_of = None
    for upload in experiment.warehouse_uploads.order_by("created_at", "id"):
        as_of = upload.as_of if as_of is None else max(as_of, upload.as_of)
        for row in upload.rows:
            merged[(row["arm"], row["population"], row["day"], row["allocation_version"])] = row
    return list(merged.values()), as_of


@transaction.atomic
def experiment_analyze(
    *,
    experiment: Experiment,
    now: dt.datetime | None = None,
    trigger: str = AnalysisRun.Trigger.ON_DEMAND,
    source: str = AnalysisRun.Source.DATABASE,
    actor: Actor = None,
) -> AnalysisRun:
    """Analyse an experiment: one aggregate query (or the uploaded warehouse rows) → AnalysisRun.

    Idempotent in effect: a second run with the same data gives the same numbers (the sequential
    test counts it as one more look).
    """
    now = now or timezone.now()
    # Re-read (the status may have changed); nothing below reads the surface or the stacks.
    experiment = Experiment.objects.get(pk=experiment.pk)
    if experiment.status == Experiment.Status.DRAFT:
        raise ConflictError(f"experiment {experiment.key} is a draft; start it before analysing")
    design = analysis_design(experiment)
    as_of = analysis_as_of(experiment, now)
    started = time.perf_counter()
    rollup: aggregation.RollupUse | None = None
    if source == AnalysisRun.Source.WAREHOUSE:
        rows, uploaded_as_of = _warehouse_rows(experiment)
        if uploaded_as_of is None:
            raise ApplicationError("no warehouse statistics uploaded for this experiment", field="source")
        as_of = uploaded_as_of
    elif source == AnalysisRun.Source.DATABASE:
        spec = aggregate_spec(experiment, as_of=as_of, design=design)
        rollup = rollups.rollup_for_analysis(experiment, spec)
        rows = aggregation.run_query(spec, connection, rollup) if spec.metrics else []
    else:
        raise ApplicationError(f"unknown source {source!r}", field="source")
    query_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    inputs = analysis.Inputs(
        rows=rows,
        as_of=as_of,
        quantile_samples=_quantile_samples(experiment, design, as_of),
        crossover=_crossover(
            experiment,
            as_of,
            design,
            sum(int(r["n"]) for r in rows) if source == AnalysisRun.Source.DATABASE else None,
        ),
        previous_sequential=_previous_sequential(experiment) if experiment.sequential else {},
    )
    outcome = dataclasses.replace(
        analysis.analyze(design, inputs, computed_at=now.isoformat()),
        source=source,
        # How many closed days came from the experiment's rollup rather than the rows (0: all rows).
        rollup_days=len(rollup.folded) if rollup else 0,
    )
    analysis_ms = (time.perf_counter() - started) * 1000
    telemetry.analysis_finished(source=source, seconds=(query_ms + analysis_ms) / 1000)
    run = AnalysisRun.objects.create(
        experiment=experiment,
        source=source,
        trigger=trigger,
        as_of=as_of,
        window_start=experiment.window_start,
        window_end=as_of,
        statistics=rows,
        result=outcome.to_dict(),
        verdict=str(outcome.recommendation.verdict),
        query_ms=query_ms,
        analysis_ms=analysis_ms,
        created_by=_actor_label(actor),
        created_at=now,
    )
    return run


@transaction.atomic
def experiment_warehouse_upload(
    *,
    experiment: Experiment,
    client_batch_id: str,
    rows: Sequence[Mapping[str, Any]],
    as_of: dt.date,
    actor: Actor,
    now: dt.datetime | None = None,
) -> WarehouseStatistics:
    """Accept sufficient statistics computed by a warehouse with the exported SQL.

    The whole upload is rejected when any row is bad (errors name ``rows[i].column``): a partial
    set of sums would silently bias every estimate. Re-sending a batch id is a no-op.
    """
    now = now or timezone.now()
    if not (client_batch_id or "").strip():
        raise ApplicationError("client_batch_id is required", field="client_batch_id")
    existing = WarehouseStatistics.objects.filter(
        experiment=experiment, client_batch_id=client_batch_id
    ).first()
    if existing is not None:
        return existing
    design = analysis_design(experiment)
    clean, errors = aggregation.validate_rows(rows, design.aggregate_metrics())
    if errors:
        field_name, messages = next(iter(errors.items()))
        raise ApplicationError(f"{field_name}: {messages[0]}", field=field_name, errors=errors)
    if not clean:
        raise ApplicationError("no rows", field="rows")
    if as_of < experiment.window_start:
        raise ApplicationError("as_of is before the experiment window", field="as_of")
    upload = WarehouseStatistics.objects.create(
        experiment=experiment,
        client_batch_id=client_batch_id,
        as_of=as_of,
        rows=clean,
        created_by=_actor_label(actor),
        created_at=now,
    )
    audit_record(
        actor=actor,
        verb="experiment.warehouse_upload",
        target=experiment,
        after={"client_batch_id": client_batch_id, "rows": len(clean), "as_of": as_of.isoformat()},
        reason="warehouse sufficient statistics",
        now=now,
    )
    return upload


# -- decisions --------------------------------------------------------------------------------------
@transaction.atomic
def experiment_decide(
    *,
    experiment: Experiment,
    actor: Actor,
    now: dt.datetime | None = None,
    verdict: str | None = None,
    note: str = "",
    analysis_run: AnalysisRun | None = None,
) -> Decision:
    """Record a decision on the latest analysis with its numbers and a frozen readout snapshot.

    ``verdict`` defaults to the analysis's recommendation; overriding it needs a note. Ship and
    rollback close the experiment (status decided); hold and extend keep it running.
    """
    from experiments import readout

    now = now or timezone.now()
    experiment = (
        Experiment.objects.select_for_update()
        .select_related("surface", "treatment_stack")
        .get(pk=experiment.pk)
    )
    run = (
        analysis_run
        or AnalysisRun.objects.filter(experiment=experiment).order_by("-created_at", "-id").first()
    )
    if run is None:
        raise ConflictError("analyse the experiment before deciding", field="analysis")
    if run.experiment_id != experiment.pk:
        raise ApplicationError("that analysis belongs to another experiment", field="analysis")
    outcome = analysis_outcome(run.result)
    if outcome is None or outcome.recommendation.verdict is None:
        raise ConflictError(f"analysis {run.pk} has no recommendation to decide on", field="analysis")
    recommended = str(outcome.recommendation.verdict)
    verdict = verdict or recommended
    if verdict not in Decision.Verdict.values:
        raise ApplicationError(
            f"verdict must be one of {', '.join(Decision.Verdict.values)}", field="verdict"
        )
    if verdict != recommended and not (note or "").strip():
        raise ApplicationError(
            f"the analysis recommends {recommended}; overriding it with {verdict} needs a note", field="note"
        )
    data = readout.readout_data(experiment=experiment, run=run)
    decision = Decision.objects.create(
        experiment=experiment,
        analysis=run,
        verdict=verdict,
        recommended=recommended,
        reasons=list(outcome.recommendation.reasons),
        blocking=list(outcome.recommendation.blocking),
        days_needed=outcome.recommendation.days_needed,
        numbers=run.result,
        readout=data,
        readout_html=readout.render_html(data, standalone=True),
        note=note,
        decided_by=_actor_user(actor),
        decided_by_label=_actor_label(actor),
        decided_at=now,
    )
    before = {"status": experiment.status}
    if verdict in (Decision.Verdict.SHIP, Decision.Verdict.ROLLBACK):
        model_update(
            instance=experiment,
            data={"status": Experiment.Status.DECIDED, "window_end": experiment.window_end or run.as_of},
            now=now,
        )
    audit_record(
        actor=actor,
        verb=f"experiment.decide.{verdict}",
        target=experiment,
        before=before,
        after={
            "status": experiment.status,
            "verdict": verdict,
            "recommended": recommended,
            "analysis": run.pk,
            "blocking": decision.blocking,
            "days_needed": decision.days_needed,
        },
        reason=note or "; ".join(decision.reasons),
        now=now,
    )
    return decision


__all__ = [
    "aggregate_spec",
    "analysis_design",
    "experiment_analyze",
    "experiment_create",
    "experiment_create_for_surface",
    "experiment_decide",
    "experiment_design",
    "experiment_start",
    "experiment_stop",
    "experiment_update_design",
    "experiment_warehouse_upload",
    "metric_definitions_ensure_standard",
]
