"""Signed JSON webhooks for runbook events (hold, rollback, approval needed, promotion).

Signature scheme (same shape as Stripe's and Slack's request signing): the receiver gets

    X-Runbook-Event: rollback
    X-Runbook-Delivery: <notification id>          (idempotency key for the receiver)
    X-Runbook-Timestamp: <unix seconds>
    X-Runbook-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{raw body}")>

and verifies with :func:`verify_signature` (constant-time compare, bounded clock skew so a captured
request cannot be replayed later). Deliveries are rows: attempts, the last HTTP status and error
stay visible, and failures retry with exponential backoff until ``MAX_ATTEMPTS``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
from typing import Any

import requests
from django.db import transaction

from migrations_runbooks.models import Notification, Runbook, WebhookEndpoint

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
TIMEOUT_S = 5.0
SIGNATURE_HEADER = "X-Runbook-Signature"
MAX_SKEW_S = 300


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def verify_signature(
    *, secret: str, timestamp: str, body: bytes, signature: str, now: dt.datetime | None = None
) -> bool:
    """Receiver-side check: right secret, untampered body, and a timestamp within ``MAX_SKEW_S``."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if now is not None and abs(now.timestamp() - ts) > MAX_SKEW_S:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


def backoff_s(attempts: int) -> int:
    """Seconds before retry number ``attempts`` (30 s, 60 s, 120 s, … capped at one hour)."""
    return int(min(3600, 30 * 2 ** max(0, attempts - 1)))


def notify(
    *, runbook: Runbook, event: str, reason: str, now: dt.datetime, details: dict[str, Any] | None = None
) -> list[Notification]:
    """Queue one delivery per subscribed endpoint; sent by a Celery task after the commit.

    Called inside the transition's transaction, so a rolled-back transition notifies nobody.
    """
    endpoints = [e for e in WebhookEndpoint.objects.filter(active=True) if not e.events or event in e.events]
    if not endpoints:
        return []
    step = runbook.steps.filter(index=runbook.current_step).first() if runbook.current_step >= 0 else None
    payload = {
        "event": event,
        "occurred_at": now.isoformat(),
        "reason": reason,
        "runbook": {
            "id": runbook.pk,
            "name": runbook.name,
            "surface": runbook.surface.key,
            "status": runbook.status,
            "target_stack": runbook.target_stack.label,
            "step": {"index": step.index, "name": step.name, "treatment_bp": step.treatment_bp}
            if step
            else None,
        },
        **(details or {}),
    }
    rows = Notification.objects.bulk_create(
        [
            Notification(
                endpoint=e, runbook=runbook, event=event, payload=payload, created_at=now, next_attempt_at=now
            )
            for e in endpoints
        ]
    )
    ids = [n.pk for n in rows]

    def enqueue() -> None:
        from migrations_runbooks.tasks import notification_deliver_task

        for pk in ids:
            try:
                notification_deliver_task.delay(pk)
            except Exception:  # broker down: the sweeper's redelivery picks the row up later
                log.exception("could not enqueue webhook delivery %s", pk)

    transaction.on_commit(enqueue)
    return rows


def notification_deliver(*, notification_id: int, now: dt.datetime) -> Notification | None:
    """Try one delivery. Returns the row (delivered, pending with next_attempt_at, or failed).

    The row is locked while posting so two workers never deliver the same notification twice;
    ``X-Runbook-Delivery`` lets the receiver drop a duplicate after a crash between POST and commit.
    """
    with transaction.atomic():
        n = (
            Notification.objects.select_for_update(skip_locked=True)
            .select_related("endpoint")
            .filter(pk=notification_id)
            .first()
        )
        if n is None or n.status != Notification.Status.PENDING:
            return n
        body = json.dumps({**n.payload, "delivery_id": n.pk}, sort_keys=True, separators=(",", ":")).encode()
        timestamp = int(now.timestamp())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "controlplane-runbooks/1",
            "X-Runbook-Event": n.event,
            "X-Runbook-Delivery": str(n.pk),
            "X-Runbook-Timestamp": str(timestamp),
            SIGNATURE_HEADER: sign(n.endpoint.secret, timestamp, body),
        }
        n.attempts += 1
        error, code = "", None
        try:
            response = requests.post(n.endpoint.url, data=body, headers=headers, timeout=TIMEOUT_S)
            code = response.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}: {response.text[:300]}"
        except requests.RequestException as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        n.last_status_code = code
        if not error:
            n.status, n.delivered_at, n.last_error, n.next_attempt_at = (
                Notification.Status.DELIVERED,
                now,
                "",
                None,
            )
        else:
            n.last_error = error
            if n.attempts >= MAX_ATTEMPTS:
                n.status, n.next_attempt_at = Notification.Status.FAILED, None
                log.error("webhook %s to %s failed for good: %s", n.pk, n.endpoint.url, error)
            else:
                n.next_attempt_at = now + dt.timedelta(seconds=backoff_s(n.attempts))
        n.save(
            update_fields=[
                "attempts",
                "status",
                "delivered_at",
                "last_error",
                "last_status_code",
                "next_attempt_at",
            ]
        )
        return n


def notifications_redeliver_due(*, now: dt.datetime, grace_s: int = 600) -> int:
    """Re-enqueue pending deliveries whose retry is overdue by ``grace_s`` (a lost task or broker).

    The grace keeps the sweeper from racing the Celery retry that is normally already scheduled.
    """
    from migrations_runbooks.tasks import notification_deliver_task

    due = list(
        Notification.objects.filter(
            status=Notification.Status.PENDING, next_attempt_at__lte=now - dt.timedelta(seconds=grace_s)
        ).values_list("pk", flat=True)[:100]
    )
    for pk in due:
        notification_deliver_task.delay(pk)
    return len(due)
