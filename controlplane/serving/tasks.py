"""Thin Celery entry points of the serving path."""

from __future__ import annotations

import datetime as dt
from typing import Any

from celery import shared_task
from django.db import OperationalError
from django.utils import timezone


@shared_task(
    acks_late=True, ignore_result=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3
)
def shadow_score_task(payload: dict[str, Any]) -> str:
    """Rank one sampled live request with the shadow stack and record parity (idempotent per request).

    Shadow failures are data, not task failures: they are recorded and the task succeeds.
    """
    from controlplane.serving.services import shadow_compare

    return shadow_compare(payload=payload).status


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def shadow_parity_aggregate_task() -> int:
    """Refresh today's (and yesterday's, for late arrivals) per-day shadow parity rows."""
    from controlplane.serving.services import shadow_parity_aggregate

    now = timezone.now()
    today = now.astimezone(dt.UTC).date()
    return sum(shadow_parity_aggregate(day=day, now=now) for day in (today - dt.timedelta(days=1), today))
