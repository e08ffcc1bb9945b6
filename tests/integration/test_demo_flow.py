"""The README's demo, end to end on the production stack: PostgreSQL, Redis and a real Celery worker.

``manage.py demo_migration`` runs in this process on the small world with no pause between simulated
days: traffic goes through the router into PostgreSQL, shadow requests and every ramp tick go through
Redis to a ``celery worker`` subprocess (which runs the gates and the experiment analysis), the demo
approver gives the four-eyes approvals, and a webhook endpoint receives the runbook notifications
(delivered by the worker). *pages* must end promoted and *groups* rolled back by its guardrail.
"""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.runbooks.conftest import Receiver

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)
    return value


def test_demo_promotes_pages_and_rolls_groups_back(
    postgres, celery_app_on_redis, celery_worker_process, monkeypatch, tmp_path
):
    from controlplane.core.models import AuditEvent, RankingStack, Surface, SurfacePopulation
    from controlplane.core.selectors import allocation_current
    from experiments.models import Decision
    from migrations_runbooks.models import Notification, Runbook, WebhookEndpoint

    monkeypatch.setenv("DEMO_PASSWORD", "integration-demo-password-1")  # seed_demo outside demo mode
    receiver = Receiver(secret="integration-webhook-secret-0123456789")
    try:
        from django.utils import timezone

        WebhookEndpoint.objects.create(
            name="integration", url=receiver.url, secret=receiver.secret, events=[], created_at=timezone.now()
        )
        out = io.StringIO()
        started = time.monotonic()
        failure = ""
        try:
            # --give-up-days 2: stop two simulated days after the last change while a gate holds.
            call_command(
                "demo_migration",
                "--seconds-per-day",
                "0",
                "--world",
                "small",
                "--give-up-days",
                "2",
                stdout=out,
            )
        except CommandError as exc:  # the story did not end as told: the assertions below say how
            failure = str(exc)
        finally:
            print(out.getvalue())  # the console of the demo, shown when the test fails
            print(f"demo took {time.monotonic() - started:.0f} s {failure}")

        pages_rb = Runbook.objects.select_related("target_stack").get(surface__key="pages")
        groups_rb = Runbook.objects.get(surface__key="groups")
        unified = pages_rb.target_stack

        # groups: the injected hides/reports regression trips its guardrail; traffic goes back to legacy.
        assert groups_rb.status == Runbook.Status.ROLLED_BACK, groups_rb.status_reason
        assert groups_rb.status_reason.startswith("guardrail breach"), groups_rb.status_reason
        assert "hide_report_rate" in groups_rb.status_reason
        groups = Surface.objects.get(key="groups")
        assert allocation_current(surface=groups).treatment_bp == 0
        assert groups.production_stack_id != unified.pk
        event = AuditEvent.objects.get(verb="runbook.rollback", target_id=str(groups_rb.pk))
        assert event.actor_label == "system:beat" and "hide_report_rate" in event.reason
        note = Notification.objects.get(runbook=groups_rb, event="rollback")
        wait_for(
            lambda: "rollback" in receiver.events(), timeout=60, what="the rollback webhook from the worker"
        )
        delivered = next(r for r in receiver.requests if r["body"]["event"] == "rollback")
        assert delivered["signature_ok"] and delivered["body"]["reason"] == groups_rb.status_reason
        note.refresh_from_db()
        assert note.status == Notification.Status.DELIVERED

        # The demo PM moved the rare-event guardrails to secondaries on the locked design: audited, with the reason.
        change = AuditEvent.objects.filter(verb="experiment.design_change", target_id__isnull=False).first()
        assert change is not None and "demo scale" in change.reason
        # pages: promoted on a ship decision taken by the real analysis at the 50% step.
        assert pages_rb.status == Runbook.Status.PROMOTED, pages_rb.status_reason
        assert pages_rb.ship_decision and pages_rb.ship_decision["step"] == "50%"
        pages = Surface.objects.select_related("production_stack").get(key="pages")
        assert pages.production_stack == unified and pages.status == Surface.Status.UNIFIED
        assert set(SurfacePopulation.objects.filter(surface=pages).values_list("stack", flat=True)) == {
            unified.pk
        }
        allocation = allocation_current(surface=pages)
        assert {p["stack"] for p in allocation.populations} == {unified.label}
        assert allocation.treatment_bp in (0, 10000)  # every population served by unified either way
        unified.refresh_from_db()
        assert unified.status == RankingStack.Status.ACTIVE
        # The legacy content-first stack leaves pages; it is not retired while groups (rolled back)
        # still serves it — retirement happens when no surface uses a stack any more.
        content_first = RankingStack.objects.get(key="content-first", version="1")
        assert content_first.status != RankingStack.Status.RETIRED
        readout = pages_rb.final_readout
        assert readout["frozen_at"] and readout["analysis"] and readout["decision"]
        assert Decision.objects.filter(pk=readout["decision"], verdict="ship").exists()
        assert AuditEvent.objects.filter(verb="runbook.promote", target_id=str(pages_rb.pk)).exists()
        assert AuditEvent.objects.filter(verb="approval.approve").count() >= 2  # step and promotion
        wait_for(lambda: "promotion" in receiver.events(), timeout=60, what="the promotion webhook")
    finally:
        receiver.close()
