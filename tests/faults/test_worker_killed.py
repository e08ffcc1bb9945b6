"""A worker is SIGKILLed in the middle of ``experiment_analyze``; the re-run converges.

The analysis is made to stand still deterministically, with no sleep in product code: the test
holds an ACCESS EXCLUSIVE lock on the metric table, so the task's aggregate query waits inside its
transaction (the experiment and its design already read) until the test lets go.

Two ways to lose the worker, both real ``celery worker`` processes on a Redis of the test's own:

* **pool process** (prefork, the production default): the pool child running the task is killed,
  as the OOM killer does; the worker's main process sees the child die and, with ``acks_late`` and
  ``task_reject_on_worker_lost`` (settings), puts the message back; a fresh child runs it again.
* **whole worker** (the machine goes away): the worker process itself is killed with the message
  unacknowledged; another worker gets it once Redis' visibility timeout has passed (shortened to
  3 s here, an hour in production).

Either way no AnalysisRun is half-written (there is none until the re-run commits, and the
killed run's database session never commits), exactly one AnalysisRun exists at the end, and its
statistics and result equal those of an undisturbed analysis of the same data.
"""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from tests.faults.conftest import backend_gone, lock_waiters, publish, table_locked, wait_until

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

TABLE = "experiments_metricobservation"
TASK = "experiments.tasks.experiment_analyze_task"


def assert_same(got: Any, want: Any, path: str = "run") -> None:
    """Equal in structure and in every value; floats to 1e-9 relative.

    PostgreSQL's parallel SUM adds its partial sums in whatever order the workers finish, so two
    analyses of the same rows agree to the last few bits only (2621.553481091698 vs
    2621.5534810916984 seen in CI); anything coarser than that is a real difference.
    """
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys(), (
            f"{path}: keys {sorted(got)} != {sorted(want)}"
        )
        for key in want:
            assert_same(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and not isinstance(got, bool):
        assert isinstance(got, int | float), f"{path}: {got!r} != {want!r}"
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12, nan_ok=True), f"{path}: {got!r} != {want!r}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def comparable(run: Any) -> dict[str, Any]:
    """What an analysis computed, less the clock reading it was stamped with."""
    result = {k: v for k, v in run.result.items() if k != "computed_at"}
    return {
        "as_of": run.as_of,
        "window": (run.window_start, run.window_end),
        "statistics": run.statistics,
        "result": result,
        "verdict": run.verdict,
    }


@pytest.fixture
def experiment_with_evidence(seeded: dict[str, Any]) -> Any:
    """groups at 50 % unified with one day of evidence for 2000 units (two legacy populations)."""
    from django.utils import timezone

    from controlplane.core.services import allocation_change
    from experiments.services import experiment_create_for_surface
    from tests.runbooks.evidence import synthesize_day

    now = timezone.now()
    groups = seeded["groups"]
    allocation = allocation_change(
        surface=groups,
        actor="system:test",
        reason="faults: analysis",
        treatment_stack=seeded["unified"],
        treatment_bp=5000,
        salt="faults-analysis",
        now=now,
    )
    experiment = experiment_create_for_surface(
        surface=groups, treatment_stack=seeded["unified"], salt=allocation.salt, actor="system:test", now=now
    )
    synthesize_day(surface=groups, day=now.date(), units=2000)
    return experiment


def undisturbed(experiment: Any) -> dict[str, Any]:
    """The analysis of the same data, computed here and rolled back (it leaves no AnalysisRun)."""
    from django.db import transaction
    from django.utils import timezone

    from experiments.services import experiment_analyze

    with transaction.atomic():
        reference = comparable(experiment_analyze(experiment=experiment, now=timezone.now()))
        transaction.set_rollback(True)
    return reference


@pytest.mark.timeout(180)
@pytest.mark.parametrize("lost", ["pool-process", "whole-worker"])
def test_worker_killed_mid_analysis_rerun_converges(
    postgres, transactional_db, experiment_with_evidence, own_redis, start_worker, lost
):
    from experiments.models import AnalysisRun

    experiment = experiment_with_evidence
    reference = undisturbed(experiment)
    assert AnalysisRun.objects.count() == 0
    settings = {"visibility_timeout": 3} if lost == "whole-worker" else {}
    pool = "prefork" if lost == "pool-process" else "solo"
    worker = start_worker(own_redis.url, own_redis.result_url, pool=pool, name="first", **settings)

    with table_locked(TABLE):
        task_id = publish(own_redis.url, TASK, experiment.pk, "on_demand")
        orphan = wait_until(lambda: lock_waiters(TABLE), timeout=60, what="the analysis mid-query")[0]
        if lost == "pool-process":
            children = worker.pool_children()
            assert len(children) == 1, children
            os.kill(children[0], signal.SIGKILL)
            rerun_worker = worker
        else:
            worker.kill()
            rerun_worker = start_worker(own_redis.url, own_redis.result_url, name="second", **settings)
        # The message comes back and a new process starts the analysis again: a second session
        # waits on the same lock (the killed one still waits too, its client gone).
        rerun = wait_until(
            lambda: [pid for pid in lock_waiters(TABLE) if pid != orphan],
            timeout=60,
            what="the analysis to be delivered again",
        )[0]
        assert AnalysisRun.objects.count() == 0, "nothing is written before the analysis finishes"

    def finished() -> bool:
        return f"{TASK}[{task_id}] succeeded" in rerun_worker.log()

    wait_until(finished, timeout=90, what="the re-run to finish")
    # The killed run's session aborts once it finds its client gone; it never commits.
    wait_until(lambda: backend_gone(orphan), timeout=30, what="the killed run's database session to end")
    assert rerun != orphan
    runs = list(AnalysisRun.objects.filter(experiment=experiment))
    assert len(runs) == 1, [(r.pk, r.created_at) for r in runs]
    assert runs[0].trigger == "on_demand"
    assert_same(comparable(runs[0]), reference)
    if lost == "pool-process":
        assert "SIGKILL" in worker.log() or "WorkerLostError" in worker.log(), worker.log()[-2000:]
