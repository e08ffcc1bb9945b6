"""Thin Celery entry points: the beat sweeper and webhook delivery."""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import OperationalError
from django.utils import timezone

log = logging.getLogger(__name__)


@shared_task(acks_late=True, autoretry_for=(OperationalError,), retry_backoff=True, max_retries=3)
def ramps_tick(now: str | None = None) -> list[dict[str, object]]:
    """Beat, every minute: advance / hold / roll back every due runbook.

    ``now`` (ISO 8601) lets the demo and tests drive a simulated clock through a real worker; only
    where ``settings.SIMULATED_CLOCK_ALLOWED`` (demo, debug, tests). Elsewhere a message's clock is
    ignored and the tick runs on the real one: the sweep is idempotent, so that is harmless.
    """
    import datetime as dt

    from django.conf import settings

    from migrations_runbooks.services import ramps_advance_due  # keep the task import cheap

    moment = timezone.now()
    if now and settings.SIMULATED_CLOCK_ALLOWED:
        moment = dt.datetime.fromisoformat(now)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
    elif now:
        log.warning(
            "ramps_tick: ignored a clock from the task message (%r): SIMULATED_CLOCK_ALLOWED is off", now
        )
    return [
        {
            "runbook": o.runbook_id,
            "surface": o.surface,
            "before": o.before,
            "after": o.after,
            "step": o.step,
            "outcome": o.outcome,
        }
        for o in ramps_advance_due(now=moment)
    ]


@shared_task(bind=True, acks_late=True, max_retries=8)
def notification_deliver_task(self, notification_id: int) -> str:  # type: ignore[no-untyped-def]
    """POST one signed webhook; a failed attempt is recorded on the row and retried with backoff."""
    from migrations_runbooks.models import Notification
    from migrations_runbooks.notifications import backoff_s, notification_deliver

    n = notification_deliver(notification_id=notification_id, now=timezone.now())
    if n is None:
        return "missing-or-locked"
    if n.status == Notification.Status.PENDING:
        raise self.retry(countdown=backoff_s(n.attempts))
    return str(n.status)
