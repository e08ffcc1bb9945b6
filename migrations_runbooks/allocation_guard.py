"""No silent allocation change on a surface a runbook drives (issue 17).

Registered with ``controlplane.services.allocation_guard_register`` when the app loads (the core
layer cannot import runbooks). Runs inside ``allocation_change``'s transaction, with the surface row
locked:

* the runbook's own transitions (``allocation.ramp|abort|promote|rollback``) pass;
* any other change while a runbook is active is refused with 409 naming the runbook;
* ``override=True`` (the documented manual override, README "Manual allocation override") is let
  through, pauses the runbook with the reason, and is audited (``runbook.override``); the runbook's
  page shows it as its status and status reason. Resuming the runbook re-checks its gates, and the
  allocation gate (``allocation_drift``) holds while the live split differs from the step's.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from controlplane.core.errors import ConflictError
from migrations_runbooks.models import Runbook

RUNBOOK_VERBS = frozenset(
    {"allocation.ramp", "allocation.abort", "allocation.promote", "allocation.rollback"}
)


def runbook_allocation_guard(
    *, surface: Any, actor: Any, reason: str, verb: str, override: bool, now: dt.datetime
) -> None:
    if verb in RUNBOOK_VERBS:
        return
    rb = (
        Runbook.objects.select_for_update()
        .filter(surface_id=surface.pk, status__in=Runbook.ACTIVE)
        .order_by("-pk")
        .first()
    )
    if rb is None:
        return
    if not override:
        raise ConflictError(
            f"surface {surface.key} is driven by runbook {rb.pk} ({rb.name!r}, {rb.status}): its steps own "
            "the allocation. Pause, abort or finish the runbook, or send override=true with a reason to "
            "pause it and change the allocation by hand (README: Manual allocation override)",
            code="runbook_active",
        )
    from migrations_runbooks.services._base import _snapshot, save_transition

    before = _snapshot(rb)
    who = actor.get_username() if hasattr(actor, "get_username") else str(actor)
    rb.status_reason = f"manual allocation override by {who}: {reason}"
    fields = ["status_reason"]
    if rb.status in Runbook.LIVE:
        rb.status = Runbook.Status.PAUSED
        fields.append("status")
    save_transition(
        rb, actor=actor, verb="runbook.override", reason=reason, now=now, before=before, fields=fields
    )
