"""Runbook writes: the state machine, the beat sweeper, approvals, promotion.

State machine::

    draft ──schedule──▶ scheduled ──(start_at reached, dependency met)──▶ running(step k)
    draft/scheduled ──start──▶ running(0)
    running(k) ──gates pass──▶ running(k+1) | waiting_approval (step k+1 or promotion needs an approver)
    running/held ──gate holds──▶ held ──gates pass again──▶ running / next step
    any live ──guardrail breach──▶ rolled_back            (same tick, even paused or waiting)
    waiting_approval ──approved, gates pass──▶ running(k+1) | promoted
    live ──pause──▶ paused ──resume──▶ running;  live ──jump(j)──▶ running(j) (back) | waiting_approval (forward)
    live ──rollback──▶ rolled_back;  non-terminal ──abort──▶ aborted

Every transition is one transaction: the runbook row is locked, the allocation version it implies
is published with ``controlplane.core.services.allocation_change`` (so the version bumps atomically with
the transition), an audit event is written, and webhooks are queued to send after the commit.
Every service takes ``now`` so a simulated clock can drive a whole runbook.

The package, by concern (import from here; the modules are an implementation detail):

* ``_base``: actors, the row lock, snapshots, and the shape every operator action shares
  (:func:`operator_action`, :func:`save_transition`);
* ``plans``: the standard plan, step validation, templates;
* ``config``: milestones, capacity prices and limits, webhook endpoints;
* ``lifecycle``: create, edit the plan, schedule, start, dependencies;
* ``actions``: pause, resume, jump, roll back, abort;
* ``transitions``: entering a step (allocation published), resetting traffic, the rollback itself;
* ``approvals``: four-eyes requests and decisions;
* ``evaluation``: a step's gates, the sweep's shared reads, evaluation history;
* ``sweeper``: the beat tick over every due runbook;
* ``promotion``: the target stack becomes production.
"""

from __future__ import annotations

import datetime as dt  # noqa: F401  (callers build ``now`` with ``services.dt``)

from controlplane.core.services import audit_record  # noqa: F401  (the patch point of every audit write: _base.audit)
from migrations_runbooks.services._base import DAY, HOUR, SYSTEM_BEAT, operator_action, save_transition
from migrations_runbooks.services.actions import (
    runbook_abort,
    runbook_jump,
    runbook_pause,
    runbook_resume,
    runbook_rollback,
)
from migrations_runbooks.services.approvals import runbook_approve, runbook_reject
from migrations_runbooks.services.config import (
    capacity_config_update,
    milestone_upsert,
    webhook_endpoint_upsert,
)
from migrations_runbooks.services.evaluation import Evaluation, runbook_evaluate
from migrations_runbooks.services.lifecycle import (
    dependency_status,
    runbook_create,
    runbook_schedule,
    runbook_start,
    runbook_update_steps,
)
from migrations_runbooks.services.plans import (
    DEFAULT_STEPS,
    normalize_steps,
    runbook_template_upsert,
    step_spec,
)
from migrations_runbooks.services.promotion import runbook_promote
from migrations_runbooks.services.sweeper import TickOutcome, ramps_advance_due, runbook_tick, tick_budget_s

__all__ = [
    "DAY",
    "DEFAULT_STEPS",
    "HOUR",
    "SYSTEM_BEAT",
    "Evaluation",
    "TickOutcome",
    "capacity_config_update",
    "dependency_status",
    "milestone_upsert",
    "normalize_steps",
    "operator_action",
    "ramps_advance_due",
    "runbook_abort",
    "runbook_approve",
    "runbook_create",
    "runbook_evaluate",
    "runbook_jump",
    "runbook_pause",
    "runbook_promote",
    "runbook_reject",
    "runbook_resume",
    "runbook_rollback",
    "runbook_schedule",
    "runbook_start",
    "runbook_template_upsert",
    "runbook_tick",
    "runbook_update_steps",
    "save_transition",
    "step_spec",
    "tick_budget_s",
    "webhook_endpoint_upsert",
]
