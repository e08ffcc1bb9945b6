"""Four-eyes approvals: requested by the sweeper or a forward jump, granted or refused by a person."""

from __future__ import annotations

import datetime as dt

from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.models import AnonymousUser
from django.db import transaction

from controlplane.core.errors import ApplicationError, ConflictError
from controlplane.core.permissions import APPROVER
from controlplane.core.services import Actor
from controlplane.core.updates import model_update
from migrations_runbooks.models import Approval, Runbook
from migrations_runbooks.notifications import notify
from migrations_runbooks.services._base import (
    _label,
    _lock,
    _require_reason,
    _require_role,
    _snapshot,
    _user_or_none,
    audit,
)

#: An approval still in play (requested, or granted and not yet used).
OPEN = (Approval.Status.PENDING, Approval.Status.APPROVED)


def _close_approvals(rb: Runbook, now: dt.datetime, status: str = Approval.Status.CANCELLED) -> None:
    rb.approvals.filter(status__in=OPEN).update(status=status, decided_at=now)


def _request_approval(
    rb: Runbook, *, kind: str, step_index: int | None, requested_by: Actor, reason: str, now: dt.datetime
) -> Approval:
    existing = _open_approval(rb)
    if existing is not None and existing.kind == kind and existing.step_index == step_index:
        return existing
    if existing is not None:
        model_update(instance=existing, data={"status": Approval.Status.CANCELLED, "decided_at": now})
    approval = Approval.objects.create(
        runbook=rb,
        kind=kind,
        step_index=step_index,
        requested_by=_user_or_none(requested_by),
        requested_by_label=_label(requested_by),
        requested_at=now,
        request_reason=reason,
    )
    audit(
        actor=requested_by,
        verb="approval.request",
        target=approval,
        after={"kind": kind, "step_index": step_index},
        reason=reason,
        surface_key=rb.surface.key,
        now=now,
    )
    notify(
        runbook=rb,
        event="approval_needed",
        reason=reason,
        now=now,
        details={
            "approval": {
                "id": approval.pk,
                "kind": kind,
                "step_index": step_index,
                "requested_by": approval.requested_by_label,
            }
        },
    )
    return approval


def _open_approval(rb: Runbook) -> Approval | None:
    return rb.approvals.filter(status__in=OPEN).first()


def _locked_decision(
    runbook: Runbook, *, actor: Actor, reason: str, statuses: tuple[str, ...], refusal: str
) -> tuple[Runbook, Approval, str, AbstractBaseUser | AnonymousUser]:
    """The frame of a decision: a reason, a person with the approver role, the runbook row and its
    open approval (in ``statuses``) locked. Raises when there is none to decide. Returns the person."""
    reason = _require_reason(reason)
    if isinstance(actor, str) or actor is None:
        raise ApplicationError(refusal, code="permission_denied", http_status=403)
    _require_role(actor, APPROVER)
    rb = _lock(runbook)
    approval = rb.approvals.select_for_update().filter(status__in=statuses).first()
    if approval is None:
        raise ConflictError(f"runbook {rb.pk} has no approval waiting")
    return rb, approval, reason, actor


def _decide(approval: Approval, status: str, *, actor: Actor, reason: str, now: dt.datetime) -> None:
    approval.status, approval.decided_by, approval.decided_at, approval.decision_reason = (
        status,
        _user_or_none(actor),
        now,
        reason,
    )
    approval.save()


@transaction.atomic
def runbook_approve(*, runbook: Runbook, actor: Actor, reason: str, now: dt.datetime) -> Approval:
    """Grant the open approval. Four-eyes: an approver who neither requested nor started the runbook."""
    rb, approval, reason, person = _locked_decision(
        runbook,
        actor=actor,
        reason=reason,
        statuses=OPEN,
        refusal="approvals are given by people, not by the system",
    )
    if approval.status == Approval.Status.APPROVED:
        return approval
    if approval.requested_by_id == person.pk or rb.started_by_id == person.pk:
        raise ApplicationError(
            "four-eyes: the approver must be someone other than the operator who requested or started this runbook",
            code="four_eyes",
            http_status=403,
        )
    _decide(approval, Approval.Status.APPROVED, actor=actor, reason=reason, now=now)
    # The grant does not move traffic by itself: the next tick re-checks the gates on fresh analysis.
    model_update(
        instance=rb,
        data={
            "next_check_at": now,
            "status_reason": f"approved by {person.get_username()}: {reason}; applying on the next check"
            if rb.status == Runbook.Status.WAITING_APPROVAL
            else rb.status_reason,
        },
        now=now,
        force=["updated_at"],
    )
    audit(
        actor=actor,
        verb="approval.approve",
        target=approval,
        after={"kind": approval.kind, "step_index": approval.step_index},
        reason=reason,
        surface_key=rb.surface.key,
        now=now,
    )
    return approval


@transaction.atomic
def runbook_reject(*, runbook: Runbook, actor: Actor, reason: str, now: dt.datetime) -> Approval:
    """Refuse the open approval: the runbook stays on its step, held, with the reason."""
    rb, approval, reason, person = _locked_decision(
        runbook,
        actor=actor,
        reason=reason,
        statuses=(Approval.Status.PENDING,),
        refusal="approvals are given by people",
    )
    _decide(approval, Approval.Status.REJECTED, actor=actor, reason=reason, now=now)
    before = _snapshot(rb)
    rb.pending_step = None
    if rb.status == Runbook.Status.WAITING_APPROVAL:
        rb.status = Runbook.Status.HELD
    rb.status_reason = f"approval rejected by {person.get_username()}: {reason}"
    rb.updated_at = now
    rb.save()
    audit(
        actor=actor,
        verb="approval.reject",
        target=approval,
        before=before,
        after=_snapshot(rb),
        reason=reason,
        surface_key=rb.surface.key,
        now=now,
    )
    notify(runbook=rb, event="hold", reason=rb.status_reason, now=now)
    return approval
