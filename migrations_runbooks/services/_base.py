"""What every runbook service shares: actors, the row lock, snapshots, and the action shape.

An operator action (pause, resume, jump, rollback, abort, start, schedule, promote, plan edit) is
always the same frame around a different middle: role → reason → lock the runbook row → return it
unchanged when the action already happened → refuse a status it does not apply to → change the
row → save → audit. :func:`operator_action` is the frame's head and :func:`save_transition` its tail.
"""

from __future__ import annotations

import datetime as dt
import functools
import inspect
from collections.abc import Callable, Collection
from typing import Any

from django.db import transaction

from controlplane.core.errors import ApplicationError, ConflictError
from controlplane.core.permissions import OPERATOR, has_role
from controlplane.core.services import Actor
from migrations_runbooks.models import Runbook

SYSTEM_BEAT = "system:beat"
HOUR = 3600
DAY = 24 * HOUR

#: Statuses an action that only refuses finished runbooks applies to.
NOT_TERMINAL = tuple(s for s in Runbook.Status.values if s not in Runbook.TERMINAL)


def audit(**kwargs: Any) -> Any:
    """``controlplane.core.services.audit_record``, looked up on the package at call time.

    ``migrations_runbooks.services.audit_record`` stays the one name to wrap every runbook audit
    write by (tests/runbooks/test_concurrency.py stalls a sweeper mid-transition that way).
    """
    from migrations_runbooks import services

    return services.audit_record(**kwargs)


def _user_or_none(actor: Actor) -> Any:
    return None if actor is None or isinstance(actor, str) else actor


def _label(actor: Actor) -> str:
    if actor is None:
        return "system"
    return actor if isinstance(actor, str) else actor.get_username()


def _require_role(actor: Actor, role: str) -> None:
    """Users must hold the role; system actors (strings such as "system:beat") act for the machine."""
    if isinstance(actor, str):
        return
    if actor is None or not getattr(actor, "is_authenticated", False):
        raise ApplicationError("an anonymous caller cannot change a runbook", http_status=401)
    if not has_role(actor, role):
        raise ApplicationError(
            f"{actor.get_username()} lacks the {role} role", code="permission_denied", http_status=403
        )


def _require_reason(reason: str) -> str:
    if not reason or not reason.strip():
        raise ApplicationError("a reason is required for every runbook action", field="reason")
    return reason.strip()


def _lock(runbook: Runbook) -> Runbook:
    return (
        Runbook.objects.select_for_update(of=("self",))
        .select_related("surface", "target_stack")
        .get(pk=runbook.pk)
    )


def _snapshot(rb: Runbook) -> dict[str, Any]:
    return {
        "status": rb.status,
        "current_step": rb.current_step,
        "pending_step": rb.pending_step,
        "status_reason": rb.status_reason,
    }


def operator_action(
    *, allowed: Collection[str], refusal: str, done: Collection[str] = ()
) -> Callable[[Callable[..., Runbook]], Callable[..., Runbook]]:
    """Wrap an operator action ``fn(rb, *, actor, reason, now, **kwargs)`` in the shared frame.

    The public function takes ``runbook=, actor=, reason=, now=`` (and ``fn``'s other keywords) and
    runs in one transaction: the actor needs the operator role, a reason is required (and stripped),
    the runbook row is locked; a runbook already in a ``done`` status is returned unchanged (a retry
    is harmless); one outside ``allowed`` is refused with "runbook N is <status>; <refusal>".
    """

    def wrap(fn: Callable[..., Runbook]) -> Callable[..., Runbook]:
        @functools.wraps(fn)
        def action(
            *, runbook: Runbook, actor: Actor, reason: str, now: dt.datetime, **kwargs: Any
        ) -> Runbook:
            _require_role(actor, OPERATOR)
            reason = _require_reason(reason)
            rb = _lock(runbook)
            if rb.status in done:
                return rb
            if rb.status not in allowed:
                raise ConflictError(f"runbook {rb.pk} is {rb.status}; {refusal}")
            return fn(rb, actor=actor, reason=reason, now=now, **kwargs)

        # Callers see the public keywords (``runbook=`` and ``fn``'s), not the locked-row signature.
        del action.__wrapped__
        signature = inspect.signature(fn)
        _rb, *rest = signature.parameters.values()
        runbook_param = inspect.Parameter("runbook", inspect.Parameter.KEYWORD_ONLY, annotation="Runbook")
        action.__signature__ = signature.replace(parameters=[runbook_param, *rest])  # type: ignore[attr-defined]
        return transaction.atomic(action)

    return wrap


def save_transition(
    rb: Runbook,
    *,
    actor: Actor,
    verb: str,
    reason: str,
    now: dt.datetime,
    before: dict[str, Any],
    fields: Collection[str] | None = None,
    **after: Any,
) -> Runbook:
    """Save a changed runbook (only ``fields`` and ``updated_at`` when given) and audit the change.

    The audit's ``after`` is the new snapshot plus ``after`` (e.g. the allocation version).
    """
    rb.updated_at = now
    rb.save(update_fields=[*fields, "updated_at"] if fields is not None else None)
    audit(
        actor=actor,
        verb=verb,
        target=rb,
        before=before,
        after={**_snapshot(rb), **after},
        reason=reason,
        now=now,
    )
    return rb


def save_finished(rb: Runbook, status: str, *, reason: str, now: dt.datetime, **transition: Any) -> Runbook:
    """A terminal ``status`` (nothing pending, nothing left to check), saved and audited."""
    rb.status, rb.status_reason, rb.finished_at, rb.next_check_at, rb.pending_step = (
        status,
        reason,
        now,
        None,
        None,
    )
    return save_transition(rb, reason=reason, now=now, **transition)
