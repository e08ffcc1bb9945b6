"""The main job, end to end: migrate *pages* and *groups* to the unified stack on a compressed clock.

    manage.py demo_migration [--users 1200] [--seconds-per-day 2] [--world small|default] [--train]

What happens (the console shows each step; the UI at http://127.0.0.1:8000 shows the same state):
1. the stacks are (optionally) trained on the simulated world and registered;
2. runbooks for *pages* and *groups* (groups depends on pages reaching 50%) are created from the
   standard plan and started by the demo operator;
3. every simulated day, the world's users make feed requests through the router (real stacks,
   exposures, latency, shadow sampling through the Celery worker) and their metric rows are
   ingested; then a **ramp tick is sent through Celery** (the real worker) with the simulated `now`;
4. approvals are given by the demo approver (four-eyes: not the operator who started the runbook);
5. *pages* ramps to 100% and is promoted; *groups* gets an injected regression on the unified stack
   (more hides and reports), its guardrail trips, and it rolls back with the reason recorded.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from controlplane.models import RankingStack, Surface

FINAL = {"promoted", "rolled_back", "aborted"}
DAY = 24 * 3600
# The demo's plan: the standard ramp, compressed to fit a few minutes of simulated days. Parity
# thresholds are set for a *different* stack replacing a legacy one (low overlap is expected;
# what the shadow step guards against is a broken ranking, errors and latency).
DEMO_PARITY = {
    "overlap_10": {"min": 0.05},
    "rbo": {"min": 0.05},
    "calibration_diff": {"max": 0.25},
    "error_rate": {"max": 0.01},
}
DEMO_STEPS = [
    {
        "name": "shadow",
        "treatment_bp": 0,
        "shadow_bp": 2000,
        "min_duration_s": DAY,
        "min_units": 0,
        "gates": {"parity": DEMO_PARITY},
    },
    {"name": "5%", "treatment_bp": 500, "min_duration_s": DAY, "min_units": 50},
    {"name": "25%", "treatment_bp": 2500, "min_duration_s": DAY, "min_units": 200, "needs_approval": True},
    {"name": "50%", "treatment_bp": 5000, "min_duration_s": 2 * DAY, "min_units": 400},
    {"name": "100%", "treatment_bp": 10000, "min_duration_s": DAY, "min_units": 0},
]


class Command(BaseCommand):
    help = "Run the whole migration story (pages promoted, groups rolled back) on a compressed clock."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--users", type=int, default=1200, help="Simulated users per surface per day.")
        parser.add_argument(
            "--seconds-per-day",
            type=float,
            default=2.0,
            help="Real seconds to pause per simulated day (speed).",
        )
        parser.add_argument("--max-days", type=int, default=40)
        parser.add_argument("--train", action="store_true", help="Train and register the stacks first.")
        parser.add_argument("--world", choices=("small", "default"), default="small")
        parser.add_argument(
            "--regression", type=float, default=1.6, help="Hide/report multiplier injected on groups."
        )
        parser.add_argument("--tick-timeout", type=float, default=300.0)
        parser.add_argument(
            "--inline-ticks", action="store_true", help="Run ticks in this process instead of through Celery."
        )

    def say(self, message: str) -> None:
        self.stdout.write(f"[demo] {message}")
        self.stdout.flush()

    def handle(self, *args: Any, **options: Any) -> None:
        from experiments.services import metric_definitions_ensure_standard
        from migrations_runbooks import services as runbooks
        from migrations_runbooks.models import Runbook

        call_command("seed_demo", verbosity=0)
        metric_definitions_ensure_standard()
        if options["train"]:
            self.say(f"training the three stacks on the {options['world']} world (progress below)")
            call_command("train_stacks", "--world", options["world"], "--out", "var/artifacts")

        users = get_user_model().objects
        operator, approver = users.get(username="pm"), users.get(username="approver")
        unified = (
            RankingStack.objects.filter(kind=RankingStack.Kind.UNIFIED_MTL)
            .exclude(status="retired")
            .order_by("-created_at")
            .first()
        )
        if unified is None:
            raise CommandError("no unified stack registered; run seed_demo")
        pages, groups = Surface.objects.get(key="pages"), Surface.objects.get(key="groups")

        start = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        now = start
        runbook_of: dict[str, Runbook] = {}
        for surface in (pages, groups):
            existing = Runbook.objects.filter(surface=surface).exclude(status__in=list(FINAL)).first()
            if existing is not None:
                runbook_of[surface.key] = existing
                continue
            depends = runbook_of.get("pages") if surface.key == "groups" else None
            rb = runbooks.runbook_create(
                surface=surface,
                target_stack=unified,
                actor=operator,
                now=now,
                depends_on=depends,
                steps=DEMO_STEPS,
                depends_on_hold_s=0,
                reason=f"demo: move {surface.key} to {unified.label}",
            )
            runbook_of[surface.key] = rb
        for key, rb in runbook_of.items():
            if rb.status == Runbook.Status.DRAFT:
                if rb.depends_on_id:
                    runbooks.runbook_schedule(
                        runbook=rb,
                        start_at=now,
                        actor=operator,
                        reason="demo: start when pages is at 50%",
                        now=now,
                    )
                    self.say(f"{key}: scheduled — starts once pages holds 50% cleanly")
                else:
                    runbooks.runbook_start(
                        runbook=rb, actor=operator, reason="demo: start the migration", now=now
                    )
                    self.say(f"{key}: started by {operator.username} (shadow step first)")

        from rankers.engine import Effects

        regression = {
            unified.label: Effects(
                hide_multiplier=options["regression"], report_multiplier=options["regression"]
            )
        }
        from controlplane.serving.services import simulate_traffic

        for day_index in range(options["max_days"]):
            day = (start + dt.timedelta(days=day_index)).date()
            for surface in (pages, groups):
                result = simulate_traffic(
                    surface=surface,
                    users=options["users"],
                    day=day,
                    effects_by_stack=regression if surface.key == "groups" else None,
                )
                self.say(
                    f"day {day_index + 1} {surface.key}: {result.get('requests', '?')} requests, "
                    f"{result.get('units', options['users'])} users, fallbacks {result.get('fallbacks', 0)}"
                )
                self.wait_for_shadow(surface, day, int(result.get("shadowed", 0)))
            from controlplane.serving.services import shadow_parity_aggregate

            shadow_parity_aggregate(day=day)
            now = dt.datetime.combine(day, dt.time(23, 59), tzinfo=dt.UTC)
            outcomes = self.tick(now, options)
            for o in outcomes:
                rb = runbook_of.get(str(o["surface"]))
                why = ""
                if rb is not None and o["outcome"] not in ("advance",):
                    rb.refresh_from_db()
                    why = f" — {rb.status_reason}" if rb.status_reason else ""
                self.say(
                    f"tick {now:%Y-%m-%d}: {o['surface']} {o['before']} → {o['after']} ({o['outcome']}){why}"
                )
            for key, rb in runbook_of.items():
                rb.refresh_from_db()
                if rb.status == Runbook.Status.WAITING_APPROVAL:
                    runbooks.runbook_approve(
                        runbook=rb, actor=approver, reason="demo: readout reviewed, looks neutral", now=now
                    )
                    self.say(f"{key}: approved by {approver.username} (four-eyes: not {operator.username})")
            states = {key: rb.status for key, rb in runbook_of.items()}
            self.say("status: " + ", ".join(f"{k}={v}" for k, v in states.items()))
            if all(s in FINAL for s in states.values()):
                break
            time.sleep(options["seconds_per_day"])
        for key, rb in runbook_of.items():
            rb.refresh_from_db()
            reason = getattr(rb, "status_reason", "") or ""
            self.say(f"final: {key} is {rb.status}{(' — ' + reason) if reason else ''}")

    def wait_for_shadow(self, surface: Surface, day: dt.date, expected: int, timeout: float = 120.0) -> None:
        """Shadow scoring runs in the Celery worker; wait until it has recorded this day's requests."""
        from controlplane.serving.models import ShadowComparison

        deadline = time.monotonic() + timeout
        done = 0
        while time.monotonic() < deadline:
            done = ShadowComparison.objects.filter(surface=surface, day=day).count()
            if done >= expected:
                return
            time.sleep(0.5)
        self.say(
            f"{surface.key}: {done}/{expected} shadow comparisons recorded after {timeout:.0f}s; going on"
        )

    def tick(self, now: dt.datetime, options: dict[str, Any]) -> list[dict[str, Any]]:
        from migrations_runbooks.tasks import ramps_tick

        if options["inline_ticks"]:
            return list(ramps_tick(now.isoformat()))
        return list(ramps_tick.delay(now.isoformat()).get(timeout=options["tick_timeout"]))
