"""The broker (Redis) goes down while ramps are due: once during a tick, once while beat publishes.

A Redis server of the test's own (append-only file, fsync always, as a persistent production
broker) is SIGKILLed and started again; a real ``celery worker`` and a real publisher process
(``ramps_tick.apply_async(..., expires=50)``, exactly what beat sends each minute, with the
product's Celery settings) run against it. Nothing is mocked.

What must hold: every due runbook advances exactly once (one allocation version, one
``runbook.advance`` audit event, one ``advance`` step evaluation each) although the tick that did
the work is delivered twice, and a tick published during the outage is retried until the broker is
back instead of being lost.

Where the retries come from (no product change was needed): the tick in flight commits its
transitions (PostgreSQL does not need the broker), cannot acknowledge its message, and Redis
delivers it again after the visibility timeout (``acks_late``); the re-run finds nothing due,
because each transition moved the runbook's ``next_check_at`` past that instant. The publisher
first subscribes to the task's result on the same Redis (the result backend), and Celery's Redis
backend reconnects up to 20 times, a second apart, before the publish itself goes out — so beat
rides out an outage of up to ~20 s; a longer one costs that minute's tick, and the next minute's
tick does the work (ramps are level-triggered: nothing is lost, only late).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT, database_url_for_subprocess
from tests.faults.conftest import (
    RedisServer,
    Worker,
    assert_advanced_once,
    lock_waiters,
    snapshot,
    table_locked,
    wait_until,
)
from tests.runbooks.conftest import DAY, T0
from tests.runbooks.test_concurrency import make_running

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

MINUTE = dt.timedelta(minutes=1)

# What beat does for the "ramps-tick" entry (its options are {"expires": 50}).
PUBLISH = textwrap.dedent(
    """
    import sys, time, django
    django.setup()
    from migrations_runbooks.tasks import ramps_tick
    started = time.monotonic()
    result = ramps_tick.apply_async([sys.argv[1]], expires=50)
    print(f"published {result.id} after {time.monotonic() - started:.1f} s", flush=True)
    """
)


def start_publisher(redis: RedisServer, now: dt.datetime, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "DATABASE_URL": database_url_for_subprocess(),
        "CELERY_BROKER_URL": redis.url,
        "CELERY_RESULT_BACKEND": redis.result_url,
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
    }
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISH, now.isoformat()],
        cwd=ROOT,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def published_id(proc: subprocess.Popen[bytes], log: Path) -> str:
    assert proc.wait(60) == 0, log.read_text()
    match = re.search(r"published (\S+) after", log.read_text())
    assert match, log.read_text()
    return match.group(1)


def task_lines(worker: Worker, task_id: str, what: str) -> list[str]:
    return [line for line in worker.log().splitlines() if f"ramps_tick[{task_id}] {what}" in line]


@pytest.mark.timeout(180)
def test_broker_down_during_a_tick_and_while_beat_publishes(
    postgres, transactional_db, seeded, users, own_redis, start_worker, tmp_path
):
    from migrations_runbooks.models import Runbook

    runbooks = make_running(seeded, users["operator"], 3)
    before = snapshot(runbooks)
    # Redis redelivers an unacknowledged message after the visibility timeout (an hour by default;
    # three seconds here so the redelivery happens inside the test).
    worker = start_worker(own_redis.url, own_redis.result_url, visibility_timeout=3)

    # 1. The broker dies while the worker is inside the tick's first transition (parked on a lock).
    with table_locked("controlplane_auditevent"):
        first_log = tmp_path / "publish-1.log"
        first = published_id(start_publisher(own_redis, T0 + DAY, first_log), first_log)
        wait_until(
            lambda: lock_waiters("controlplane_auditevent"), timeout=60, what="the tick mid-transition"
        )
        own_redis.kill()
    # The database does not need the broker: the sweep finishes and commits during the outage...
    wait_until(
        lambda: Runbook.objects.filter(current_step=1).count() == 3, timeout=60, what="the sweep to commit"
    )
    during = snapshot(runbooks)
    assert all(during[pk]["current_step"] == 1 for pk in during)
    # ...but cannot acknowledge its message.
    wait_until(
        lambda: "Connection to broker lost" in worker.log(),
        timeout=30,
        what="the worker to notice the outage",
    )

    # 2. Beat publishes the next minute's tick while the broker is still down: the publish retries.
    second_log = tmp_path / "publish-2.log"
    publisher = start_publisher(own_redis, T0 + DAY + MINUTE, second_log)
    wait_until(
        lambda: "Retry" in second_log.read_text(),
        timeout=60,
        what="the publisher to retry against the dead broker",
    )
    assert publisher.poll() is None, second_log.read_text()
    own_redis.start()
    second = published_id(publisher, second_log)

    # 3. Back up: the worker reconnects, the unacknowledged first tick is delivered again and finds
    # nothing due (each runbook's next check moved past that instant with its transition), and the
    # second tick evaluates every runbook once more without moving any of them.
    wait_until(lambda: task_lines(worker, second, "succeeded"), timeout=60, what="the second tick to run")
    wait_until(
        lambda: len(task_lines(worker, first, "received")) >= 2 and task_lines(worker, first, "succeeded"),
        timeout=60,
        what="the first tick to be redelivered after the outage",
    )
    # The task's return value follows "succeeded in <s>s: " (structlog may append key=value context).
    assert re.search(r"succeeded in [0-9.e-]+s: \[\](\s|$)", task_lines(worker, first, "succeeded")[-1]), (
        "the redelivered tick acted again"
    )
    assert "'outcome': 'advance'" not in task_lines(worker, second, "succeeded")[-1]
    assert_advanced_once(runbooks, before)
    after = snapshot(runbooks)
    for pk in after:
        assert after[pk]["allocation_versions"] == during[pk]["allocation_versions"]
        assert after[pk]["audit"] == during[pk]["audit"], "no runbook transition after the outage"
