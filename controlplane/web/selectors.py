"""Read models the pages show, composed from the core selectors (no writes, no business rules).

The API and the pages read the same rows through ``controlplane.core.selectors``; this module only
shapes them for templates (a surfaces × stacks matrix, progress figures, audit filter choices).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.db.models import QuerySet

from controlplane.core import selectors
from controlplane.core.assignment import BUCKETS
from controlplane.core.models import Allocation, AuditEvent, RankingStack, Surface


@dataclass(frozen=True)
class StackShare:
    """One cell of the overview matrix: how much of a surface a stack serves live and in shadow."""

    live: float  # fraction of units served live, 0..1
    shadow: float  # fraction of requests also ranked in shadow, 0..1

    @property
    def empty(self) -> bool:
        return self.live <= 0 and self.shadow <= 0


@dataclass(frozen=True)
class SurfaceRow:
    surface: Surface
    allocation: Allocation | None
    cells: list[StackShare]
    unified_live: float  # live share of unified-kind stacks, 0..1
    holdout: float
    runbook: Any = None  # the surface's latest runbook, if any


@dataclass(frozen=True)
class Overview:
    stacks: list[RankingStack]
    rows: list[SurfaceRow]
    progress: dict[str, Any] = field(default_factory=dict)


def surface_shares(*, allocation: Allocation | None) -> tuple[dict[str, float], dict[str, float]]:
    """Live and shadow shares by stack label under an allocation (empty without one)."""
    if allocation is None:
        return {}, {}
    config = selectors.allocation_config(allocation)
    live = config.live_shares()
    shadow: dict[str, float] = {}
    if config.shadow_stack and config.shadow_bp:
        shadow[config.shadow_stack] = config.shadow_bp / BUCKETS
    return live, shadow


def overview() -> Overview:
    """Every surface × every non-retired stack (plus retired ones still serving), with shares.

    Progress toward unification is weighted by peak QPS: a surface with 1 200 QPS on the unified
    stack counts more than one with 800, which is what capacity and risk both scale with.
    """
    surfaces = list(selectors.surface_list())
    allocations = {s.pk: selectors.allocation_current(surface=s) for s in surfaces}
    shares = {s.pk: surface_shares(allocation=allocations[s.pk]) for s in surfaces}
    serving = {label for live, shadow in shares.values() for label in (*live, *shadow)}
    stacks = [
        s for s in selectors.stack_list() if s.status != RankingStack.Status.RETIRED or s.label in serving
    ]
    unified_labels = {s.label for s in stacks if s.kind == RankingStack.Kind.UNIFIED_MTL}
    from migrations_runbooks import selectors as rb_selectors

    latest_runbook: dict[int, Any] = {}
    for rb in rb_selectors.runbook_list():  # newest first
        latest_runbook.setdefault(rb.surface_id, rb)
    rows: list[SurfaceRow] = []
    total_qps = unified_qps = 0.0
    for surface in surfaces:
        live, shadow = shares[surface.pk]
        allocation = allocations[surface.pk]
        unified_live = sum(v for k, v in live.items() if k in unified_labels)
        rows.append(
            SurfaceRow(
                surface=surface,
                allocation=allocation,
                cells=[StackShare(live.get(s.label, 0.0), shadow.get(s.label, 0.0)) for s in stacks],
                unified_live=unified_live,
                holdout=(allocation.holdout_bp / BUCKETS) if allocation else 0.0,
                runbook=latest_runbook.get(surface.pk),
            )
        )
        total_qps += surface.peak_qps
        unified_qps += surface.peak_qps * unified_live
    legacy_serving = sorted(
        s.label for s in stacks if s.kind != RankingStack.Kind.UNIFIED_MTL and s.label in serving
    )
    progress = {
        "unified_traffic": (unified_qps / total_qps) if total_qps else 0.0,
        "surfaces_total": len(surfaces),
        "surfaces_unified": sum(1 for s in surfaces if s.status == Surface.Status.UNIFIED),
        "surfaces_migrating": sum(1 for s in surfaces if s.status == Surface.Status.MIGRATING),
        "legacy_stacks_serving": legacy_serving,
        "total_qps": total_qps,
        "unified_qps": unified_qps,
    }
    return Overview(stacks=stacks, rows=rows, progress=progress)


def audit_filter_choices() -> dict[str, list[str]]:
    """Distinct actors, surfaces and verbs seen in the audit log, for the filter drop-downs."""
    events = AuditEvent.objects.order_by()
    return {
        "actors": sorted(set(events.values_list("actor_label", flat=True))),
        "surfaces": sorted({s for s in events.values_list("surface_key", flat=True) if s}),
        "verbs": sorted(set(events.values_list("verb", flat=True))),
    }


def audit_page_events(
    *,
    actor: str | None,
    surface: str | None,
    verb: str | None,
    since: dt.date | None,
    until: dt.date | None,
) -> QuerySet[AuditEvent]:
    """Audit events filtered like the API; dates are whole UTC days, ``until`` inclusive."""
    since_dt = dt.datetime.combine(since, dt.time.min, tzinfo=dt.UTC) if since else None
    until_dt = (
        dt.datetime.combine(until + dt.timedelta(days=1), dt.time.min, tzinfo=dt.UTC) if until else None
    )
    return selectors.audit_list(
        actor=actor or None, surface=surface or None, verb=verb or None, since=since_dt, until=until_dt
    ).select_related("actor")


ROLLBACK_ATTENTION_DAYS = 7


def attention_items(*, now: dt.datetime) -> list[dict[str, Any]]:
    """What needs a PM: approvals waiting, runbooks held by a gate (with the reason), recent rollbacks.

    Order: approvals first (someone is blocked on a person), then holds, then rollbacks of the
    last week (newest first).
    """
    from django.urls import reverse

    from migrations_runbooks import selectors as rb_selectors
    from migrations_runbooks.models import Approval, Runbook

    items: list[dict[str, Any]] = []
    live = rb_selectors.runbook_list(status=",".join(Runbook.ACTIVE))
    pending = {
        a.runbook_id: a for a in Approval.objects.filter(status=Approval.Status.PENDING, runbook__in=live)
    }
    for rb in live:
        url = reverse("web-runbook-detail", args=[rb.pk])
        approval = pending.get(rb.pk)
        if approval is not None:
            target = (
                "promotion" if approval.kind == Approval.Kind.PROMOTION else f"step {approval.step_index}"
            )
            items.append(
                {
                    "kind": "approval",
                    "kind_label": "approval",
                    "title": f"{rb.surface.key}: approve {target} of “{rb.name}”",
                    "reason": approval.request_reason,
                    "url": url,
                    "at": approval.requested_at,
                    "order": 0,
                }
            )
        elif rb.status == Runbook.Status.HELD:
            items.append(
                {
                    "kind": "hold",
                    "kind_label": "held",
                    "title": f"{rb.surface.key}: “{rb.name}” is held",
                    "reason": rb.status_reason,
                    "url": url,
                    "at": rb.updated_at,
                    "order": 1,
                }
            )
    recent = rb_selectors.runbook_list(status=Runbook.Status.ROLLED_BACK).filter(
        finished_at__gte=now - dt.timedelta(days=ROLLBACK_ATTENTION_DAYS)
    )
    for rb in recent:
        items.append(
            {
                "kind": "rollback",
                "kind_label": "rolled back",
                "title": f"{rb.surface.key}: “{rb.name}” rolled back",
                "reason": rb.status_reason,
                "url": reverse("web-runbook-detail", args=[rb.pk]),
                "at": rb.finished_at,
                "order": 2,
            }
        )
    items.sort(key=lambda i: (i["order"], -(i["at"].timestamp() if i["at"] else 0)))
    return items
