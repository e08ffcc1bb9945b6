"""Experiments list (verdict, power/days left, export links) and the shadow parity page."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from controlplane.core import services

pytestmark = [pytest.mark.django_db, pytest.mark.sqlite_path]


@pytest.fixture
def viewer(users) -> Client:
    client = Client()
    client.force_login(users["viewer"])
    return client


def analysed_experiment(seeded, users, *, units: int = 600):
    """A 5% ramp on pages with one synthetic day of evidence, analysed by the experiments app."""
    from experiments.services import experiment_analyze, experiment_create_for_surface
    from tests.runbooks.evidence import synthesize_day

    now = timezone.now()
    allocation = services.allocation_change(
        surface=seeded["pages"],
        actor=users["operator"],
        reason="5%",
        treatment_stack=seeded["unified"],
        treatment_bp=500,
    )
    experiment = experiment_create_for_surface(
        surface=seeded["pages"],
        treatment_stack=seeded["unified"],
        salt=allocation.salt,
        actor=users["operator"],
        now=now,
    )
    synthesize_day(surface=seeded["pages"], day=now.date(), units=units)
    run = experiment_analyze(experiment=experiment, now=now + dt.timedelta(days=1))
    return experiment, run


def test_experiments_list_shows_verdict_days_left_and_export_links(seeded, users, viewer):
    experiment, run = analysed_experiment(seeded, users)
    html = viewer.get(reverse("web-experiments")).content.decode()
    row = re.search(rf'<tr data-experiment="{experiment.key}">(.*?)</tr>', html, re.S).group(1)
    verdict = run.result["decision"]["verdict"]
    assert f'badge-{verdict}"' in row
    units = run.result["units"]["control"] + run.result["units"]["treatment"]
    assert f'<td class="num">{units}</td>' in row
    days = run.result["decision"]["days_needed"]
    assert (f"{days:,.1f}" in row) if days is not None else '<td class="num">–</td>' in row
    for fmt in ("html", "csv", "json"):
        link = reverse("experiment-readout-download", args=[experiment.key, fmt])
        assert f'href="{link}" download' in row
        response = viewer.get(link)
        assert response.status_code == 200, fmt
    assert f'href="{reverse("experiment-readout", args=[experiment.key])}"' in row


def shadow_days(seeded, users, *, days: tuple[int, ...] = (2, 1), per_day: int = 50) -> None:
    """Shadow 10% of pages on the unified stack and log ``per_day`` compared requests a day, then
    aggregate them with the serving app's own daily job (overlap@10 = 0.5 + 0.1 × days back)."""
    from controlplane.serving.models import ShadowComparison
    from controlplane.serving.services import shadow_parity_aggregate

    pages = seeded["pages"]
    services.allocation_change(
        surface=pages,
        actor=users["operator"],
        reason="shadow 10%",
        shadow_stack=seeded["unified"],
        shadow_bp=1000,
    )
    rng = np.random.default_rng(3)
    today = timezone.now().date()
    for back in days:
        day = today - dt.timedelta(days=back)
        ShadowComparison.objects.bulk_create(
            ShadowComparison(
                surface=pages,
                request_id=f"r{back}-{i}",
                unit_id=f"u{i}",
                live_stack="content-first@1",
                shadow_stack="unified-mtl@1",
                day=day,
                requested_at=timezone.now() - dt.timedelta(days=back),
                status="ok",
                overlap_10=0.5 + 0.1 * back,
                overlap_50=0.6,
                rbo=0.55,
                kendall_tau=0.3,
                shared_items=30,
                calibration_diff=0.01,
                live_ms=float(40 + rng.normal(0, 3)),
                shadow_ms=float(55 + rng.normal(0, 5)),
            )
            for i in range(per_day)
        )
        shadow_parity_aggregate(day=day)


def test_shadow_parity_page_charts_daily_agreement_and_latency(seeded, users, viewer):
    shadow_days(seeded, users)
    response = viewer.get(reverse("web-shadow-parity"), {"surface": "pages", "days": 7})
    html = response.content.decode()
    for div in ("parity-over-time", "latency-daily", "latency-distribution"):
        assert f'id="{div}"' in html
    assert "100 requests compared" in html
    rows = re.findall(
        r"<tr><td>(\d{4}-\d\d-\d\d)</td><td>unified-mtl@1</td><td class=\"num\">50</td><td class=\"num\">([0-9.]+)</td>",
        html,
    )
    assert [r[1] for r in rows] == ["0.700", "0.600"]
    assert "100 most recent compared requests" in html
    # A surface without shadow traffic says so instead of drawing empty charts.
    html = viewer.get(reverse("web-shadow-parity"), {"surface": "groups", "days": 7}).content.decode()
    assert "No shadow traffic compared on groups" in html and 'id="parity-over-time"' not in html
