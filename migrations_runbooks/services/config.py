"""Program and fleet settings: milestones, capacity prices and limits, webhook endpoints."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from django.db import transaction

from controlplane.core.errors import ApplicationError
from controlplane.core.models import RankingStack
from controlplane.core.permissions import OPERATOR
from controlplane.core.services import Actor
from controlplane.core.updates import model_update
from migrations_runbooks.models import CapacityConfig, Milestone, WebhookEndpoint
from migrations_runbooks.services._base import _require_role, audit


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
        audit(actor=actor, verb="milestone.create", target=milestone, after={"name": name}, now=now)
    elif model_update(instance=milestone, data=values, now=now)[1]:
        audit(actor=actor, verb="milestone.update", target=milestone, after={"name": name}, now=now)
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
    model_update(instance=config, data=values, now=now, force=["updated_at"])
    after = {k: getattr(config, k) for k in allowed}
    if before != after:
        audit(
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
    audit(
        actor=actor,
        verb="webhook.create" if created else "webhook.update",
        target=endpoint,
        after={"url": url, "events": list(events), "active": active},  # never the secret
        now=now,
    )
    return endpoint
