"""A short plan for UI tests: 1% → 5% (needs an approver) → 100%, gated on duration and capacity only,
so a simulated clock drives it without an experiment analysis (the gates' own tests cover those)."""

from __future__ import annotations

import datetime as dt
from typing import Any

HOUR_S = 3600
NO_ANALYSIS = {
    "srm": False,
    "guardrails": False,
    "primary": False,
    "latency": False,
    "parity": False,
    "capacity": True,
}
QUICK_STEPS: list[dict[str, Any]] = [
    {"name": "1%", "treatment_bp": 100, "min_duration_s": HOUR_S, "min_units": 0, "gates": NO_ANALYSIS},
    {
        "name": "5%",
        "treatment_bp": 500,
        "min_duration_s": HOUR_S,
        "min_units": 0,
        "needs_approval": True,
        "gates": NO_ANALYSIS,
    },
    {"name": "100%", "treatment_bp": 10000, "min_duration_s": HOUR_S, "min_units": 0, "needs_approval": True},
]


def quick_template(actor: Any, now: dt.datetime) -> Any:
    from migrations_runbooks import services

    return services.runbook_template_upsert(
        key="quick-ui",
        name="Quick UI plan",
        actor=actor,
        now=now,
        steps=QUICK_STEPS,
        check_interval_s=60,
    )


def instant_template(actor: Any, now: dt.datetime) -> Any:
    """The same plan with one-second steps and checks, for browser tests on the real clock
    (the page's own actions use the real time, so the timeline stays in order)."""
    from migrations_runbooks import services

    steps = [{**s, "min_duration_s": 1} for s in QUICK_STEPS]
    return services.runbook_template_upsert(
        key="instant-ui", name="Instant UI plan", actor=actor, now=now, steps=steps, check_interval_s=1
    )
