"""Two sweepers at once, a sweeper killed mid-transition, and ticks through a real Celery worker.

These run on PostgreSQL (row locks with SKIP LOCKED are the point) and Redis; locally they skip
without them, in CI they fail (see tests/conftest.py). Run them like CI:
``CI=true bash scripts/test.sh tests/runbooks -q``.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from controlplane.core.models import Allocation, AuditEvent, Population
from tests.conftest import ROOT, database_url_for_subprocess
from tests.runbooks.conftest import DAY, HOUR, T0

MINUTE = dt.timedelta(minutes=1)

#: Steps whose gates read no analysis (duration + capacity only), so worker processes need no fakes.
PLAIN_GATES = {
    "srm": False,
    "guardrails": False,
    "primary": False,
    "latency": False,
    "parity": False,
    "ship_decision": False,
    "capacity": True,
}


def plain_steps(hours: int = 24) -> list[dict]:
    names = [
        ("shadow", 0, 1000),
        ("1%", 100, 0),
        ("5%", 500, 0),
        ("25%", 2500, 0),
        ("50%", 5000, 0),
        ("100%", 10000, 0),
    ]
    return [
        {
            "name": n,
            "treatment_bp": t,
            "shadow_bp": s,
            "min_duration_s": hours * 3600,
            "min_units": 0,
            "gates": PLAIN_GATES,
        }
        for n, t, s in names
    ]


def make_running(seeded, operator, count: int, *, promotion_needs_approval: bool = False) -> list:
    from controlplane.core import services as core
    from migrations_runbooks import services

    runbooks = []
    for i in range(count):
        surface = (
            seeded["pages"]
            if i == 0
            else core.surface_upsert(
                key=f"surface-{i}",
                name=f"Surface {i}",
                peak_qps=100.0,
                populations={Population.CONTENT_FIRST: (seeded["content_first"], 10000)},
                actor="system:test",
                now=T0,
            )
        )
        rb = services.runbook_create(
            surface=surface,
            target_stack=seeded["unified"],
            actor=operator,
            now=T0,
            steps=plain_steps(),
            promotion_needs_approval=promotion_needs_approval,
        )
        services.runbook_start(runbook=rb, actor=operator, reason="go", now=T0)
        runbooks.append(rb)
    return runbooks


@pytest.mark.postgres
def test_two_sweepers_at_once_act_once_per_runbook(postgres, transactional_db, seeded, users, monkeypatch):
    from django.db import connection

    from migrations_runbooks import gates, services
    from migrations_runbooks.models import Runbook, StepEvaluation

    runbooks = make_running(seeded, users["operator"], 8)
    versions_before = {
        rb.surface_id: Allocation.objects.filter(surface_id=rb.surface_id).count() for rb in runbooks
    }

    # Slow the gate evaluation down so the two sweepers certainly overlap on the same rows.
    real_evaluate = gates.evaluate

    def slow_evaluate(*args, **kwargs):
        time.sleep(0.05)
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(gates, "evaluate", slow_evaluate)
    barrier = threading.Barrier(2)
    results: list[list] = [[], []]
    errors: list[BaseException] = []

    def sweep(slot: int) -> None:
        try:
            barrier.wait()
            results[slot] = services.ramps_advance_due(now=T0 + DAY, budget_s=0)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sweep, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    acted = [o.runbook_id for r in results for o in r]
    assert sorted(acted) == sorted(rb.pk for rb in runbooks), "each runbook acted on by exactly one sweeper"
    assert all(results), "both sweepers did some of the work"
    for rb in runbooks:
        rb.refresh_from_db()
        assert (rb.status, rb.current_step) == ("running", 1)
        assert (
            Allocation.objects.filter(surface_id=rb.surface_id).count() == versions_before[rb.surface_id] + 1
        )
        assert StepEvaluation.objects.filter(runbook=rb, outcome="advance").count() == 1
        assert AuditEvent.objects.filter(verb="runbook.advance", target_id=str(rb.pk)).count() == 1
    # Idempotent: sweeping the same instant again does nothing.
    assert services.ramps_advance_due(now=T0 + DAY) == []
    assert Runbook.objects.filter(current_step=1).count() == 8


KILL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time, django
    django.setup()
    from migrations_runbooks import services

    real = services.audit_record
    seen = []

    def audit_then_hang(**kwargs):
        event = real(**kwargs)
        if kwargs.get("verb") == "runbook.advance":
            seen.append(kwargs["target"].pk)
            if len(seen) == 2:
                # Mid-transition of the second runbook: allocation written, runbook row updated, audit
                # written — nothing committed. Tell the test, then wait to be killed.
                open(os.environ["MARKER"], "w").write(str(kwargs["target"].pk))
                time.sleep(600)
        return event

    services.audit_record = audit_then_hang
    services.ramps_advance_due(now=services.dt.datetime.fromisoformat(sys.argv[1]))
    """
)


@pytest.mark.postgres
def test_sweeper_killed_mid_transition_leaves_consistent_state(
    postgres, transactional_db, seeded, users, tmp_path
):
    from migrations_runbooks import services
    from migrations_runbooks.models import Runbook

    runbooks = make_running(seeded, users["operator"], 3)
    before = {
        rb.pk: Allocation.objects.filter(surface_id=rb.surface_id).order_by("-version").first().version
        for rb in runbooks
    }
    marker = tmp_path / "inside"
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocess(),
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "MARKER": str(marker),
        "CONTROLPLANE_VAR_DIR": str(tmp_path / "var"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, (T0 + DAY).isoformat()], cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the sweeper never reached the second transition"
        time.sleep(0.05)
    victim = int(marker.read_text())
    proc.kill()
    proc.wait(10)

    states = {rb.pk: Runbook.objects.get(pk=rb.pk) for rb in runbooks}
    done = [pk for pk, rb in states.items() if rb.current_step == 1]
    assert len(done) == 1 and victim not in done, "only the first transition committed"
    for pk, rb in states.items():
        latest = Allocation.objects.filter(surface_id=rb.surface_id).order_by("-version").first().version
        assert latest == before[pk] + (1 if pk in done else 0), (
            "allocation and runbook moved together or not at all"
        )
    assert not AuditEvent.objects.filter(verb="runbook.advance", target_id=str(victim)).exists()

    # The next tick completes the work: every runbook at step 1, exactly one new version each.
    outcomes = services.ramps_advance_due(now=T0 + DAY + 2 * MINUTE)
    assert sorted(o.runbook_id for o in outcomes if o.outcome == "advance") == sorted(set(before) - set(done))
    for rb in runbooks:
        rb.refresh_from_db()
        assert rb.current_step == 1
        latest = Allocation.objects.filter(surface_id=rb.surface_id).order_by("-version").first().version
        assert latest == before[rb.pk] + 1


@pytest.mark.postgres
@pytest.mark.redis
def test_pages_runbook_to_promotion_through_a_real_worker(
    postgres, celery_app_on_redis, celery_worker_process, seeded, users
):
    """Every tick goes through Redis to a real `celery worker`, on a simulated clock; the worker runs
    the experiments app's real analysis on the evidence this test writes, and the promotion needs a
    second person's approval."""
    from migrations_runbooks import services
    from migrations_runbooks.models import Runbook
    from migrations_runbooks.tasks import ramps_tick
    from tests.runbooks.evidence import synthesize_day
    from tests.runbooks.test_real_analysis import STEPS

    pages = seeded["pages"]
    rb = services.runbook_create(
        surface=pages, target_stack=seeded["unified"], actor=users["operator"], now=T0, steps=STEPS
    )
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    now, seen, evidence_days = T0, [], set()
    while rb.status not in Runbook.TERMINAL:
        now += 12 * HOUR
        assert now < T0 + 10 * DAY, (seen, rb.status_reason)
        if rb.current_step >= 1 and now.date() not in evidence_days:
            # The day's traffic under whatever the allocation is now (50%, then 100%).
            synthesize_day(surface=pages, day=now.date(), units=2000 if rb.current_step == 1 else 300)
            evidence_days.add(now.date())
        result = ramps_tick.delay(now.isoformat()).get(timeout=120)
        rb.refresh_from_db()
        seen.append((rb.current_step, rb.status))
        if rb.status == Runbook.Status.WAITING_APPROVAL:
            services.runbook_approve(runbook=rb, actor=users["approver"], reason="looks neutral", now=now)
    assert rb.status == "promoted", (rb.status, rb.status_reason, result)
    assert seen[0][0] == 0 and {step for step, _ in seen} == {0, 1, 2}
    assert rb.ship_decision["step"] == "50%"
    pages.refresh_from_db()
    assert pages.production_stack == seeded["unified"]
    assert "migrations_runbooks.tasks.ramps_tick" in celery_worker_process.log()
    promote = AuditEvent.objects.get(verb="runbook.promote", target_id=str(rb.pk))
    assert promote.actor_label == "system:beat" and promote.after["production_stack"] == "unified-mtl@1"
    assert rb.final_readout["decision"], rb.final_readout.get("decision_error")


@pytest.mark.postgres
@pytest.mark.redis
def test_worker_killed_mid_tick_is_completed_by_the_next_tick(
    postgres, celery_app_on_redis, celery_worker_process, seeded, users, monkeypatch
):
    """kill -9 the worker while it sweeps; a fresh tick in this process completes a consistent state."""
    from migrations_runbooks import services
    from migrations_runbooks.models import Runbook
    from migrations_runbooks.tasks import ramps_tick

    runbooks = make_running(seeded, users["operator"], 30)
    before = {rb.pk: Allocation.objects.filter(surface_id=rb.surface_id).count() for rb in runbooks}
    ramps_tick.delay((T0 + DAY).isoformat())
    deadline = time.monotonic() + 60
    while Runbook.objects.filter(current_step=1).count() == 0:
        assert time.monotonic() < deadline, celery_worker_process.log()
        time.sleep(0.01)
    celery_worker_process.kill()
    advanced = set(Runbook.objects.filter(current_step=1).values_list("pk", flat=True))
    for rb in runbooks:
        moved = Allocation.objects.filter(surface_id=rb.surface_id).count() - before[rb.pk]
        assert moved == (1 if rb.pk in advanced else 0)
    services.ramps_advance_due(now=T0 + DAY + MINUTE, budget_s=0)  # one unbounded sweep finishes the rest
    for rb in runbooks:
        rb.refresh_from_db()
        assert rb.current_step == 1
        assert Allocation.objects.filter(surface_id=rb.surface_id).count() == before[rb.pk] + 1


def test_beat_schedule_has_the_sweeper():
    from celery.schedules import crontab

    from controlplane.celery import app

    entry = app.conf.beat_schedule["ramps-tick"]
    assert entry["task"] == "migrations_runbooks.tasks.ramps_tick"
    assert entry["schedule"] == crontab(minute="*") and 0 < entry["options"]["expires"] < 60
