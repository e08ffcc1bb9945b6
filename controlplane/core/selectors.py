"""Reads of the core registry."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from django.db.models import QuerySet

from controlplane.core.assignment import AllocationConfig, PopulationShare
from controlplane.core.models import Allocation, AuditEvent, RankingStack, Surface


def stack_list(*, kind: str | None = None, status: str | None = None) -> QuerySet[RankingStack]:
    qs = RankingStack.objects.all()
    if kind:
        qs = qs.filter(kind=kind)
    if status:
        qs = qs.filter(status=status)
    return qs


def stack_get_by_label(label: str) -> RankingStack | None:
    key, _, version = label.partition("@")
    return RankingStack.objects.filter(key=key, version=version).first()


def surface_list() -> QuerySet[Surface]:
    return Surface.objects.select_related("production_stack").prefetch_related("populations__stack")


def allocation_current(*, surface: Surface) -> Allocation | None:
    return (
        Allocation.objects.select_related("treatment_stack", "shadow_stack", "surface")
        .filter(surface=surface)
        .order_by("-version")
        .first()
    )


def allocation_history(*, surface: Surface) -> QuerySet[Allocation]:
    return Allocation.objects.select_related("treatment_stack", "shadow_stack", "created_by").filter(
        surface=surface
    )


def allocation_config(allocation: Allocation) -> AllocationConfig:
    """The pure assignment config of an allocation row (what serving fleets receive)."""
    return AllocationConfig(
        surface=allocation.surface.key,
        version=allocation.version,
        salt=allocation.salt,
        holdout_bp=allocation.holdout_bp,
        treatment_bp=allocation.treatment_bp,
        treatment_stack=allocation.treatment_stack.label if allocation.treatment_stack else None,
        shadow_bp=allocation.shadow_bp,
        shadow_stack=allocation.shadow_stack.label if allocation.shadow_stack else None,
        populations=tuple(
            PopulationShare(p["population"], p["stack"], int(p["bp"])) for p in allocation.populations
        ),
    )


def published_config() -> tuple[dict[str, Any], str]:
    """Every surface's current allocation as one document, and its strong ETag.

    The ETag hashes the canonical JSON, so it changes exactly when some surface's allocation
    version changes; fleets poll with If-None-Match and get 304 otherwise.
    """
    surfaces = []
    for surface in Surface.objects.order_by("key"):
        allocation = allocation_current(surface=surface)
        if allocation is None:
            continue
        surfaces.append(allocation_config(allocation).to_dict())
    versions = {s["surface"]: s["version"] for s in surfaces}
    body = {"schema": 1, "surfaces": surfaces}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]
    body["versions"] = versions
    return body, f'"{digest}"'


def audit_list(
    *,
    actor: str | None = None,
    surface: str | None = None,
    verb: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
) -> QuerySet[AuditEvent]:
    qs = AuditEvent.objects.all()
    if actor:
        qs = qs.filter(actor_label=actor)
    if surface:
        qs = qs.filter(surface_key=surface)
    if verb:
        qs = qs.filter(verb__startswith=verb)
    if since:
        qs = qs.filter(created_at__gte=since)
    if until:
        qs = qs.filter(created_at__lt=until)
    if target_type:
        qs = qs.filter(target_type=target_type)
    if target_id:
        qs = qs.filter(target_id=target_id)
    return qs
