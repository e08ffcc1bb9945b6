"""The database fails in the middle of a ramp transition.

Two real PostgreSQL faults, no mocks:

* a trigger the test installs raises SQLSTATE 40001 (serialization failure, what a busy primary
  really returns) once — on the allocation insert (the first write of the transition), on the
  ``runbook.advance`` audit insert (the last write), or at COMMIT (a deferred constraint trigger);
* the sweeper's connection is terminated (``pg_terminate_backend``, as a failover or an operator
  does) while a real ``celery worker`` is parked inside the transition's transaction.

Either way the transition of that runbook leaves nothing behind (step, allocation version, audit,
step evaluation, tick bookkeeping all unchanged), the other due runbooks of the same sweep advance,
and the next tick completes the broken one exactly once.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.faults.conftest import (
    assert_advanced_once,
    lock_waiters,
    pg_connect,
    snapshot,
    table_locked,
    wait_until,
)
from tests.runbooks.conftest import DAY, T0
from tests.runbooks.test_concurrency import make_running

pytestmark = pytest.mark.postgres

MINUTE = dt.timedelta(minutes=1)

# One-shot: nextval() is not transactional, so the rolled-back attempt still spends the budget.
RAISE_ONCE = """
CREATE SEQUENCE faults_budget;
CREATE FUNCTION faults_raise_once() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF nextval('faults_budget') = 1 THEN
    RAISE EXCEPTION 'injected fault: could not serialize access' USING ERRCODE = '40001';
  END IF;
  RETURN NEW;
END $$;
"""
TRIGGERS = {
    # The transition's first write: the new allocation version.
    "allocation-insert": "CREATE TRIGGER faults_trigger BEFORE INSERT ON controlplane_allocation "
    "FOR EACH ROW EXECUTE FUNCTION faults_raise_once()",
    # Its last write, after the allocation, its audit event and the runbook row.
    "advance-audit": "CREATE TRIGGER faults_trigger BEFORE INSERT ON controlplane_auditevent "
    "FOR EACH ROW WHEN (NEW.verb = 'runbook.advance') EXECUTE FUNCTION faults_raise_once()",
    # At COMMIT: every statement succeeded, the commit itself fails.
    "commit": "CREATE CONSTRAINT TRIGGER faults_trigger AFTER INSERT ON controlplane_auditevent "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.verb = 'runbook.advance') "
    "EXECUTE FUNCTION faults_raise_once()",
}
CLEANUP = """
DROP TRIGGER IF EXISTS faults_trigger ON controlplane_allocation;
DROP TRIGGER IF EXISTS faults_trigger ON controlplane_auditevent;
DROP FUNCTION IF EXISTS faults_raise_once();
DROP SEQUENCE IF EXISTS faults_budget;
"""


@pytest.fixture
def fault_sql(transactional_db: Any) -> Any:
    from django.db import connection

    def install(where: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute(RAISE_ONCE)
            cursor.execute(TRIGGERS[where])

    yield install
    with connection.cursor() as cursor:  # functions and triggers outlive the test's TRUNCATE
        cursor.execute(CLEANUP)


@pytest.mark.parametrize("where", list(TRIGGERS))
def test_database_error_mid_transition_leaves_no_partial_state(
    postgres, transactional_db, seeded, users, fault_sql, where
):
    from migrations_runbooks.models import Runbook
    from migrations_runbooks.tasks import ramps_tick

    runbooks = make_running(seeded, users["operator"], 3)
    before = snapshot(runbooks)
    fault_sql(where)

    # One sweep through the Celery task body (as the worker runs it); the first due runbook fails.
    outcomes = ramps_tick.apply(args=[(T0 + DAY).isoformat()]).get()
    after = snapshot(runbooks)
    broken = [pk for pk in after if after[pk]["current_step"] == 0]
    assert len(broken) == 1, after
    victim = broken[0]
    assert after[victim] == before[victim], "the failed transition left state behind"
    assert victim not in {o["runbook"] for o in outcomes}
    assert sorted(o["runbook"] for o in outcomes if o["outcome"] == "advance") == sorted(
        set(after) - {victim}
    )
    with pg_connect() as conn:  # the one-shot fault really fired
        assert conn.execute("SELECT last_value FROM faults_budget").fetchone()[0] >= 1

    # The next tick completes the broken runbook once and moves nobody twice.
    outcomes = ramps_tick.apply(args=[(T0 + DAY + MINUTE).isoformat()]).get()
    assert [o["runbook"] for o in outcomes if o["outcome"] == "advance"] == [victim]
    assert_advanced_once(runbooks, before)
    # ...and a third tick is a no-op for transitions (every step now waits its 24 h).
    outcomes = ramps_tick.apply(args=[(T0 + DAY + 3 * MINUTE).isoformat()]).get()
    assert not [o for o in outcomes if o["outcome"] != "wait"], outcomes
    assert_advanced_once(runbooks, before)
    assert Runbook.objects.filter(current_step=1).count() == 3


@pytest.mark.redis
def test_connection_killed_mid_transition_in_a_worker(
    postgres, celery_app_on_redis, celery_worker_process, seeded, users
):
    """pg_terminate_backend on the worker's connection while it is inside a transition."""
    from migrations_runbooks.tasks import ramps_tick

    runbooks = make_running(seeded, users["operator"], 3)
    before = snapshot(runbooks)
    with table_locked("controlplane_auditevent") as lock:
        result = ramps_tick.delay((T0 + DAY).isoformat())
        # The worker has written the first runbook's allocation and waits to write its audit event.
        pid = wait_until(
            lambda: lock_waiters("controlplane_auditevent"), timeout=60, what="the worker inside a transition"
        )[0]
        lock.execute("SELECT pg_terminate_backend(%s)", [pid])
    outcomes = result.get(timeout=60)
    after = snapshot(runbooks)
    broken = [pk for pk in after if after[pk]["current_step"] == 0]
    assert len(broken) == 1, (after, celery_worker_process.log()[-3000:])
    victim = broken[0]
    assert after[victim] == before[victim], "the killed transaction left state behind"
    assert sorted(o["runbook"] for o in outcomes) == sorted(set(after) - {victim}), (
        "the sweep reconnected and went on with the other runbooks"
    )
    assert "terminating connection" in celery_worker_process.log()

    outcomes = ramps_tick.delay((T0 + DAY + MINUTE).isoformat()).get(timeout=60)
    assert [o["runbook"] for o in outcomes if o["outcome"] == "advance"] == [victim]
    assert_advanced_once(runbooks, before)
