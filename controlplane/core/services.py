"""Writes to the core registry. Every change: validated, in a transaction, idempotent, audited."""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db import models, transaction
from django.utils import timezone

from controlplane.core.assignment import BUCKETS, validate_allocation
from controlplane.core.errors import ApplicationError, ConflictError
from controlplane.core.models import (
    Allocation,
    AuditEvent,
    Population,
    RankingStack,
    Surface,
    SurfacePopulation,
)
from controlplane.core.updates import model_update

Actor = AbstractBaseUser | AnonymousUser | str | None
# Every audit event is also a log record on this logger (JSON with LOG_FORMAT=json).
audit_log = logging.getLogger("controlplane.audit")


def _actor_fields(actor: Actor) -> tuple[Any, str]:
    if actor is None:
        return None, "system"
    if isinstance(actor, str):
        return None, actor
    if not actor.is_authenticated:
        raise ApplicationError(
            "an anonymous caller cannot change state", code="not_authenticated", http_status=401
        )
    return actor, actor.get_username()


def audit_record(
    *,
    actor: Actor,
    verb: str,
    target: models.Model,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
    reason: str = "",
    surface_key: str = "",
    now: dt.datetime | None = None,
) -> AuditEvent:
    """Append one audit event. Call inside the transaction of the change it records."""
    user, label = _actor_fields(actor)
    if not surface_key:
        surface = target if isinstance(target, Surface) else getattr(target, "surface", None)
        surface_key = getattr(surface, "key", "") or ""
    event = AuditEvent.objects.create(
        actor=user,
        actor_label=label,
        verb=verb,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        target_repr=str(target)[:200],
        surface_key=surface_key,
        before=dict(before) if before is not None else None,
        after=dict(after) if after is not None else None,
        reason=reason,
        created_at=now or timezone.now(),
    )
    _audit_log_on_commit(event, target)
    return event


def _audit_log_on_commit(event: AuditEvent, target: models.Model) -> None:
    """Every audit event is also a log event, written once its transaction commits."""
    fields = {
        "audit_id": event.pk,
        "verb": event.verb,
        "actor": event.actor_label,
        "target_type": event.target_type,
        "target_id": event.target_id,
        "surface_key": event.surface_key,
        "reason": event.reason,
        f"{target._meta.model_name}_id": target.pk,  # runbook_id, experiment_id, surface_id, …
    }
    # Logged in the context of the change (request id, user), though written after the commit.
    context = contextvars.copy_context()
    transaction.on_commit(
        lambda: context.run(
            audit_log.info,
            "audit %s %s:%s by %s",
            event.verb,
            event.target_type,
            event.target_id,
            event.actor_label,
            extra=fields,
        )
    )


# -- stacks -----------------------------------------------------------------------------------------
_STACK_FIELDS = (
    "kind",
    "device",
    "status",
    "latency_slo_ms",
    "throughput_per_replica",
    "p50_latency_ms",
    "p99_latency_ms",
    "host_cpu_ms_per_request",
    "offline_metrics",
    "artifact",
    "description",
)


def _stack_snapshot(stack: RankingStack) -> dict[str, Any]:
    return {"key": stack.key, "version": stack.version, **{f: getattr(stack, f) for f in _STACK_FIELDS}}


@transaction.atomic
def stack_register(
    *,
    key: str,
    version: str,
    kind: str,
    latency_slo_ms: float,
    actor: Actor,
    device: str = RankingStack.Device.CPU,
    status: str = RankingStack.Status.ACTIVE,
    throughput_per_replica: float | None = None,
    p50_latency_ms: float | None = None,
    p99_latency_ms: float | None = None,
    host_cpu_ms_per_request: float | None = None,
    offline_metrics: Mapping[str, Any] | None = None,
    artifact: Mapping[str, Any] | None = None,
    description: str = "",
    reason: str = "",
) -> RankingStack:
    """Register a stack version, or update its measured facts. Re-sending the same facts is a no-op."""
    if kind not in RankingStack.Kind.values:
        raise ApplicationError(
            f"unknown kind {kind!r}; expected one of {RankingStack.Kind.values}", field="kind"
        )
    if device not in RankingStack.Device.values:
        raise ApplicationError(f"unknown device {device!r}", field="device")
    if status not in RankingStack.Status.values:
        raise ApplicationError(f"unknown status {status!r}", field="status")
    if not latency_slo_ms or latency_slo_ms <= 0:
        raise ApplicationError(
            "latency SLO must be a positive number of milliseconds", field="latency_slo_ms"
        )
    if throughput_per_replica is not None and throughput_per_replica <= 0:
        raise ApplicationError("throughput per replica must be positive", field="throughput_per_replica")
    values = {
        "kind": kind,
        "device": device,
        "status": status,
        "latency_slo_ms": float(latency_slo_ms),
        "throughput_per_replica": throughput_per_replica,
        "p50_latency_ms": p50_latency_ms,
        "p99_latency_ms": p99_latency_ms,
        "host_cpu_ms_per_request": host_cpu_ms_per_request,
        "offline_metrics": dict(offline_metrics or {}),
        "artifact": dict(artifact or {}),
        "description": description,
    }
    stack = RankingStack.objects.select_for_update().filter(key=key, version=version).first()
    if stack is None:
        stack = RankingStack.objects.create(key=key, version=version, **values)
        audit_record(
            actor=actor, verb="stack.register", target=stack, after=_stack_snapshot(stack), reason=reason
        )
        return stack
    if stack.kind != kind:
        raise ConflictError(
            f"{stack.label} is registered as {stack.kind}; a version cannot change kind", field="kind"
        )
    before = _stack_snapshot(stack)
    stack, changed = model_update(instance=stack, data=values)
    if not changed:
        return stack
    audit_record(
        actor=actor,
        verb="stack.update",
        target=stack,
        before=before,
        after=_stack_snapshot(stack),
        reason=reason,
    )
    return stack


@transaction.atomic
def stack_set_status(*, stack: RankingStack, status: str, actor: Actor, reason: str) -> RankingStack:
    if status not in RankingStack.Status.values:
        raise ApplicationError(f"unknown status {status!r}", field="status")
    stack = RankingStack.objects.select_for_update().get(pk=stack.pk)
    if stack.status == status:
        return stack
    before = {"status": stack.status}
    model_update(instance=stack, data={"status": status})
    audit_record(
        actor=actor,
        verb=f"stack.{status}",
        target=stack,
        before=before,
        after={"status": status},
        reason=reason,
    )
    return stack


# -- surfaces ---------------------------------------------------------------------------------------
def _surface_snapshot(surface: Surface) -> dict[str, Any]:
    return {
        "key": surface.key,
        "name": surface.name,
        "peak_qps": surface.peak_qps,
        "status": surface.status,
        "production_stack": surface.production_stack.label if surface.production_stack else None,
        "populations": {
            p.population: {"stack": p.stack.label, "bp": p.share_bp} for p in surface.populations.all()
        },
    }


def _population_rows(populations: Mapping[str, tuple[RankingStack, int]]) -> list[tuple[str, str, int]]:
    return [(name, stack.label, int(bp)) for name, (stack, bp) in populations.items()]


@transaction.atomic
def surface_upsert(
    *,
    key: str,
    name: str,
    peak_qps: float,
    populations: Mapping[str, tuple[RankingStack, int]],
    actor: Actor,
    reason: str = "",
    now: dt.datetime | None = None,
) -> Surface:
    """Create a surface (with allocation v1: everyone on their legacy stack) or update its facts."""
    now = now or timezone.now()
    if peak_qps is None or peak_qps < 0:
        raise ApplicationError("peak QPS must be zero or more", field="peak_qps")
    for population, (stack, _bp) in populations.items():
        if population not in Population.values:
            raise ApplicationError(f"unknown population {population!r}", field="populations")
        if stack.kind == RankingStack.Kind.UNIFIED_MTL:
            raise ApplicationError("a legacy population is served by a legacy stack", field="populations")
    errors = validate_allocation(
        holdout_bp=0,
        treatment_bp=0,
        treatment_stack=None,
        shadow_bp=0,
        shadow_stack=None,
        populations=_population_rows(populations),
        salt=key,
    )
    if errors:
        raise ApplicationError(
            next(iter(errors.values())), field="populations", errors={k: [v] for k, v in errors.items()}
        )
    surface = Surface.objects.select_for_update().filter(key=key).first()
    created = surface is None
    before = None if surface is None else _surface_snapshot(surface)
    if surface is None:
        surface = Surface.objects.create(key=key, name=name, peak_qps=peak_qps)
    else:
        model_update(instance=surface, data={"name": name, "peak_qps": peak_qps})
    for population, (stack, bp) in populations.items():
        SurfacePopulation.objects.update_or_create(
            surface=surface, population=population, defaults={"stack": stack, "share_bp": bp}
        )
    SurfacePopulation.objects.filter(surface=surface).exclude(population__in=list(populations)).delete()
    after = _surface_snapshot(surface)
    if created:
        audit_record(actor=actor, verb="surface.create", target=surface, after=after, reason=reason, now=now)
        Allocation.objects.create(
            surface=surface,
            version=1,
            salt=f"{key}-{secrets.token_hex(4)}",
            populations=_allocation_populations(surface),
            reason="initial allocation: every population on its legacy stack",
            created_at=now,
            created_by=_actor_fields(actor)[0],
        )
    elif before != after:
        audit_record(
            actor=actor,
            verb="surface.update",
            target=surface,
            before=before,
            after=after,
            reason=reason,
            now=now,
        )
        if before and before["populations"] != after["populations"]:
            allocation_change(
                surface=surface, actor=actor, reason=reason or "legacy populations changed", now=now
            )
    return surface


def _allocation_populations(surface: Surface) -> list[dict[str, Any]]:
    return [
        {"population": p.population, "stack": p.stack.label, "bp": p.share_bp}
        for p in surface.populations.select_related("stack").order_by("population")
    ]


# -- allocations ------------------------------------------------------------------------------------
def allocation_snapshot(allocation: Allocation) -> dict[str, Any]:
    return {
        "version": allocation.version,
        "salt": allocation.salt,
        "holdout_bp": allocation.holdout_bp,
        "treatment_stack": allocation.treatment_stack.label if allocation.treatment_stack else None,
        "treatment_bp": allocation.treatment_bp,
        "shadow_stack": allocation.shadow_stack.label if allocation.shadow_stack else None,
        "shadow_bp": allocation.shadow_bp,
        "populations": allocation.populations,
    }


_UNSET: Any = object()


# Checks another layer adds to every allocation change (a runbook refusing a manual change on a
# surface it drives: migrations_runbooks.allocation_guard). Each runs inside the change's
# transaction with the surface row locked, and may raise an ApplicationError to refuse it.
_allocation_guards: list[Callable[..., None]] = []


def allocation_guard_register(guard: Callable[..., None]) -> None:
    if guard not in _allocation_guards:
        _allocation_guards.append(guard)


@transaction.atomic
def allocation_change(
    *,
    surface: Surface,
    actor: Actor,
    reason: str,
    treatment_stack: RankingStack | None = _UNSET,
    treatment_bp: int = _UNSET,
    shadow_stack: RankingStack | None = _UNSET,
    shadow_bp: int = _UNSET,
    holdout_bp: int = _UNSET,
    salt: str = _UNSET,
    expected_version: int | None = None,
    verb: str = "allocation.change",
    now: dt.datetime | None = None,
    override: bool = False,
) -> Allocation:
    """Publish a new allocation version for ``surface``; unchanged values keep the current version.

    Arguments left out keep their current values. ``expected_version`` gives optimistic concurrency
    for API clients: a stale version is refused with 409 instead of silently overwriting. Registered
    guards run first: a surface under an active runbook refuses a manual change with 409 unless
    ``override`` (which pauses the runbook, audited).
    """
    now = now or timezone.now()
    if not reason or not reason.strip():
        raise ApplicationError("a reason is required for every allocation change", field="reason")
    surface = Surface.objects.select_for_update().get(pk=surface.pk)
    for guard in _allocation_guards:
        guard(surface=surface, actor=actor, reason=reason, verb=verb, override=override, now=now)
    current = (
        Allocation.objects.select_related("treatment_stack", "shadow_stack")
        .filter(surface=surface)
        .order_by("-version")
        .first()
    )
    if expected_version is not None and current is not None and current.version != expected_version:
        raise ConflictError(
            f"allocation of {surface.key} is at version {current.version}, not {expected_version}; reload and retry",
            field="expected_version",
        )

    def keep(value: Any, field_name: str, default: Any) -> Any:
        if value is not _UNSET:
            return value
        return getattr(current, field_name) if current is not None else default

    new_salt: str = keep(salt, "salt", f"{surface.key}-{secrets.token_hex(4)}")
    new_treatment: RankingStack | None = keep(treatment_stack, "treatment_stack", None)
    new_shadow: RankingStack | None = keep(shadow_stack, "shadow_stack", None)
    populations = _allocation_populations(surface)
    new: dict[str, Any] = {
        "salt": new_salt,
        "holdout_bp": keep(holdout_bp, "holdout_bp", 0),
        "treatment_stack": new_treatment,
        "treatment_bp": keep(treatment_bp, "treatment_bp", 0),
        "shadow_stack": new_shadow,
        "shadow_bp": keep(shadow_bp, "shadow_bp", 0),
        "populations": populations,
    }
    errors = validate_allocation(
        holdout_bp=new["holdout_bp"],
        treatment_bp=new["treatment_bp"],
        treatment_stack=new_treatment.label if new_treatment else None,
        shadow_bp=new["shadow_bp"],
        shadow_stack=new_shadow.label if new_shadow else None,
        populations=[(p["population"], p["stack"], p["bp"]) for p in populations],
        salt=new_salt,
    )
    for field_name, stack in (("treatment_stack", new_treatment), ("shadow_stack", new_shadow)):
        if stack is not None and stack.status == RankingStack.Status.RETIRED:
            errors.setdefault(field_name, f"{stack.label} is retired")
    if errors:
        field_name, message = next(iter(errors.items()))
        raise ApplicationError(
            f"{field_name}: {message}", field=field_name, errors={k: [v] for k, v in errors.items()}
        )
    if current is not None and all(getattr(current, k) == v for k, v in new.items()):
        return current  # idempotent: re-applying the same allocation publishes nothing
    allocation = Allocation.objects.create(
        surface=surface,
        version=(current.version + 1) if current else 1,
        created_by=_actor_fields(actor)[0],
        created_at=now,
        reason=reason,
        **new,
    )
    audit_record(
        actor=actor,
        verb=verb,
        target=allocation,
        before=allocation_snapshot(current) if current else None,
        after=allocation_snapshot(allocation),
        reason=reason,
        surface_key=surface.key,
        now=now,
    )
    return allocation


@transaction.atomic
def surface_promote_stack(
    *, surface: Surface, stack: RankingStack, actor: Actor, reason: str, now: dt.datetime | None = None
) -> Surface:
    """Make ``stack`` the surface's production stack for every population (used by promotion)."""
    now = now or timezone.now()
    surface = Surface.objects.select_for_update().get(pk=surface.pk)
    if surface.production_stack_id == stack.pk and surface.status == Surface.Status.UNIFIED:
        return surface
    before = _surface_snapshot(surface)
    model_update(instance=surface, data={"production_stack": stack, "status": Surface.Status.UNIFIED})
    SurfacePopulation.objects.filter(surface=surface).update(stack=stack)
    audit_record(
        actor=actor,
        verb="surface.promote",
        target=surface,
        before=before,
        after=_surface_snapshot(surface),
        reason=reason,
        now=now,
    )
    return surface


@transaction.atomic
def surface_set_status(
    *, surface: Surface, status: str, actor: Actor, reason: str, now: dt.datetime | None = None
) -> Surface:
    if status not in Surface.Status.values:
        raise ApplicationError(f"unknown status {status!r}", field="status")
    surface = Surface.objects.select_for_update().get(pk=surface.pk)
    if surface.status == status:
        return surface
    before = {"status": surface.status}
    model_update(instance=surface, data={"status": status})
    audit_record(
        actor=actor,
        verb="surface.status",
        target=surface,
        before=before,
        after={"status": status},
        reason=reason,
        now=now,
    )
    return surface


__all__ = [
    "BUCKETS",
    "allocation_change",
    "allocation_snapshot",
    "audit_record",
    "stack_register",
    "stack_set_status",
    "surface_promote_stack",
    "surface_set_status",
    "surface_upsert",
]
