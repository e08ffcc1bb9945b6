"""Run one runbook sweep now (what beat does every minute), optionally on a simulated clock."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from migrations_runbooks.services import ramps_advance_due


class Command(BaseCommand):
    help = "Advance / hold / roll back every due runbook once (the beat sweeper, by hand)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--now", help="ISO 8601 time for a simulated clock (demo or debug mode only)")
        parser.add_argument("--budget", type=float, default=None, help="seconds; 0 = unbounded")

    def handle(self, *args: Any, **options: Any) -> None:
        now = timezone.now()
        if options["now"]:
            if not settings.SIMULATED_CLOCK_ALLOWED:
                raise CommandError(
                    "--now is accepted only where SIMULATED_CLOCK_ALLOWED (demo, debug, tests)"
                )
            try:
                now = dt.datetime.fromisoformat(options["now"])
            except ValueError as exc:
                raise CommandError(f"--now: {exc}") from exc
            if now.tzinfo is None:
                now = now.replace(tzinfo=dt.UTC)
        outcomes = ramps_advance_due(now=now, budget_s=options["budget"])
        for o in outcomes:
            self.stdout.write(
                f"runbook {o.runbook_id} ({o.surface}): {o.before} → {o.after} at step {o.step}: {o.outcome} — {o.reason}"
            )
        self.stdout.write(self.style.SUCCESS(f"{len(outcomes)} runbook(s) evaluated at {now.isoformat()}"))
