"""Issue 17: a production worker takes no clock from a task message; a simulated clock is a demo or
test setting (SIMULATED_CLOCK_ALLOWED)."""

from __future__ import annotations

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from migrations_runbooks import services
from migrations_runbooks.models import Runbook
from migrations_runbooks.tasks import ramps_tick
from tests.runbooks.conftest import DAY, fast_steps

pytestmark = pytest.mark.django_db


def _running(seeded, users):
    now = timezone.now()
    rb = services.runbook_create(
        surface=seeded["pages"],
        target_stack=seeded["unified"],
        actor=users["operator"],
        now=now,
        steps=fast_steps(),
    )
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=now)
    return rb, now


def test_production_ignores_a_clock_in_the_task_message(
    seeded, users, scripted_analysis, scripted_parity, settings
):
    settings.SIMULATED_CLOCK_ALLOWED = False
    rb, now = _running(seeded, users)
    # A message forged to say "30 days later" would push the ramp past its 24 h minimum.
    ramps_tick.apply(args=[(now + 30 * DAY).isoformat()]).get()
    assert Runbook.objects.get(pk=rb.pk).current_step == 0  # the real clock: too early to advance
    with pytest.raises(CommandError, match="SIMULATED_CLOCK_ALLOWED"):
        call_command("ramps_tick", "--now", (now + 30 * DAY).isoformat())


def test_the_demo_and_tests_may_drive_a_simulated_clock(
    seeded, users, scripted_analysis, scripted_parity, settings
):
    settings.SIMULATED_CLOCK_ALLOWED = True
    rb, now = _running(seeded, users)
    ramps_tick.apply(args=[(now + DAY).isoformat()]).get()
    assert Runbook.objects.get(pk=rb.pk).current_step == 1


def test_the_setting_is_off_outside_demo_debug_and_tests():
    import subprocess
    import sys

    code = (
        "import os, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'controlplane.settings'; "
        "from django.conf import settings; print(settings.SIMULATED_CLOCK_ALLOWED)"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": "postgres://u@127.0.0.1:1/x",
        "SECRET_KEY": "x" * 50,
        "CONTROLPLANE_VAR_DIR": "/tmp/controlplane-clock-test",
    }
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
