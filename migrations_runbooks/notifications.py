"""Signed JSON webhooks for runbook events (hold, rollback, approval needed, promotion).

Signed with the **Standard Webhooks** scheme (https://www.standardwebhooks.com), so a receiver
verifies with off-the-shelf code (the ``standardwebhooks`` library, Svix's SDKs, …):

    webhook-id: runbook-notification-<id>     (the same on every retry: the receiver's idempotency key)
    webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{raw body}")>

The key is the endpoint's shared secret: a ``whsec_<base64>`` secret is the base64-decoded bytes (as
the scheme defines), any other secret its UTF-8 bytes. A receiver verifies with
``standardwebhooks.Webhook(secret if secret.startswith("whsec_") else secret.encode()).verify(body,
headers)`` (constant-time compare, five minutes of clock skew, so a captured request cannot be
replayed later). ``X-Runbook-Event`` names the event.

Deliveries go only to public addresses (``webhook_guard``: checked at registration and at each
delivery, no redirects, short timeouts). Deliveries are rows: attempts, the last HTTP status and an
error *class* stay visible to operators (never the response body: a receiver's answer is not ours to
store or show); failures retry with exponential backoff until ``MAX_ATTEMPTS``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
from typing import Any

import requests
from django.db import transaction
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from migrations_runbooks import webhook_guard
from migrations_runbooks.models import Notification, Runbook, WebhookEndpoint

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
TIMEOUT_S = webhook_guard.TIMEOUT_S
MAX_SKEW_S = 300


def signing_key(secret: str) -> bytes:
    """The HMAC key of a shared secret (Standard Webhooks: ``whsec_`` + base64 of the key bytes)."""
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_") :] + "==")
    return secret.encode()


def message_id(notification_id: int) -> str:
    return f"runbook-notification-{notification_id}"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value (``v1,<base64>``), computed by the standardwebhooks library."""
    when = dt.datetime.fromtimestamp(timestamp, dt.UTC)
    return Webhook(signing_key(secret)).sign(msg_id=msg_id, timestamp=when, data=body.decode())


def verify_signature(*, secret: str, headers: dict[str, str], body: bytes) -> bool:
    """Receiver-side check with the standardwebhooks library (real clock, five minutes of skew)."""
    try:
        Webhook(signing_key(secret)).verify(body, headers)
    except WebhookVerificationError:
        return False
    return True


def error_class(exc: BaseException) -> str:
    """What went wrong, as a class name only: never a message that could carry the receiver's data."""
    if isinstance(exc, webhook_guard.AddressRefused):
        return "AddressRefused"
    if isinstance(exc, requests.Timeout):
        return "Timeout"
    if isinstance(exc, requests.ConnectionError):
        return "ConnectionError"
    if isinstance(exc, requests.TooManyRedirects):
        return "RedirectRefused"
    return type(exc).__name__


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
    ``webhook-id`` lets the receiver drop a duplicate after a crash between POST and commit.
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
        msg_id = message_id(n.pk)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "controlplane-runbooks/1",
            "X-Runbook-Event": n.event,
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(n.endpoint.secret, msg_id, timestamp, body),
        }
        n.attempts += 1
        error, code = "", None
        try:
            response = webhook_guard.post(n.endpoint.url, data=body, headers=headers)
            code = response.status_code
            if 300 <= code < 400:
                error = "RedirectRefused"  # never followed: a redirect could point anywhere
            elif not 200 <= code < 300:
                error = "HTTPStatus"
        except (requests.RequestException, webhook_guard.AddressRefused) as exc:
            error = error_class(exc)
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
                log.error("webhook %s to endpoint %s failed for good: %s", n.pk, n.endpoint_id, error)
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
