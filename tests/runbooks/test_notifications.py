"""Signed webhooks against a local HTTP receiver: signature, retries, visible failures, redelivery."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json

import pytest

from migrations_runbooks import notifications, services
from migrations_runbooks.models import Notification, WebhookEndpoint
from tests.runbooks.conftest import DAY, T0, analysis_result, fast_steps

pytestmark = pytest.mark.django_db


def test_signature_is_the_standard_webhooks_hmac_of_id_timestamp_and_body():
    body = b'{"event":"hold"}'
    sig = notifications.sign("k" * 20, "runbook-notification-7", 1700000000, body)
    # Independent reference: the standard library's HMAC over the scheme's documented message.
    mac = hmac.new(b"k" * 20, b"runbook-notification-7.1700000000." + body, hashlib.sha256).digest()
    assert sig == "v1," + base64.b64encode(mac).decode()
    # A whsec_ secret is the base64 of the key bytes, as the scheme defines.
    whsec = "whsec_" + base64.b64encode(b"k" * 20).decode()
    assert notifications.sign(whsec, "runbook-notification-7", 1700000000, body) == sig


def _runbook(seeded, users):
    rb = services.runbook_create(
        surface=seeded["pages"],
        target_stack=seeded["unified"],
        actor=users["operator"],
        now=T0,
        steps=fast_steps(),
    )
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    return rb


def test_hold_is_delivered_signed_and_retried_after_failures(
    seeded, users, receiver, webhook, scripted_analysis, scripted_parity, django_capture_on_commit_callbacks
):
    rb = _runbook(seeded, users)
    receiver.fail_next = 2
    scripted_parity["calibration_diff"] = 0.3  # shadow parity out of bounds: the step holds
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.ramps_advance_due(now=T0 + DAY)
    rb.refresh_from_db()
    assert rb.status == "held"
    # Delivery is queued only after the transition commits (beside the audit log and metric callbacks).
    assert [c.__qualname__ for c in callbacks].count("notify.<locals>.enqueue") == 1
    [n] = Notification.objects.filter(event="hold")
    times = [T0 + DAY, T0 + DAY + dt.timedelta(seconds=30), T0 + DAY + dt.timedelta(seconds=90)]
    for attempt, now in enumerate(times, start=1):
        n = notifications.notification_deliver(notification_id=n.pk, now=now)
        assert n.attempts == attempt
    assert n.status == "delivered" and n.last_status_code == 200 and n.last_error == ""
    assert len(receiver.requests) == 3
    first, last = receiver.requests[0], receiver.requests[-1]
    assert all(r["signature_ok"] for r in receiver.requests)
    assert last["headers"]["X-Runbook-Event"] == "hold"
    assert last["headers"]["webhook-id"] == notifications.message_id(n.pk)  # the same on every retry
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {notifications.message_id(n.pk)}
    body = last["body"]
    assert body["runbook"]["surface"] == "pages" and body["runbook"]["status"] == "held"
    [gate] = body["gates"]
    assert (gate["gate"], gate["subject"], gate["value"], gate["threshold"]) == (
        "parity",
        "calibration_diff",
        0.3,
        0.05,
    )
    assert first["body"] == last["body"]  # retries resend the same payload
    # Delivered rows are not sent again.
    assert notifications.notification_deliver(notification_id=n.pk, now=times[-1]).attempts == 3


def test_failures_stay_visible_after_retries_are_exhausted(seeded, users, db, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]  # an internal receiver, explicitly allowed
    endpoint = WebhookEndpoint.objects.create(
        name="dead", url="http://127.0.0.1:9/unreachable", secret="s" * 20, events=["rollback"], created_at=T0
    )
    rb = _runbook(seeded, users)
    services.runbook_rollback(runbook=rb, actor=users["operator"], reason="manual", now=T0 + DAY)
    [n] = Notification.objects.filter(endpoint=endpoint)
    now = T0 + DAY
    for _ in range(notifications.MAX_ATTEMPTS):
        n = notifications.notification_deliver(notification_id=n.pk, now=now)
        now = n.next_attempt_at or now
    assert n.status == "failed" and n.attempts == notifications.MAX_ATTEMPTS
    assert n.last_error == "ConnectionError" and n.last_status_code is None
    # Only the subscribed event was queued for this endpoint.
    assert not Notification.objects.filter(endpoint=endpoint).exclude(event="rollback").exists()


def test_delivery_task_retries_through_celery(seeded, users, receiver, webhook, eager_celery, monkeypatch):
    from migrations_runbooks.tasks import notification_deliver_task

    rb = _runbook(seeded, users)
    services.runbook_rollback(runbook=rb, actor=users["operator"], reason="manual", now=T0 + DAY)
    [n] = Notification.objects.filter(event="rollback")
    receiver.fail_next = 1
    # Eager mode runs the retry inline: one failed attempt, then success.
    notification_deliver_task.apply(args=[n.pk])
    n.refresh_from_db()
    assert (n.status, n.attempts) == ("delivered", 2)
    assert [json.loads(json.dumps(r["body"]))["event"] for r in receiver.requests] == ["rollback", "rollback"]


def test_redelivery_sweep_picks_up_lost_deliveries(seeded, users, receiver, webhook, eager_celery):
    rb = _runbook(seeded, users)
    services.runbook_rollback(runbook=rb, actor=users["operator"], reason="manual", now=T0 + DAY)
    [n] = Notification.objects.filter(event="rollback")
    assert n.status == "pending"  # its task never ran (no commit hook in this test transaction)
    assert (
        notifications.notifications_redeliver_due(now=T0 + DAY + dt.timedelta(minutes=1)) == 0
    )  # within grace
    assert notifications.notifications_redeliver_due(now=T0 + DAY + dt.timedelta(minutes=11)) == 1
    n.refresh_from_db()
    assert n.status == "delivered" and receiver.events() == ["rollback"]


def test_scripted_rollback_is_notified_once(
    seeded,
    users,
    receiver,
    webhook,
    scripted_analysis,
    scripted_parity,
    eager_celery,
    django_capture_on_commit_callbacks,
):
    scripted_analysis.results["pages"] = analysis_result(hide_verdict="worse")
    rb = _runbook(seeded, users)
    with django_capture_on_commit_callbacks(execute=True):
        services.ramps_advance_due(now=T0 + DAY)  # shadow → 1%
        services.ramps_advance_due(now=T0 + DAY + dt.timedelta(minutes=5))
    rb.refresh_from_db()
    assert rb.status == "rolled_back"
    assert receiver.events() == ["rollback"]
