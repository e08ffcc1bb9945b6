"""The places the gates reach other apps: the experiment of a runbook, its fresh analysis, shadow
parity and serving health. Tests replace these (on ``migrations_runbooks.gates``) to drive the gates.

Evidence comes back as ``(value, "")`` or ``(None, "why not")``. A failed read or analysis is never a
pass: it is logged with its traceback and reported as the reason the step waits or holds (the
sweeper's transaction survives: each read runs in a savepoint).
"""

from __future__ import annotations

import contextvars
import datetime as dt
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, Subquery

from controlplane.core.errors import ApplicationError
from controlplane.core.services import Actor
from controlplane.serving.selectors import serving_health, shadow_parity_daily
from experiments.models import AnalysisRun, Experiment
from experiments.outcome import AnalysisOutcome, analysis_outcome
from experiments.rollups import rollup_refresh
from experiments.services import experiment_analyze, experiment_create_for_surface, experiment_decide
from migrations_runbooks.gates.serving import aggregate_parity

if TYPE_CHECKING:
    from migrations_runbooks.models import Runbook

log = logging.getLogger(__name__)


def _failure(what: str, exc: Exception) -> str:
    return f"{what} failed: {type(exc).__name__}: {exc}"


def experiment_attach(*, runbook: Runbook, actor: Actor, now: dt.datetime) -> str:
    """Create (idempotently) the experiment that analyses this ramp's salt; returns its key."""
    experiment = experiment_create_for_surface(
        surface=runbook.surface,
        treatment_stack=runbook.target_stack,
        salt=runbook.salt,
        actor=actor,
        now=now,
        key=f"runbook-{runbook.pk}-{runbook.surface.key}",
        hypothesis=f"{runbook.target_stack.label} is launch-neutral on {runbook.surface.key} (runbook {runbook.pk})",
    )
    return str(experiment.key)


def experiment_freeze(
    *, runbook: Runbook, actor: Actor, reason: str, now: dt.datetime, analysis_run_id: int | None = None
) -> dict[str, Any]:
    """Record the ship decision with the experiments app (its Decision freezes the readout).

    The runbook keeps its own frozen copy (``final_readout``) either way. A refusal by the
    experiments app (e.g. nothing analysed to decide on) is recorded there, not swallowed; any
    other failure propagates, so the promotion's transaction rolls back and the next tick retries.
    """
    experiment = runbook.experiment
    if experiment is None:
        return {"decision": None, "decision_error": "no experiment attached"}
    run = AnalysisRun.objects.filter(pk=analysis_run_id).first() if analysis_run_id is not None else None
    try:
        with transaction.atomic():
            decision = experiment_decide(
                experiment=experiment, actor=actor, now=now, verdict="ship", note=reason, analysis_run=run
            )
    except ApplicationError as exc:
        log.warning("experiments refused the ship decision for %s: %s", experiment, exc.message)
        return {"decision": None, "decision_error": exc.message}
    return {"decision": decision.pk, "decision_error": ""}


def analysis_max_age_s() -> float:
    """How old a stored analysis may be and still count as fresh (``RUNBOOKS_ANALYSIS_MAX_AGE_S``).

    The sweeper runs every minute but evidence lands per unit-day; re-analysing every ramp every
    minute buys nothing, and it is what keeps one tick over 100 ramps within 2 s (bench/ramps.py).
    Default 300 s: a breach is acted on at most ~6 minutes after its evidence lands. 0 = analyse
    on every evaluation.
    """
    return float(getattr(settings, "RUNBOOKS_ANALYSIS_MAX_AGE_S", 300))


#: Latest analysis run per experiment key, read once per sweep by services.ramps_advance_due
#: (a context variable: two sweepers in two threads never see each other's).
latest_runs: contextvars.ContextVar[dict[str, AnalysisRun]] = contextvars.ContextVar(
    "latest_runs",
    default={},  # noqa: B039  (read-only; a sweep sets its own)
)
#: The experiments of the sweep's due runbooks by key, read in one query by the same sweep.
#: ``experiments.services.experiment_analyze`` re-reads the row it is given, so one read at the
#: start of the sweep is as good as one per ramp.
sweep_experiments: contextvars.ContextVar[dict[str, Experiment]] = contextvars.ContextVar(
    "sweep_experiments",
    default={},  # noqa: B039  (read-only; a sweep sets its own)
)


def experiments_by_key(keys: Sequence[str]) -> dict[str, Experiment]:
    """The experiments with these keys, in one query."""
    return {e.key: e for e in Experiment.objects.filter(key__in=[k for k in keys if k])}


def latest_analysis_runs(keys: Sequence[str]) -> dict[str, AnalysisRun]:
    """The newest AnalysisRun of each experiment key, in one query."""
    newest = AnalysisRun.objects.filter(experiment_id=OuterRef("experiment_id")).order_by(
        "-created_at", "-id"
    )
    runs = (
        AnalysisRun.objects.filter(
            experiment__key__in=[k for k in keys if k], pk=Subquery(newest.values("pk")[:1])
        )
        .select_related("experiment")
        .only("id", "result", "created_at", "experiment__key")
    )
    return {run.experiment.key: run for run in runs}


def fresh_analysis(*, runbook: Runbook, now: dt.datetime) -> tuple[AnalysisOutcome | None, str]:
    """Run the experiment analysis now and return its outcome, or (None, why not).

    A stored run younger than :func:`analysis_max_age_s` (and not from the future of a simulated
    clock) is reused instead of recomputed.

    Runs inside a savepoint: an analysis that fails (bad data, a bug) is reported as a reason and
    holds the step instead of aborting the sweeper's transaction.
    """
    if not runbook.experiment_key:
        return None, "no experiment is attached to this runbook yet"
    max_age = analysis_max_age_s()
    if max_age > 0:
        latest = latest_runs.get().get(runbook.experiment_key)
        if latest is None:
            latest = latest_analysis_runs([runbook.experiment_key]).get(runbook.experiment_key)
        if latest is not None:
            age = (now - latest.created_at).total_seconds()
            stored = analysis_outcome(latest.result)
            if stored is not None and 0 <= age <= max_age:
                return stored.with_run(latest.pk, reused_age_s=age), ""
    experiment = sweep_experiments.get().get(runbook.experiment_key) or runbook.experiment
    if experiment is None:
        return None, f"experiment {runbook.experiment_key} not found"
    try:
        # Fold closed days first: the analysis then pivots only the rows not folded yet. A failed
        # fold costs speed, not correctness (the analysis reads the rows instead).
        with transaction.atomic():
            rollup_refresh(experiment=experiment, now=now)
    except Exception:  # any failure of the fold: analyse from the rows instead
        log.exception("rollup refresh of %s failed; analysing from the rows", experiment)
    try:
        with transaction.atomic():
            run = experiment_analyze(experiment=experiment, now=now, trigger=AnalysisRun.Trigger.GATE)
    except Exception as exc:  # any analysis failure must hold the ramp, not crash the sweeper
        log.exception("analysis of %s failed", experiment)
        return None, _failure("analysis", exc)
    outcome = analysis_outcome(run.result)
    if outcome is None:
        return None, "analysis returned no result"
    return outcome.with_run(run.pk), ""


def fresh_parity(*, runbook: Runbook, since: dt.datetime | None) -> tuple[dict[str, Any] | None, str]:
    """Shadow parity of the target stack since the step started, aggregated over days."""
    try:
        with transaction.atomic():
            rows = list(
                shadow_parity_daily(
                    surface=runbook.surface,
                    stack=runbook.target_stack,
                    since=since.date() if since else None,
                )
            )
    except Exception as exc:  # a parity read failure holds the step; it never passes it
        log.exception("shadow parity for %s failed", runbook)
        return None, _failure("shadow parity", exc)
    if not rows:
        return None, "no shadow comparisons recorded since the step started"
    return aggregate_parity(rows), ""


def fresh_serving(
    *, runbook: Runbook, since: dt.datetime | None, until: dt.datetime
) -> tuple[dict[str, Any] | None, str]:
    """Serving health of the target stack since the step started (the router's latency samples)."""
    try:
        label = runbook.target_stack.label
        with transaction.atomic():
            rows = [
                r
                for r in serving_health(surface=runbook.surface, since=since, until=until)
                if r.get("stack") == label
            ]
    except Exception as exc:  # a failed read holds the step; it never passes it
        log.exception("serving health for %s failed", runbook)
        return None, _failure("serving health", exc)
    requests = sum(int(r.get("requests") or 0) for r in rows)
    if not requests:
        return None, "no requests served by the target stack since the step started"
    errors = sum(int(r.get("errors") or 0) for r in rows)
    fallbacks = sum(int(r.get("fallbacks") or 0) for r in rows)
    p99 = [float(r["p99_ms"]) for r in rows if r.get("p99_ms") is not None]
    return {
        "requests": requests,
        "errors": errors,
        "fallbacks": fallbacks,
        "error_rate": errors / requests,
        "fallback_rate": fallbacks / requests,
        "p99_ms": max(p99) if p99 else None,  # the worst arm: the SLO holds for every user
    }, ""
