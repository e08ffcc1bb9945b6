"""Runbook writes: the state machine, the beat sweeper, approvals, promotion.

State machine::

    draft ──schedule──▶ scheduled ──(start_at reached, dependency met)──▶ running(step k)
    draft/scheduled ──start──▶ running(0)
    running(k) ──gates pass──▶ running(k+1) | waiting_approval (step k+1 or promotion needs an approver)
    running/held ──gate holds──▶ held ──gates pass again──▶ running / next step
    any live ──guardrail breach──▶ rolled_back            (same tick, even paused or waiting)
    waiting_approval ──approved, gates pass──▶ running(k+1) | promoted
    live ──pause──▶ paused ──resume──▶ running;  live ──jump(j)──▶ running(j) (back) | waiting_approval (forward)
    live ──rollback──▶ rolled_back;  non-terminal ──abort──▶ aborted

Every transition is one transaction: the runbook row is locked, the allocation version it implies
is published with ``controlplane.services.allocation_change`` (so the version bumps atomically with
the transition), an audit event is written, and webhooks are queued to send after the commit.
Every service takes ``now`` so a simulated clock can drive a whole runbook.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import transaction

from controlplane import services as core
from controlplane.errors import ApplicationError, ConflictError
from controlplane.models import RankingStack, Surface, SurfacePopulation
from controlplane.permissions import APPROVER, OPERATOR, has_role
from controlplane.services import Actor, audit_record
from migrations_runbooks import capacity, gates
from migrations_runbooks.models import (
    Approval,
    CapacityConfig,
    GateResult,
    Milestone,
    RampStep,
    Runbook,
    RunbookTemplate,
    StepEvaluation,
    WebhookEndpoint,
)
from migrations_runbooks.notifications import notify

log = logging.getLogger(__name__)

SYSTEM_BEAT = "system:beat"
HOUR = 3600
DAY = 24 * HOUR

#: The standard plan: shadow → 1% → 5% → 25% → 50% → 100%.
DEFAULT_STEPS: list[dict[str, Any]] = [
    {
        "name": "shadow",
        "treatment_bp": 0,
        "shadow_bp": 1000,
        "min_duration_s": DAY,
        "min_units": 500,
        "needs_approval": False,
        "gates": gates.DEFAULT_SHADOW_GATES,
    },
    {"name": "1%", "treatment_bp": 100, "min_duration_s": DAY, "min_units": 100, "needs_approval": False},
    {"name": "5%", "treatment_bp": 500, "min_duration_s": DAY, "min_units": 500, "needs_approval": False},
    {
        "name": "25%",
        "treatment_bp": 2500,
        "min_duration_s": 2 * DAY,
        "min_units": 1000,
        "needs_approval": True,
    },
    {
        # The decision step: the most power with a control group left; it needs a ship verdict.
        "name": "50%",
        "treatment_bp": 5000,
        "min_duration_s": 3 * DAY,
        "min_units": 2000,
        "needs_approval": False,
        "gates": {**gates.DEFAULT_RAMP_GATES, "ship_decision": True},
    },
    {
        # Bake at 100% on serving health, then promote (with a second pair of eyes).
        "name": "100%",
        "treatment_bp": 10000,
        "min_duration_s": DAY,
        "min_units": 1000,
        "needs_approval": True,
        "gates": gates.DEFAULT_BAKE_GATES,
    },
]


# -- helpers --------------------------------------------------------------------------------------------
def _user_or_none(actor: Actor) -> Any:
    return None if actor is None or isinstance(actor, str) else actor


def _label(actor: Actor) -> str:
    if actor is None:
        return "system"
    return actor if isinstance(actor, str) else actor.get_username()


def _require_role(actor: Actor, role: str) -> None:
    """Users must hold the role; system actors (strings such as "system:beat") act for the machine."""
    if isinstance(actor, str):
        return
    if actor is None or not getattr(actor, "is_authenticated", False):
        raise ApplicationError("an anonymous caller cannot change a runbook", http_status=401)
    if not has_role(actor, role):
        raise ApplicationError(
            f"{actor.get_username()} lacks the {role} role", code="permission_denied", http_status=403
        )


def _require_reason(reason: str) -> str:
    if not reason or not reason.strip():
        raise ApplicationError("a reason is required for every runbook action", field="reason")
    return reason.strip()


def _lock(runbook: Runbook) -> Runbook:
    return (
        Runbook.objects.select_for_update(of=("self",))
        .select_related("surface", "target_stack")
        .get(pk=runbook.pk)
    )


def _snapshot(rb: Runbook) -> dict[str, Any]:
    return {
        "status": rb.status,
        "current_step": rb.current_step,
        "pending_step": rb.pending_step,
        "status_reason": rb.status_reason,
    }


def _steps(rb: Runbook) -> list[RampStep]:
    cache = _sweep.get()
    if cache is not None and cache.plan_versions.get(rb.pk) == rb.plan_version and rb.pk in cache.steps:
        return cache.steps.pop(rb.pk)  # read in bulk before the sweep; the plan has not changed since
    return list(rb.steps.order_by("index"))


def normalize_steps(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate editable step specs; fill gate defaults. Raises ApplicationError naming the step."""
    if not steps:
        raise ApplicationError("a runbook needs at least one step", field="steps")
    out: list[dict[str, Any]] = []
    previous_bp = 0
    for i, raw in enumerate(steps):
        where = f"steps[{i}]"
        name = str(raw.get("name") or "").strip()
        if not name:
            raise ApplicationError(f"{where}: a step needs a name", field=f"{where}.name")
        try:
            treatment_bp = int(raw.get("treatment_bp", 0))
            shadow_bp = int(raw.get("shadow_bp", 0) or 0)
            min_duration_s = int(raw.get("min_duration_s", DAY))
            min_units = int(raw.get("min_units", 0) or 0)
        except (TypeError, ValueError) as exc:
            raise ApplicationError(f"{where}: {exc}", field=where) from exc
        for key, value in (("treatment_bp", treatment_bp), ("shadow_bp", shadow_bp)):
            if not 0 <= value <= 10000:
                raise ApplicationError(f"{where}.{key} must be within 0..10000", field=f"{where}.{key}")
        if min_duration_s < 0 or min_units < 0:
            raise ApplicationError(f"{where}: durations and units must be non-negative", field=where)
        if treatment_bp < previous_bp:
            raise ApplicationError(
                f"{where}: ramps are monotone; {treatment_bp} bp after {previous_bp} bp",
                field=f"{where}.treatment_bp",
            )
        if treatment_bp == 0 and shadow_bp == 0:
            raise ApplicationError(f"{where}: a step serves treatment or shadows (both 0)", field=where)
        default_gates = (
            gates.DEFAULT_SHADOW_GATES
            if treatment_bp == 0
            else gates.DEFAULT_BAKE_GATES
            if treatment_bp == 10000
            else gates.DEFAULT_RAMP_GATES
        )
        try:
            step_gates = gates.validate_config(raw.get("gates") or {})
        except ValueError as exc:
            raise ApplicationError(f"{where}.{exc}", field=f"{where}.gates") from exc
        merged = {**default_gates, **step_gates}
        out.append(
            {
                "name": name[:60],
                "treatment_bp": treatment_bp,
                "shadow_bp": shadow_bp,
                "min_duration_s": min_duration_s,
                "min_units": min_units,
                "needs_approval": bool(raw.get("needs_approval", False)),
                "gates": merged,
            }
        )
        previous_bp = treatment_bp
    if out[-1]["treatment_bp"] != 10000:
        raise ApplicationError("the last step must move 100% (10000 bp) to the target stack", field="steps")
    if not any(s["gates"].get("ship_decision") for s in out):
        # Promotion needs a ship decision: by default the last step that still has a control group
        # takes it (at 100% nothing is left to compare with).
        compared = [s for s in out if 0 < s["treatment_bp"] < 10000]
        if not compared:
            raise ApplicationError(
                "a plan needs a step with a control group (0 < treatment_bp < 10000) to take the ship decision",
                field="steps",
            )
        compared[-1]["gates"] = {**compared[-1]["gates"], "ship_decision": True}
    return out


def _step_rows(rb: Runbook, specs: Sequence[Mapping[str, Any]], start_index: int = 0) -> list[RampStep]:
    return [
        RampStep(
            runbook=rb,
            index=start_index + i,
            name=s["name"],
            treatment_bp=s["treatment_bp"],
            shadow_bp=s["shadow_bp"],
            min_duration=dt.timedelta(seconds=s["min_duration_s"]),
            min_units=s["min_units"],
            needs_approval=s["needs_approval"],
            gates=s["gates"],
        )
        for i, s in enumerate(specs)
    ]


def step_spec(step: RampStep) -> dict[str, Any]:
    return {
        "name": step.name,
        "treatment_bp": step.treatment_bp,
        "shadow_bp": step.shadow_bp,
        "min_duration_s": int(step.min_duration.total_seconds()),
        "min_units": step.min_units,
        "needs_approval": step.needs_approval,
        "gates": step.gates,
    }


# -- templates, milestones, config -----------------------------------------------------------------------
@transaction.atomic
def runbook_template_upsert(
    *,
    key: str,
    name: str,
    actor: Actor,
    now: dt.datetime,
    steps: Sequence[Mapping[str, Any]] | None = None,
    description: str = "",
    promotion_needs_approval: bool = True,
    check_interval_s: int = 60,
) -> RunbookTemplate:
    _require_role(actor, OPERATOR)
    specs = normalize_steps(steps if steps is not None else DEFAULT_STEPS)
    template = RunbookTemplate.objects.select_for_update().filter(key=key).first()
    values = {
        "name": name,
        "description": description,
        "steps": specs,
        "promotion_needs_approval": promotion_needs_approval,
        "check_interval_s": check_interval_s,
    }
    if template is None:
        template = RunbookTemplate.objects.create(key=key, created_at=now, updated_at=now, **values)
        audit_record(actor=actor, verb="runbook_template.create", target=template, after=values, now=now)
        return template
    before = {k: getattr(template, k) for k in values}
    if before == values:
        return template
    for k, v in values.items():
        setattr(template, k, v)
    template.updated_at = now
    template.save()
    audit_record(
        actor=actor, verb="runbook_template.update", target=template, before=before, after=values, now=now
    )
    return template


@transaction.atomic
def milestone_upsert(
    *,
    key: str,
    name: str,
    actor: Actor,
    now: dt.datetime,
    order: int = 0,
    description: str = "",
    target_kind: str = RankingStack.Kind.UNIFIED_MTL,
    target_stack: RankingStack | None = None,
    due_at: dt.datetime | None = None,
) -> Milestone:
    values = {
        "name": name,
        "order": order,
        "description": description,
        "target_kind": target_kind,
        "target_stack": target_stack,
        "due_at": due_at,
    }
    milestone, created = Milestone.objects.get_or_create(key=key, defaults={**values, "created_at": now})
    if created:
        audit_record(actor=actor, verb="milestone.create", target=milestone, after={"name": name}, now=now)
    elif any(getattr(milestone, k) != v for k, v in values.items()):
        for k, v in values.items():
            setattr(milestone, k, v)
        milestone.save()
        audit_record(actor=actor, verb="milestone.update", target=milestone, after={"name": name}, now=now)
    return milestone


@transaction.atomic
def capacity_config_update(*, actor: Actor, now: dt.datetime, reason: str, **values: Any) -> CapacityConfig:
    """Prices, headroom and fleet limits (the capacity gate refuses steps beyond the limits)."""
    _require_role(actor, OPERATOR)
    allowed = {
        "headroom",
        "gpu_replica_cost_per_hour",
        "cpu_replica_cost_per_hour",
        "host_cpu_cores_per_gpu_replica",
        "min_replicas",
        "max_gpu_replicas",
        "max_cpu_replicas",
    }
    unknown = set(values) - allowed
    if unknown:
        raise ApplicationError(f"unknown capacity settings: {sorted(unknown)}", field=sorted(unknown)[0])
    if values.get("headroom") is not None and not 0 <= values["headroom"] <= 5:
        raise ApplicationError("headroom is a fraction within 0..5", field="headroom")
    if (
        values.get("host_cpu_cores_per_gpu_replica") is not None
        and values["host_cpu_cores_per_gpu_replica"] <= 0
    ):
        raise ApplicationError(
            "host cores per GPU replica must be positive", field="host_cpu_cores_per_gpu_replica"
        )
    config, _ = CapacityConfig.objects.select_for_update().get_or_create(
        key="default", defaults={"updated_at": now}
    )
    before = {k: getattr(config, k) for k in allowed}
    for k, v in values.items():
        setattr(config, k, v)
    config.updated_at = now
    config.save()
    after = {k: getattr(config, k) for k in allowed}
    if before != after:
        audit_record(
            actor=actor,
            verb="capacity.config",
            target=config,
            before=before,
            after=after,
            reason=reason,
            now=now,
        )
    return config


@transaction.atomic
def webhook_endpoint_upsert(
    *,
    name: str,
    url: str,
    secret: str,
    actor: Actor,
    now: dt.datetime,
    events: Sequence[str] = (),
    active: bool = True,
) -> WebhookEndpoint:
    _require_role(actor, OPERATOR)
    from migrations_runbooks.models import Notification

    bad = [e for e in events if e not in Notification.Event.values]
    if bad:
        raise ApplicationError(f"unknown events {bad}; expected {Notification.Event.values}", field="events")
    if len(secret) < 16:
        raise ApplicationError("the shared secret must be at least 16 characters", field="secret")
    endpoint, created = WebhookEndpoint.objects.update_or_create(
        name=name,
        defaults={"url": url, "secret": secret, "events": list(events), "active": active, "created_at": now},
    )
    audit_record(
        actor=actor,
        verb="webhook.create" if created else "webhook.update",
        target=endpoint,
        after={"url": url, "events": list(events), "active": active},  # never the secret
        now=now,
    )
    return endpoint


# -- create / edit / schedule ------------------------------------------------------------------------------
@transaction.atomic
def runbook_create(
    *,
    surface: Surface,
    target_stack: RankingStack,
    actor: Actor,
    now: dt.datetime,
    name: str = "",
    template: RunbookTemplate | None = None,
    steps: Sequence[Mapping[str, Any]] | None = None,
    milestone: Milestone | None = None,
    depends_on: Runbook | None = None,
    depends_on_bp: int = 5000,
    depends_on_hold_s: int = DAY,
    check_interval_s: int | None = None,
    promotion_needs_approval: bool | None = None,
    reason: str = "",
) -> Runbook:
    """A draft runbook from a template, explicit steps, or the standard plan."""
    _require_role(actor, OPERATOR)
    if target_stack.kind != RankingStack.Kind.UNIFIED_MTL:
        raise ApplicationError("a runbook migrates a surface to a unified stack", field="target_stack")
    if target_stack.status == RankingStack.Status.RETIRED:
        raise ApplicationError(f"{target_stack.label} is retired", field="target_stack")
    if surface.production_stack_id == target_stack.pk:
        raise ConflictError(f"{surface.key} already runs {target_stack.label} in production", field="surface")
    if depends_on is not None and depends_on.surface_id == surface.pk:
        raise ApplicationError("a runbook cannot depend on a runbook of its own surface", field="depends_on")
    if not 0 < depends_on_bp <= 10000:
        raise ApplicationError("depends_on_bp must be within 1..10000", field="depends_on_bp")
    specs = normalize_steps(steps if steps is not None else (template.steps if template else DEFAULT_STEPS))
    rb = Runbook.objects.create(
        surface=surface,
        target_stack=target_stack,
        name=name or f"{surface.key} → {target_stack.label}",
        template=template,
        milestone=milestone,
        depends_on=depends_on,
        depends_on_bp=depends_on_bp,
        depends_on_hold_s=depends_on_hold_s,
        check_interval_s=check_interval_s or (template.check_interval_s if template else 60),
        promotion_needs_approval=(
            promotion_needs_approval
            if promotion_needs_approval is not None
            else (template.promotion_needs_approval if template else True)
        ),
        created_by=_user_or_none(actor),
        created_at=now,
        updated_at=now,
    )
    RampStep.objects.bulk_create(_step_rows(rb, specs))
    audit_record(
        actor=actor,
        verb="runbook.create",
        target=rb,
        after={"status": rb.status, "steps": specs, "target_stack": target_stack.label},
        reason=reason,
        now=now,
    )
    return rb


@transaction.atomic
def runbook_update_steps(
    *, runbook: Runbook, steps: Sequence[Mapping[str, Any]], actor: Actor, reason: str, now: dt.datetime
) -> Runbook:
    """Edit the plan. Before start: all steps. While live: only steps after the current one."""
    _require_role(actor, OPERATOR)
    reason = _require_reason(reason)
    rb = _lock(runbook)
    if rb.status in Runbook.TERMINAL:
        raise ConflictError(f"runbook {rb.pk} is {rb.status}; its plan is final")
    existing = _steps(rb)
    keep = existing[: rb.current_step + 1] if rb.status in Runbook.LIVE else []
    specs = normalize_steps([step_spec(s) for s in keep] + list(steps))
    before = [step_spec(s) for s in existing]
    RampStep.objects.filter(runbook=rb, index__gte=len(keep)).delete()
    RampStep.objects.bulk_create(_step_rows(rb, specs[len(keep) :], start_index=len(keep)))
    if rb.pending_step is not None and rb.pending_step >= len(specs):
        rb.pending_step = None
    rb.updated_at = now
    rb.plan_version += 1
    rb.save(update_fields=["pending_step", "updated_at", "plan_version"])
    audit_record(
        actor=actor,
        verb="runbook.steps",
        target=rb,
        before={"steps": before},
        after={"steps": specs},
        reason=reason,
        now=now,
    )
    return rb


@transaction.atomic
def runbook_schedule(
    *, runbook: Runbook, start_at: dt.datetime, actor: Actor, reason: str, now: dt.datetime
) -> Runbook:
    """draft → scheduled: the sweeper starts it at ``start_at`` once its dependency is met."""
    _require_role(actor, OPERATOR)
    reason = _require_reason(reason)
    rb = _lock(runbook)
    if rb.status == Runbook.Status.SCHEDULED and rb.start_at == start_at:
        return rb
    if rb.status not in (Runbook.Status.DRAFT, Runbook.Status.SCHEDULED):
        raise ConflictError(f"runbook {rb.pk} is {rb.status}; only a draft can be scheduled")
    _check_no_other_active(rb)
    before = _snapshot(rb)
    rb.status, rb.start_at, rb.next_check_at = Runbook.Status.SCHEDULED, start_at, start_at
    rb.started_by, rb.started_by_label = _user_or_none(actor), _label(actor)
    rb.status_reason = reason
    rb.updated_at = now
    rb.save()
    audit_record(
        actor=actor,
        verb="runbook.schedule",
        target=rb,
        before=before,
        after={**_snapshot(rb), "start_at": start_at.isoformat()},
        reason=reason,
        now=now,
    )
    return rb


def _check_no_other_active(rb: Runbook) -> None:
    other = Runbook.objects.filter(surface=rb.surface, status__in=Runbook.ACTIVE).exclude(pk=rb.pk).first()
    if other is not None:
        raise ConflictError(f"{rb.surface.key} already has an active runbook ({other.pk}, {other.status})")


def dependency_status(rb: Runbook, now: dt.datetime) -> tuple[bool, str]:
    """Whether the runbook this one depends on reached ``depends_on_bp`` and held there cleanly.

    Cleanly: it has been at or beyond that share for ``depends_on_hold_s`` and no evaluation since it
    got there held or rolled back (and it is not held, paused or finished badly now).
    """
    dep = rb.depends_on
    if dep is None:
        return True, "no dependency"
    if dep.status == Runbook.Status.PROMOTED:
        return True, f"runbook {dep.pk} ({dep.surface.key}) is promoted"
    if dep.status not in (Runbook.Status.RUNNING, Runbook.Status.WAITING_APPROVAL):
        return False, f"runbook {dep.pk} ({dep.surface.key}) is {dep.status}"
    first = dep.steps.filter(treatment_bp__gte=rb.depends_on_bp).order_by("index").first()
    if first is None or first.started_at is None or first.index > dep.current_step:
        return False, f"runbook {dep.pk} ({dep.surface.key}) has not reached {rb.depends_on_bp / 100:g}% yet"
    held_for = (now - first.started_at).total_seconds()
    if held_for < rb.depends_on_hold_s:
        return False, (
            f"runbook {dep.pk} ({dep.surface.key}) reached {rb.depends_on_bp / 100:g}% "
            f"{held_for / 3600:.1f} h ago; needs {rb.depends_on_hold_s / 3600:.1f} h"
        )
    dirty = dep.evaluations.filter(
        evaluated_at__gte=first.started_at,
        outcome__in=[StepEvaluation.Outcome.HOLD, StepEvaluation.Outcome.ROLLBACK],
    ).first()
    if dirty is not None:
        return (
            False,
            f"runbook {dep.pk} ({dep.surface.key}) was held at {dirty.evaluated_at:%Y-%m-%d %H:%M}: {dirty.reason}",
        )
    return (
        True,
        f"runbook {dep.pk} ({dep.surface.key}) held {rb.depends_on_bp / 100:g}% cleanly for {held_for / 3600:.1f} h",
    )


@transaction.atomic
def runbook_start(*, runbook: Runbook, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    """draft/scheduled → running at step 0 (dependency and capacity checked; allocation published)."""
    _require_role(actor, OPERATOR)
    reason = _require_reason(reason)
    rb = _lock(runbook)
    if rb.status in Runbook.LIVE:
        return rb  # idempotent: already started
    if rb.status not in (Runbook.Status.DRAFT, Runbook.Status.SCHEDULED):
        raise ConflictError(f"runbook {rb.pk} is {rb.status}; it cannot start")
    _check_no_other_active(rb)
    ok, why = dependency_status(rb, now)
    if not ok:
        raise ConflictError(f"dependency not met: {why}", field="depends_on")
    if not isinstance(actor, str) or rb.started_by_id is None:
        rb.started_by, rb.started_by_label = _user_or_none(actor), _label(actor)
    return _start(rb, actor=actor, reason=reason, now=now)


def _start(rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    steps = _steps(rb)
    check = _capacity_check(rb, steps[0])
    if not check.ok:
        raise ConflictError(f"not enough capacity for step {steps[0].name}: {check.reason}", field="capacity")
    before = _snapshot(rb)
    rb.started_at = now
    _enter_step(rb, steps, 0, actor=actor, reason=reason, now=now, verb="runbook.start", before=before)
    return rb


# -- transitions -------------------------------------------------------------------------------------------
def _note_allocation(rb: Runbook, allocation: Any) -> Any:
    cache = _sweep.get()
    if cache is not None:
        cache.loads[rb.surface_id] = capacity.load_from_allocation(allocation, rb.surface.peak_qps)
    return allocation


def _allocation_for_step(rb: Runbook, step: RampStep, *, actor: Actor, reason: str, now: dt.datetime) -> Any:
    kwargs: dict[str, Any] = {
        "treatment_stack": rb.target_stack if step.treatment_bp else None,
        "treatment_bp": step.treatment_bp,
        "shadow_stack": rb.target_stack if step.shadow_bp else None,
        "shadow_bp": step.shadow_bp,
    }
    if step.treatment_bp and not rb.salt:
        # A fresh salt when treatment first starts: the experiment's exposures begin clean, and
        # later steps keep it so raising the share only adds units (monotone, sticky ramps).
        rb.salt = f"{rb.surface.key}-rb{rb.pk}-{secrets.token_hex(3)}"
    if rb.salt:
        kwargs["salt"] = rb.salt
    return _note_allocation(
        rb,
        core.allocation_change(
            surface=rb.surface,
            actor=actor,
            reason=f"runbook {rb.pk} step {step.index} ({step.name}): {reason}",
            verb="allocation.ramp",
            now=now,
            **kwargs,
        ),
    )


def _enter_step(
    rb: Runbook,
    steps: list[RampStep],
    index: int,
    *,
    actor: Actor,
    reason: str,
    now: dt.datetime,
    verb: str,
    before: dict[str, Any],
) -> Runbook:
    step = steps[index]
    if 0 <= rb.current_step < len(steps) and rb.current_step != index:
        RampStep.objects.filter(pk=steps[rb.current_step].pk).update(completed_at=now)
    allocation = _allocation_for_step(rb, step, actor=actor, reason=reason, now=now)
    if (
        step.treatment_bp
        and rb.salt
        and not rb.experiment_key
        and any(gates.needs_analysis(s.gates or {}) for s in steps)
    ):
        rb.experiment_key = gates.experiment_attach(runbook=rb, actor=actor, now=now)
    step.started_at, step.completed_at = now, None
    step.save(update_fields=["started_at", "completed_at"])
    if rb.ship_decision and index <= int(rb.ship_decision.get("step_index", -1)):
        rb.ship_decision = None  # back at (or before) the decision step: the decision is taken again
    rb.current_step, rb.step_started_at, rb.pending_step = index, now, None
    rb.status, rb.status_reason = Runbook.Status.RUNNING, reason
    rb.next_check_at = now + dt.timedelta(seconds=rb.check_interval_s)
    rb.updated_at = now
    rb.save()
    audit_record(
        actor=actor,
        verb=verb,
        target=rb,
        before=before,
        after={
            **_snapshot(rb),
            "step": step.name,
            "treatment_bp": step.treatment_bp,
            "allocation_version": allocation.version,
        },
        reason=reason,
        now=now,
    )
    return rb


def _reset_traffic(rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime, verb: str) -> Any:
    return _note_allocation(
        rb,
        core.allocation_change(
            surface=rb.surface,
            actor=actor,
            reason=f"runbook {rb.pk}: {reason}",
            treatment_stack=None,
            treatment_bp=0,
            shadow_stack=None,
            shadow_bp=0,
            verb=verb,
            now=now,
        ),
    )


def _close_approvals(rb: Runbook, now: dt.datetime, status: str = Approval.Status.CANCELLED) -> None:
    rb.approvals.filter(status__in=[Approval.Status.PENDING, Approval.Status.APPROVED]).update(
        status=status, decided_at=now
    )


def _rollback(
    rb: Runbook, *, actor: Actor, reason: str, now: dt.datetime, details: dict[str, Any] | None = None
) -> Runbook:
    before = _snapshot(rb)
    allocation = _reset_traffic(
        rb, actor=actor, reason=f"rollback: {reason}", now=now, verb="allocation.rollback"
    )
    _close_approvals(rb, now)
    rb.status, rb.status_reason, rb.finished_at, rb.next_check_at, rb.pending_step = (
        Runbook.Status.ROLLED_BACK,
        reason,
        now,
        None,
        None,
    )
    rb.updated_at = now
    rb.save()
    audit_record(
        actor=actor,
        verb="runbook.rollback",
        target=rb,
        before=before,
        after={**_snapshot(rb), "allocation_version": allocation.version},
        reason=reason,
        now=now,
    )
    notify(
        runbook=rb,
        event="rollback",
        reason=reason,
        now=now,
        details={"allocation_version": allocation.version, **(details or {})},
    )
    return rb


@transaction.atomic
def runbook_pause(*, runbook: Runbook, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    """Freeze advancement. A paused runbook is still monitored: a guardrail breach rolls it back."""
    _require_role(actor, OPERATOR)
    reason = _require_reason(reason)
    rb = _lock(runbook)
    if rb.status == Runbook.Status.PAUSED:
        return rb
    if rb.status not in (Runbook.Status.RUNNING, Runbook.Status.HELD, Runbook.Status.WAITING_APPROVAL):
        raise ConflictError(f"runbook {rb.pk} is {rb.status}; only a live runbook can pause")
    before = _snapshot(rb)
    rb.status, rb.status_reason, rb.updated_at = Runbook.Status.PAUSED, reason, now
    rb.save(update_fields=["status", "status_reason", "updated_at"])
    audit_record(
        actor=actor,
        verb="runbook.pause",
        target=rb,
        before=before,
        after=_snapshot(rb),
        reason=reason,
        now=now,
    )
    return rb


@transaction.atomic
def runbook_resume(*, runbook: Runbook, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    """paused → running (or back to waiting for its open approval); the next tick re-checks gates."""
    _require_role(actor, OPERATOR)
    reason = _require_reason(reason)
    rb = _lock(runbook)
    if rb.status == Runbook.Status.RUNNING:
        return rb
    if rb.status not in (Runbook.Status.PAUSED, Runbook.Status.HELD):
        raise ConflictError(f"runbook {rb.pk} is {rb.status}; only a paused or held runbook resumes")
    before = _snapshot(rb)
    open_approval = rb.approvals.filter(status=Approval.Status.PENDING).exists()
    rb.status = Runbook.Status.WAITING_APPROVAL if open_approval else Runbook.Status.RUNNING
    rb.status_reason, rb.next_check_at, rb.updated_at = reason, now, now
    rb.save(update_fields=["status", "status_reason", "next_check_at", "updated_at"])
    audit_record(
        actor=actor,
        verb="runbook.resume",
        target=rb,
        before=before,
        after=_snapshot(rb),
        reason=reason,
        now=now,
    )
    return rb


@transaction.atomic
def runbook_jump(*, runbook: Runbook, to_step: int, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    """Back: immediate (less exposure). Forward: needs an approver, and the gates still decide."""
    _require_role(actor, OPERATOR)
    reason = _require_reason(reason)
    rb = _lock(runbook)
    if rb.status not in Runbook.LIVE:
        raise ConflictError(f"runbook {rb.pk} is {rb.status}; only a live runbook can jump")
    steps = _steps(rb)
    if not 0 <= to_step < len(steps):
        raise ApplicationError(f"step {to_step} does not exist (0..{len(steps) - 1})", field="to_step")
    if to_step == rb.current_step:
        raise ApplicationError(f"the runbook is already at step {to_step}", field="to_step")
    before = _snapshot(rb)
    if to_step < rb.current_step:
        _close_approvals(rb, now)
        return _enter_step(
            rb, steps, to_step, actor=actor, reason=reason, now=now, verb="runbook.jump", before=before
        )
    # Forward: never skip gates or approvals. Ask a second person; the tick moves once gates pass.
    _close_approvals(rb, now)
    _request_approval(
        rb, kind=Approval.Kind.JUMP, step_index=to_step, requested_by=actor, reason=reason, now=now
    )
    rb.pending_step = to_step
    rb.status = Runbook.Status.WAITING_APPROVAL
    rb.status_reason = f"jump to step {to_step} ({steps[to_step].name}) requested: {reason}"
    rb.updated_at = now
    rb.save()
    audit_record(
        actor=actor,
        verb="runbook.jump_request",
        target=rb,
        before=before,
        after=_snapshot(rb),
        reason=reason,
        now=now,
    )
    return rb


@transaction.atomic
def runbook_rollback(*, runbook: Runbook, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    _require_role(actor, OPERATOR)
    reason = _require_reason(reason)
    rb = _lock(runbook)
    if rb.status == Runbook.Status.ROLLED_BACK:
        return rb
    if rb.status not in Runbook.LIVE:
        raise ConflictError(f"runbook {rb.pk} is {rb.status}; only a live runbook can roll back")
    _record_evaluation(
        rb,
        _current_step(rb),
        [],
        outcome=StepEvaluation.Outcome.ROLLBACK,
        reason=reason,
        now=now,
        actor=actor,
    )
    return _rollback(rb, actor=actor, reason=reason, now=now)


@transaction.atomic
def runbook_abort(*, runbook: Runbook, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    """Cancel the plan; a live one hands all traffic back to the legacy stacks."""
    _require_role(actor, OPERATOR)
    reason = _require_reason(reason)
    rb = _lock(runbook)
    if rb.status == Runbook.Status.ABORTED:
        return rb
    if rb.status in Runbook.TERMINAL:
        raise ConflictError(f"runbook {rb.pk} is {rb.status}; it cannot be aborted")
    before = _snapshot(rb)
    after_extra: dict[str, Any] = {}
    if rb.status in Runbook.LIVE:
        allocation = _reset_traffic(
            rb, actor=actor, reason=f"abort: {reason}", now=now, verb="allocation.abort"
        )
        after_extra["allocation_version"] = allocation.version
    _close_approvals(rb, now)
    rb.status, rb.status_reason, rb.finished_at, rb.next_check_at, rb.pending_step = (
        Runbook.Status.ABORTED,
        reason,
        now,
        None,
        None,
    )
    rb.updated_at = now
    rb.save()
    audit_record(
        actor=actor,
        verb="runbook.abort",
        target=rb,
        before=before,
        after={**_snapshot(rb), **after_extra},
        reason=reason,
        now=now,
    )
    return rb


# -- approvals (four-eyes) ---------------------------------------------------------------------------------
def _request_approval(
    rb: Runbook, *, kind: str, step_index: int | None, requested_by: Actor, reason: str, now: dt.datetime
) -> Approval:
    existing = rb.approvals.filter(status__in=[Approval.Status.PENDING, Approval.Status.APPROVED]).first()
    if existing is not None and existing.kind == kind and existing.step_index == step_index:
        return existing
    if existing is not None:
        existing.status, existing.decided_at = Approval.Status.CANCELLED, now
        existing.save(update_fields=["status", "decided_at"])
    approval = Approval.objects.create(
        runbook=rb,
        kind=kind,
        step_index=step_index,
        requested_by=_user_or_none(requested_by),
        requested_by_label=_label(requested_by),
        requested_at=now,
        request_reason=reason,
    )
    audit_record(
        actor=requested_by,
        verb="approval.request",
        target=approval,
        after={"kind": kind, "step_index": step_index},
        reason=reason,
        surface_key=rb.surface.key,
        now=now,
    )
    notify(
        runbook=rb,
        event="approval_needed",
        reason=reason,
        now=now,
        details={
            "approval": {
                "id": approval.pk,
                "kind": kind,
                "step_index": step_index,
                "requested_by": approval.requested_by_label,
            }
        },
    )
    return approval


def _open_approval(rb: Runbook) -> Approval | None:
    return rb.approvals.filter(status__in=[Approval.Status.PENDING, Approval.Status.APPROVED]).first()


@transaction.atomic
def runbook_approve(*, runbook: Runbook, actor: Actor, reason: str, now: dt.datetime) -> Approval:
    """Grant the open approval. Four-eyes: an approver who neither requested nor started the runbook."""
    reason = _require_reason(reason)
    if isinstance(actor, str) or actor is None:
        raise ApplicationError(
            "approvals are given by people, not by the system", code="permission_denied", http_status=403
        )
    _require_role(actor, APPROVER)
    rb = _lock(runbook)
    approval = (
        rb.approvals.select_for_update()
        .filter(status__in=[Approval.Status.PENDING, Approval.Status.APPROVED])
        .first()
    )
    if approval is None:
        raise ConflictError(f"runbook {rb.pk} has no approval waiting")
    if approval.status == Approval.Status.APPROVED:
        return approval
    if approval.requested_by_id == actor.pk or rb.started_by_id == actor.pk:
        raise ApplicationError(
            "four-eyes: the approver must be someone other than the operator who requested or started this runbook",
            code="four_eyes",
            http_status=403,
        )
    approval.status, approval.decided_by, approval.decided_at, approval.decision_reason = (
        Approval.Status.APPROVED,
        _user_or_none(actor),
        now,
        reason,
    )
    approval.save()
    # The grant does not move traffic by itself: the next tick re-checks the gates on fresh analysis.
    rb.next_check_at = now
    if rb.status == Runbook.Status.WAITING_APPROVAL:
        rb.status_reason = f"approved by {actor.get_username()}: {reason}; applying on the next check"
    rb.updated_at = now
    rb.save(update_fields=["next_check_at", "status_reason", "updated_at"])
    audit_record(
        actor=actor,
        verb="approval.approve",
        target=approval,
        after={"kind": approval.kind, "step_index": approval.step_index},
        reason=reason,
        surface_key=rb.surface.key,
        now=now,
    )
    return approval


@transaction.atomic
def runbook_reject(*, runbook: Runbook, actor: Actor, reason: str, now: dt.datetime) -> Approval:
    """Refuse the open approval: the runbook stays on its step, held, with the reason."""
    reason = _require_reason(reason)
    if isinstance(actor, str) or actor is None:
        raise ApplicationError("approvals are given by people", code="permission_denied", http_status=403)
    _require_role(actor, APPROVER)
    rb = _lock(runbook)
    approval = rb.approvals.select_for_update().filter(status=Approval.Status.PENDING).first()
    if approval is None:
        raise ConflictError(f"runbook {rb.pk} has no approval waiting")
    approval.status, approval.decided_by, approval.decided_at, approval.decision_reason = (
        Approval.Status.REJECTED,
        _user_or_none(actor),
        now,
        reason,
    )
    approval.save()
    before = _snapshot(rb)
    rb.pending_step = None
    if rb.status == Runbook.Status.WAITING_APPROVAL:
        rb.status = Runbook.Status.HELD
    rb.status_reason = f"approval rejected by {actor.get_username()}: {reason}"
    rb.updated_at = now
    rb.save()
    audit_record(
        actor=actor,
        verb="approval.reject",
        target=approval,
        before=before,
        after=_snapshot(rb),
        reason=reason,
        surface_key=rb.surface.key,
        now=now,
    )
    notify(runbook=rb, event="hold", reason=rb.status_reason, now=now)
    return approval


# -- gates -----------------------------------------------------------------------------------------------------
class _SweepCache:
    """Registry facts read once per sweep instead of once per ramp (prices, stack specs, loads).

    A transition updates its surface's load in place, so later ramps in the same sweep see it.
    """

    def __init__(self, due: list[tuple[int, int]]) -> None:
        self.plan_versions = dict(due)
        self.prices = capacity.prices_current()
        self.specs = capacity.stack_specs()
        self.loads = capacity.current_loads()
        self.steps: dict[int, list[RampStep]] = {}
        for step in RampStep.objects.filter(runbook_id__in=self.plan_versions).order_by(
            "runbook_id", "index"
        ):
            self.steps.setdefault(step.runbook_id, []).append(step)
        self.runs: dict[str, Any] = {}
        if gates.analysis_max_age_s() > 0:
            keys = Runbook.objects.filter(pk__in=self.plan_versions).exclude(experiment_key="")
            self.runs = gates.latest_analysis_runs(list(keys.values_list("experiment_key", flat=True)))


_sweep: contextvars.ContextVar[_SweepCache | None] = contextvars.ContextVar("runbook_sweep", default=None)


def _capacity_check(rb: Runbook, step: RampStep) -> capacity.CapacityCheck:
    """Fleet-wide plan with this surface at ``step`` and every other surface as it is now."""
    cache = _sweep.get()
    prices = cache.prices if cache else capacity.prices_current()
    loads = dict(cache.loads) if cache else capacity.current_loads()
    current = loads.get(rb.surface_id)
    populations = (
        current.populations
        if current
        else tuple(
            (p.population, p.stack.label, p.share_bp)
            for p in SurfacePopulation.objects.filter(surface=rb.surface).select_related("stack")
        )
    )
    loads[rb.surface_id] = capacity.SurfaceLoad(
        rb.surface.key,
        rb.surface.peak_qps,
        populations,
        treatment_stack=rb.target_stack.label if step.treatment_bp else None,
        treatment_bp=step.treatment_bp,
        shadow_stack=rb.target_stack.label if step.shadow_bp else None,
        shadow_bp=step.shadow_bp,
    )
    plan = capacity.plan_fleet(list(loads.values()), cache.specs if cache else capacity.stack_specs(), prices)
    return capacity.check_limits(plan, prices)


def _current_step(rb: Runbook) -> RampStep | None:
    return rb.steps.filter(index=rb.current_step).first() if rb.current_step >= 0 else None


@dataclass
class Evaluation:
    gates: list[gates.Gate]
    outcome: str
    analysis: dict[str, Any] | None = None
    reasons: list[str] = field(default_factory=list)


def runbook_evaluate(rb: Runbook, step: RampStep, steps: list[RampStep], *, now: dt.datetime) -> Evaluation:
    """The current step's gates on fresh analysis/parity (no writes besides the analysis run)."""
    config = step.gates or {}
    analysis, analysis_error = (None, "")
    if gates.needs_analysis(config):
        analysis, analysis_error = gates.fresh_analysis(runbook=rb, now=now)
    parity, parity_error = (None, "")
    if gates.needs_parity(config):
        parity, parity_error = gates.fresh_parity(runbook=rb, since=step.started_at)
    serving, serving_error = (None, "")
    if gates.needs_serving(config):
        serving, serving_error = gates.fresh_serving(runbook=rb, since=step.started_at, until=now)
    facts = gates.StepFacts(
        name=step.name,
        treatment_bp=step.treatment_bp,
        shadow_bp=step.shadow_bp,
        min_duration_s=step.min_duration.total_seconds(),
        min_units=step.min_units,
        gates=config,
        elapsed_s=(now - (step.started_at or now)).total_seconds(),
        slo_ms=rb.target_stack.latency_slo_ms,
        is_last=step.index == len(steps) - 1,
    )
    # The capacity of the step being held stays a gate too (limits may have been lowered).
    check = _capacity_check(rb, step) if config.get("capacity") else None
    result = gates.evaluate(
        facts,
        analysis=analysis,
        analysis_error=analysis_error,
        parity=parity,
        parity_error=parity_error,
        serving=serving,
        serving_error=serving_error,
        capacity=check,
    )
    outcome = gates.summarize(result)
    return Evaluation(result, outcome, analysis, [g.reason for g in gates.blocking(result)])


def _record_evaluation(
    rb: Runbook,
    step: RampStep | None,
    result: Sequence[gates.Gate],
    *,
    outcome: str,
    reason: str,
    now: dt.datetime,
    analysis: Mapping[str, Any] | None = None,
    actor: Actor = SYSTEM_BEAT,
) -> StepEvaluation | None:
    """Keep the latest look on the runbook row; add a history row when something changed.

    The sweeper looks every minute; a waiting ramp whose gates say the same thing as last time
    only refreshes ``Runbook.last_evaluation`` (values and times), so history stays readable and
    the tick stays cheap. Holds, rollbacks, advances and any change of a gate's outcome are rows.
    """
    signature = [
        step.index if step else rb.current_step,
        outcome,
        sorted([g.gate, g.subject, g.outcome] for g in result),
    ]
    previous = rb.last_evaluation or {}
    repeat = outcome in (
        StepEvaluation.Outcome.WAIT,
        StepEvaluation.Outcome.MONITOR,
        StepEvaluation.Outcome.APPROVAL,
    ) and (previous.get("signature") == signature and previous.get("evaluation_id"))
    rb.last_evaluation = {
        "evaluated_at": now.isoformat(),
        "step_index": step.index if step else rb.current_step,
        "outcome": outcome,
        "reason": reason[:4000],
        "actor": _label(actor),
        "analysis_computed_at": str((analysis or {}).get("computed_at") or ""),
        "decision": str(((analysis or {}).get("decision") or {}).get("verdict") or ""),
        "gates": [{**g.to_dict(), "passed": g.outcome == gates.PASS} for g in result],
        "signature": signature,
        "evaluation_id": previous.get("evaluation_id") if repeat else None,
    }
    if repeat:
        return None
    evaluation = StepEvaluation.objects.create(
        runbook=rb,
        step=step,
        step_index=step.index if step else rb.current_step,
        evaluated_at=now,
        outcome=outcome,
        reason=reason[:4000],
        analysis_computed_at=str((analysis or {}).get("computed_at") or "")[:40],
        decision=str(((analysis or {}).get("decision") or {}).get("verdict") or "")[:12],
        actor_label=_label(actor),
    )
    GateResult.objects.bulk_create(
        [
            GateResult(
                evaluation=evaluation,
                gate=g.gate,
                subject=g.subject[:80],
                outcome=g.outcome,
                value=g.value,
                threshold=g.threshold,
                comparator=g.comparator,
                reason=g.reason,
            )
            for g in result
        ]
    )
    rb.last_evaluation["evaluation_id"] = evaluation.pk
    return evaluation


def _gate_details(result: Sequence[gates.Gate]) -> list[dict[str, Any]]:
    return [g.to_dict() for g in gates.blocking(result)]


# -- the sweeper -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TickOutcome:
    runbook_id: int
    surface: str
    before: str
    after: str
    step: int
    outcome: str
    reason: str


def tick_budget_s() -> float:
    """Wall-clock budget of one sweep (``RUNBOOKS_TICK_BUDGET_S``, default 1.5 s; 0 = unbounded).

    Ramps still due when it runs out stay due and go first in the next sweep (oldest
    ``next_check_at`` first): deferred, never skipped, so the every-minute beat stays on time.
    """
    from django.conf import settings

    return float(getattr(settings, "RUNBOOKS_TICK_BUDGET_S", 1.5) or 0)


def ramps_advance_due(
    *, now: dt.datetime, limit: int = 500, budget_s: float | None = None
) -> list[TickOutcome]:
    """One sweep: every due runbook, each in its own transaction under a skip-locked row lock.

    Safe to run twice at once (a second sweeper skips rows the first holds, and re-reads
    ``next_check_at`` under the lock so a runbook is acted on once per due time) and safe to kill
    (a runbook's transition commits whole or not at all; the next sweep redoes the rest).
    Late sweeps never skip anything: one tick moves a runbook at most one step, after its gates.
    """
    due = list(
        Runbook.objects.filter(status__in=Runbook.ACTIVE, next_check_at__lte=now)
        .order_by("next_check_at", "pk")
        .values_list("pk", "plan_version")[:limit]
    )
    outcomes = []
    budget = tick_budget_s() if budget_s is None else budget_s
    started = time.perf_counter()
    # Registry facts and plans read once (a plan edited since falls back to a fresh read under the lock).
    cache = _SweepCache(due) if due else None
    token = _sweep.set(cache)
    runs_token = gates.latest_runs.set(cache.runs if cache else {})
    try:
        for done, (pk, _plan) in enumerate(due):
            # At least one ramp per sweep, so a tiny budget can slow the sweep but never stall it.
            if done and budget and time.perf_counter() - started > budget:
                log.warning(
                    "sweep budget of %.1f s spent; %d due ramps deferred to the next tick",
                    budget,
                    len(due) - done,
                )
                break
            outcome = _tick_one(pk, now)
            if outcome is not None:
                outcomes.append(outcome)
    finally:
        _sweep.reset(token)
        gates.latest_runs.reset(runs_token)
    try:
        from migrations_runbooks.notifications import notifications_redeliver_due

        notifications_redeliver_due(now=now)
    except Exception:
        log.exception("webhook redelivery sweep failed")
    return outcomes


def _tick_one(pk: int, now: dt.datetime) -> TickOutcome | None:
    try:
        return runbook_tick(runbook_id=pk, now=now)
    except Exception:
        # One broken runbook must not starve the others; its transaction rolled back.
        log.exception("tick of runbook %s failed", pk)
        return None


@transaction.atomic
def runbook_tick(*, runbook_id: int, now: dt.datetime) -> TickOutcome | None:
    """Evaluate one runbook if it is still due; None when another sweeper holds it or it is not due."""
    rb = (
        Runbook.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("surface", "target_stack", "depends_on")
        .filter(pk=runbook_id, status__in=Runbook.ACTIVE, next_check_at__lte=now)
        .first()
    )
    if rb is None:
        return None
    before_status = rb.status
    rb.ticks += 1
    rb.last_tick_at = now
    if rb.status == Runbook.Status.SCHEDULED:
        outcome, reason = _tick_scheduled(rb, now)
    else:
        outcome, reason = _tick_live(rb, now)
    if rb.status in Runbook.ACTIVE and rb.next_check_at is not None and rb.next_check_at <= now:
        rb.next_check_at = now + dt.timedelta(seconds=rb.check_interval_s)
    Runbook.objects.filter(pk=rb.pk).update(
        ticks=rb.ticks,
        last_tick_at=now,
        next_check_at=rb.next_check_at if rb.status in Runbook.ACTIVE else None,
        last_evaluation=rb.last_evaluation,
    )
    return TickOutcome(rb.pk, rb.surface.key, before_status, rb.status, rb.current_step, outcome, reason)


def _tick_scheduled(rb: Runbook, now: dt.datetime) -> tuple[str, str]:
    ok, why = dependency_status(rb, now)
    if not ok:
        _record_evaluation(rb, None, [], outcome=StepEvaluation.Outcome.BLOCKED, reason=why, now=now)
        rb.status_reason = f"waiting on dependency: {why}"
        rb.save(update_fields=["status_reason"])
        return StepEvaluation.Outcome.BLOCKED, why
    if Runbook.objects.filter(surface=rb.surface, status__in=Runbook.LIVE).exclude(pk=rb.pk).exists():
        why = f"{rb.surface.key} has another live runbook"
        _record_evaluation(rb, None, [], outcome=StepEvaluation.Outcome.BLOCKED, reason=why, now=now)
        return StepEvaluation.Outcome.BLOCKED, why
    steps = _steps(rb)
    check = _capacity_check(rb, steps[0])
    if not check.ok:
        gate = gates.capacity_gate(check, subject=steps[0].name)
        _record_evaluation(
            rb, None, [gate], outcome=StepEvaluation.Outcome.BLOCKED, reason=gate.reason, now=now
        )
        return StepEvaluation.Outcome.BLOCKED, gate.reason
    reason = f"scheduled start ({why})"
    _start(rb, actor=SYSTEM_BEAT, reason=reason, now=now)
    _record_evaluation(rb, steps[0], [], outcome=StepEvaluation.Outcome.START, reason=reason, now=now)
    return StepEvaluation.Outcome.START, reason


def _tick_live(rb: Runbook, now: dt.datetime) -> tuple[str, str]:
    steps = _steps(rb)
    step = steps[rb.current_step]
    ev = runbook_evaluate(rb, step, steps, now=now)
    outcome = ev.outcome
    reason = "; ".join(ev.reasons) or "all gates pass"

    if outcome == gates.ROLLBACK:
        _record_evaluation(
            rb,
            step,
            ev.gates,
            outcome=StepEvaluation.Outcome.ROLLBACK,
            reason=reason,
            now=now,
            analysis=ev.analysis,
        )
        _rollback(
            rb,
            actor=SYSTEM_BEAT,
            reason=f"guardrail breach at step {step.name}: {reason}",
            now=now,
            details={"gates": _gate_details(ev.gates)},
        )
        return StepEvaluation.Outcome.ROLLBACK, reason

    if rb.status == Runbook.Status.PAUSED:
        _record_evaluation(
            rb,
            step,
            ev.gates,
            outcome=StepEvaluation.Outcome.MONITOR,
            reason=f"paused; {reason}",
            now=now,
            analysis=ev.analysis,
        )
        return StepEvaluation.Outcome.MONITOR, reason

    if outcome == gates.WAIT:
        _record_evaluation(
            rb,
            step,
            ev.gates,
            outcome=StepEvaluation.Outcome.WAIT,
            reason=reason,
            now=now,
            analysis=ev.analysis,
        )
        return StepEvaluation.Outcome.WAIT, reason

    if outcome == gates.HOLD:
        return _hold(rb, step, ev.gates, reason=reason, now=now, analysis=ev.analysis)

    # Gates pass. Remember a ship verdict taken here; then: a pending jump, the next step, or promotion.
    _remember_ship_decision(rb, step, ev, now)
    is_last = step.index == len(steps) - 1
    target = rb.pending_step if rb.pending_step is not None else (None if is_last else step.index + 1)
    approval = _open_approval(rb)
    if target is None:
        if not rb.ship_decision:
            missing = gates.Gate(
                "ship_decision", gates.HOLD, "no ship decision was recorded on a step with a control group"
            )
            return _hold(rb, step, [*ev.gates, missing], reason=missing.reason, now=now, analysis=ev.analysis)
        if rb.promotion_needs_approval:
            if approval is None or approval.kind != Approval.Kind.PROMOTION:
                return _wait_for_approval(rb, step, ev, kind=Approval.Kind.PROMOTION, target=None, now=now)
            if approval.status != Approval.Status.APPROVED:
                return _still_waiting(
                    rb, step, ev.gates, reason="waiting for promotion approval", now=now, analysis=ev.analysis
                )
        _record_evaluation(
            rb,
            step,
            ev.gates,
            outcome=StepEvaluation.Outcome.PROMOTE,
            reason=reason,
            now=now,
            analysis=ev.analysis,
        )
        _promote(
            rb,
            actor=SYSTEM_BEAT,
            reason=f"all gates pass at {step.name} with a ship decision",
            now=now,
            analysis=ev.analysis,
            gate_list=ev.gates,
            approval=approval,
        )
        return StepEvaluation.Outcome.PROMOTE, reason

    next_step = steps[target]
    check = _capacity_check(rb, next_step)
    cap_gate = gates.capacity_gate(check, subject=f"→ {next_step.name}")
    if not check.ok:
        return _hold(rb, step, [*ev.gates, cap_gate], reason=cap_gate.reason, now=now, analysis=ev.analysis)
    jump = rb.pending_step is not None
    if next_step.needs_approval or jump:
        kind = Approval.Kind.JUMP if jump else Approval.Kind.STEP
        if approval is None or approval.step_index != target:
            return _wait_for_approval(rb, step, ev, kind=kind, target=target, now=now)
        if approval.status != Approval.Status.APPROVED:
            return _still_waiting(
                rb,
                step,
                [*ev.gates, cap_gate],
                reason=f"waiting for approval of {next_step.name}",
                now=now,
                analysis=ev.analysis,
            )
        approval.status = Approval.Status.CONSUMED
        approval.save(update_fields=["status"])
    _record_evaluation(
        rb,
        step,
        [*ev.gates, cap_gate],
        outcome=StepEvaluation.Outcome.ADVANCE,
        reason=f"{reason} → {next_step.name}",
        now=now,
        analysis=ev.analysis,
    )
    _enter_step(
        rb,
        steps,
        target,
        actor=SYSTEM_BEAT,
        reason=f"gates of {step.name} pass ({reason})",
        now=now,
        verb="runbook.advance",
        before=_snapshot(rb),
    )
    return StepEvaluation.Outcome.ADVANCE, f"→ {next_step.name}"


def _remember_ship_decision(rb: Runbook, step: RampStep, ev: Evaluation, now: dt.datetime) -> None:
    if not any(g.gate == "ship_decision" and g.outcome == gates.PASS for g in ev.gates) or not ev.analysis:
        return
    decision = ev.analysis.get("decision") or {}
    rb.ship_decision = {
        "step_index": step.index,
        "step": step.name,
        "decided_at": now.isoformat(),
        "analysis_run_id": ev.analysis.get("analysis_run_id"),
        "computed_at": ev.analysis.get("computed_at"),
        "reasons": decision.get("reasons") or [],
        "analysis": dict(ev.analysis),
    }
    rb.save(update_fields=["ship_decision"])


def _hold(
    rb: Runbook,
    step: RampStep,
    result: Sequence[gates.Gate],
    *,
    reason: str,
    now: dt.datetime,
    analysis: Mapping[str, Any] | None,
) -> tuple[str, str]:
    _record_evaluation(
        rb, step, result, outcome=StepEvaluation.Outcome.HOLD, reason=reason, now=now, analysis=analysis
    )
    if rb.status != Runbook.Status.HELD or rb.status_reason != reason:
        was_held = rb.status == Runbook.Status.HELD
        before = _snapshot(rb)
        rb.status, rb.status_reason, rb.updated_at = Runbook.Status.HELD, reason, now
        rb.save(update_fields=["status", "status_reason", "updated_at"])
        audit_record(
            actor=SYSTEM_BEAT,
            verb="runbook.hold",
            target=rb,
            before=before,
            after=_snapshot(rb),
            reason=reason,
            now=now,
        )
        if not was_held:  # notify on entering the hold, not on every minute it lasts
            notify(runbook=rb, event="hold", reason=reason, now=now, details={"gates": _gate_details(result)})
    return StepEvaluation.Outcome.HOLD, reason


def _still_waiting(
    rb: Runbook,
    step: RampStep,
    result: Sequence[gates.Gate],
    *,
    reason: str,
    now: dt.datetime,
    analysis: Mapping[str, Any] | None,
) -> tuple[str, str]:
    """Gates pass but the approval is still pending: (back to) waiting, e.g. after a hold cleared."""
    _record_evaluation(
        rb, step, result, outcome=StepEvaluation.Outcome.APPROVAL, reason=reason, now=now, analysis=analysis
    )
    if rb.status != Runbook.Status.WAITING_APPROVAL:
        before = _snapshot(rb)
        rb.status, rb.status_reason, rb.updated_at = Runbook.Status.WAITING_APPROVAL, reason, now
        rb.save(update_fields=["status", "status_reason", "updated_at"])
        audit_record(
            actor=SYSTEM_BEAT,
            verb="runbook.wait_approval",
            target=rb,
            before=before,
            after=_snapshot(rb),
            reason=reason,
            now=now,
        )
    return StepEvaluation.Outcome.APPROVAL, reason


def _wait_for_approval(
    rb: Runbook, step: RampStep, ev: Evaluation, *, kind: str, target: int | None, now: dt.datetime
) -> tuple[str, str]:
    what = "promotion" if target is None else f"step {target}"
    reason = f"gates of {step.name} pass; {what} needs an approver"
    _record_evaluation(
        rb,
        step,
        ev.gates,
        outcome=StepEvaluation.Outcome.APPROVAL,
        reason=reason,
        now=now,
        analysis=ev.analysis,
    )
    before = _snapshot(rb)
    requester: Actor = rb.started_by if rb.started_by is not None else (rb.started_by_label or SYSTEM_BEAT)
    _request_approval(rb, kind=kind, step_index=target, requested_by=requester, reason=reason, now=now)
    rb.status, rb.status_reason, rb.pending_step = (
        Runbook.Status.WAITING_APPROVAL,
        reason,
        target if kind == Approval.Kind.JUMP else None,
    )
    rb.updated_at = now
    rb.save(update_fields=["status", "status_reason", "pending_step", "updated_at"])
    audit_record(
        actor=SYSTEM_BEAT,
        verb="runbook.wait_approval",
        target=rb,
        before=before,
        after=_snapshot(rb),
        reason=reason,
        now=now,
    )
    return StepEvaluation.Outcome.APPROVAL, reason


# -- promotion --------------------------------------------------------------------------------------------------
def _promote(
    rb: Runbook,
    *,
    actor: Actor,
    reason: str,
    now: dt.datetime,
    analysis: Mapping[str, Any] | None,
    gate_list: Sequence[gates.Gate],
    approval: Approval | None,
) -> Runbook:
    before = _snapshot(rb)
    surface = rb.surface
    legacy = {p.stack for p in SurfacePopulation.objects.filter(surface=surface).select_related("stack")} - {
        rb.target_stack
    }
    rb.final_readout = {
        "frozen_at": now.isoformat(),
        "analysis": dict(analysis) if analysis else (rb.ship_decision or {}).get("analysis"),
        "ship_decision": {k: v for k, v in (rb.ship_decision or {}).items() if k != "analysis"} or None,
        "gates": [g.to_dict() for g in gate_list],
        "approval": {
            "id": approval.pk,
            "by": approval.decided_by.get_username() if approval.decided_by else None,
            "reason": approval.decision_reason,
        }
        if approval
        else None,
    }
    rb.final_readout.update(
        gates.experiment_freeze(
            runbook=rb,
            actor=actor,
            reason=reason,
            now=now,
            analysis_run_id=(rb.ship_decision or {}).get("analysis_run_id"),
        )
    )
    if rb.target_stack.status != RankingStack.Status.ACTIVE:
        core.stack_set_status(
            stack=rb.target_stack,
            status=RankingStack.Status.ACTIVE,
            actor=actor,
            reason=f"promoted on {surface.key}",
        )
    core.surface_promote_stack(surface=surface, stack=rb.target_stack, actor=actor, reason=reason, now=now)
    allocation = _reset_traffic(
        rb,
        actor=actor,
        reason=f"promotion: {rb.target_stack.label} serves every population",
        now=now,
        verb="allocation.promote",
    )
    retired = []
    for stack in legacy:
        still_used = (
            SurfacePopulation.objects.filter(stack=stack).exists()
            or Surface.objects.filter(production_stack=stack).exists()
        )
        if not still_used and stack.status != RankingStack.Status.RETIRED:
            core.stack_set_status(
                stack=stack,
                status=RankingStack.Status.RETIRED,
                actor=actor,
                reason=f"no surface uses it after {surface.key} promoted {rb.target_stack.label}",
            )
            retired.append(stack.label)
    if approval is not None:
        approval.status = Approval.Status.CONSUMED
        approval.save(update_fields=["status"])
    rb.status, rb.status_reason, rb.finished_at, rb.next_check_at, rb.pending_step = (
        Runbook.Status.PROMOTED,
        reason,
        now,
        None,
        None,
    )
    RampStep.objects.filter(runbook=rb, index=rb.current_step).update(completed_at=now)
    rb.updated_at = now
    rb.save()
    after = {
        **_snapshot(rb),
        "allocation_version": allocation.version,
        "retired": sorted(retired),
        "production_stack": rb.target_stack.label,
    }
    audit_record(
        actor=actor, verb="runbook.promote", target=rb, before=before, after=after, reason=reason, now=now
    )
    notify(
        runbook=rb,
        event="promotion",
        reason=reason,
        now=now,
        details={"allocation_version": allocation.version, "retired": sorted(retired)},
    )
    return rb


@transaction.atomic
def runbook_promote(*, runbook: Runbook, actor: Actor, reason: str, now: dt.datetime) -> Runbook:
    """Promote now (an operator's action): at the last step, gates pass on fresh analysis incl. ship.

    Same checks as the sweeper: nothing is skipped because a person asked.
    """
    _require_role(actor, OPERATOR)
    reason = _require_reason(reason)
    rb = _lock(runbook)
    if rb.status == Runbook.Status.PROMOTED:
        return rb
    if rb.status not in (Runbook.Status.RUNNING, Runbook.Status.WAITING_APPROVAL, Runbook.Status.HELD):
        raise ConflictError(f"runbook {rb.pk} is {rb.status}; it cannot be promoted")
    steps = _steps(rb)
    step = steps[rb.current_step]
    if step.index != len(steps) - 1 or step.treatment_bp != 10000:
        raise ConflictError(f"promotion happens at the 100% step; runbook {rb.pk} is at {step.name}")
    approval = _open_approval(rb)
    if rb.promotion_needs_approval and (
        approval is None
        or approval.kind != Approval.Kind.PROMOTION
        or approval.status != Approval.Status.APPROVED
    ):
        raise ConflictError("promotion needs an approved promotion approval (four-eyes)", field="approval")
    if (
        approval is not None
        and approval.decided_by_id is not None
        and actor is not None
        and not isinstance(actor, str)
        and approval.decided_by_id == actor.pk
    ):
        raise ApplicationError(
            "four-eyes: the approver cannot also carry out the promotion", code="four_eyes", http_status=403
        )
    if not rb.ship_decision:
        raise ConflictError(
            "promotion needs a ship decision recorded on a step with a control group", field="ship_decision"
        )
    ev = runbook_evaluate(rb, step, steps, now=now)
    if ev.outcome != gates.PASS:
        failing = "; ".join(ev.reasons)
        _record_evaluation(
            rb,
            step,
            ev.gates,
            outcome=StepEvaluation.Outcome.HOLD,
            reason=f"promotion refused: {failing}",
            now=now,
            analysis=ev.analysis,
            actor=actor,
        )
        raise ConflictError(f"promotion refused, gates do not pass: {failing}", field="gates")
    _record_evaluation(
        rb,
        step,
        ev.gates,
        outcome=StepEvaluation.Outcome.PROMOTE,
        reason=reason,
        now=now,
        analysis=ev.analysis,
        actor=actor,
    )
    return _promote(
        rb, actor=actor, reason=reason, now=now, analysis=ev.analysis, gate_list=ev.gates, approval=approval
    )


__all__ = [
    "DEFAULT_STEPS",
    "SYSTEM_BEAT",
    "TickOutcome",
    "capacity_config_update",
    "dependency_status",
    "milestone_upsert",
    "normalize_steps",
    "ramps_advance_due",
    "runbook_abort",
    "runbook_approve",
    "runbook_create",
    "runbook_evaluate",
    "runbook_jump",
    "runbook_pause",
    "runbook_promote",
    "runbook_reject",
    "runbook_resume",
    "runbook_rollback",
    "runbook_schedule",
    "runbook_start",
    "runbook_template_upsert",
    "runbook_tick",
    "runbook_update_steps",
    "webhook_endpoint_upsert",
]
