"""Allocation drift: the live allocation of a runbook's surface must be the one its step published.

A manual change on a surface a runbook drives is refused (409) unless it is an override, which pauses
the runbook (``allocation_guard``). Should the live split still differ from the step's when the
runbook runs again (an override left it so, or a change bypassed the API), the step holds with the
reason instead of judging a split it did not set (issue 17: live traffic 90% while the step says 5%).
"""

from __future__ import annotations

from typing import Any

from controlplane.core.selectors import allocation_current
from migrations_runbooks.gates import HOLD, PASS, Gate


def _label(stack: Any) -> str:
    return stack.label if stack is not None else "none"


def allocation_drift(*, runbook: Any, step: Any) -> str:
    """Why the live allocation differs from ``step``'s, or "" when it matches."""
    live = allocation_current(surface=runbook.surface)
    if live is None:
        return f"surface {runbook.surface.key} has no allocation; step {step.name} expects one"
    expected = {
        "treatment": (step.treatment_bp, _label(runbook.target_stack) if step.treatment_bp else "none"),
        "shadow": (step.shadow_bp, _label(runbook.target_stack) if step.shadow_bp else "none"),
    }
    actual = {
        "treatment": (live.treatment_bp, _label(live.treatment_stack) if live.treatment_bp else "none"),
        "shadow": (live.shadow_bp, _label(live.shadow_stack) if live.shadow_bp else "none"),
    }
    diffs = [
        f"{arm} {actual[arm][0] / 100:g}% on {actual[arm][1]} (step: {expected[arm][0] / 100:g}% on {expected[arm][1]})"
        for arm in ("treatment", "shadow")
        if actual[arm] != expected[arm]
    ]
    if not diffs:
        return ""
    return (
        f"live allocation v{live.version} of {runbook.surface.key} differs from step {step.name}: "
        + "; ".join(diffs)
        + f" (last change: {live.reason[:200]!r})"
    )


def allocation_drift_gates(*, runbook: Any, step: Any) -> list[Gate]:
    """The drift check as a gate: HOLD with the reason when the live split is not the step's."""
    reason = allocation_drift(runbook=runbook, step=step)
    if reason:
        return [Gate("allocation", HOLD, reason, subject=runbook.surface.key)]
    return [
        Gate("allocation", PASS, f"live allocation matches step {step.name}", subject=runbook.surface.key)
    ]
