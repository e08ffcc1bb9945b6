"""Readout exports: the HTML opens offline with working charts; CSV/JSON carry the numbers."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_service
from tests.experiments.conftest import NOW, WINDOW_START
from tests.experiments.simworld import Knobs, populate

pytestmark = pytest.mark.django_db
PRE_DAY = WINDOW_START - dt.timedelta(days=1)


@pytest.fixture
def analysed(ramped: dict[str, Any], experiment: Any) -> dict[str, Any]:
    from django.apps import apps

    from experiments.services import experiment_analyze

    populate(
        surface=ramped["groups"],
        allocation=ramped["allocation"],
        n_units=1500,
        window_start=WINDOW_START,
        window_days=3,
        pre_day=PRE_DAY,
        effects=Knobs(hide_multiplier=1.4),
    )
    parity = apps.get_model("serving", "ShadowParityDaily")
    for d in range(3):
        parity.objects.create(
            surface=ramped["groups"],
            shadow_stack="unified-mtl@1",
            day=WINDOW_START + dt.timedelta(days=d),
            n=400,
            compared=398,
            errors=2,
            timeouts=0,
            overlap_10=0.61 + d / 100,
            overlap_50=0.7,
            rbo=0.66,
            kendall_tau=0.41,
            calibration_diff=0.01,
            live_p50_ms=70,
            live_p99_ms=160,
            shadow_p50_ms=85,
            shadow_p99_ms=190,
            computed_at=NOW,
        )
    runs = [experiment_analyze(experiment=experiment, now=NOW + dt.timedelta(days=d)) for d in (1, 2, 3)]
    return {"experiment": experiment, "run": runs[-1]}


def test_readout_data_and_renderings(analysed: dict[str, Any]) -> None:
    from experiments import readout

    data = readout.readout_data(experiment=analysed["experiment"], run=analysed["run"])
    assert len({p["day"] for p in data["timeline"]}) == 3
    assert [p["day"] for p in data["parity"]] == [
        (WINDOW_START + dt.timedelta(days=d)).isoformat() for d in range(3)
    ]
    assert {r["arm"] for r in data["latency"]} == {"control", "treatment"}
    standalone = readout.render_html(data, standalone=True)
    for div in ("readout-forest", "readout-timeline", "readout-srm", "readout-parity", "readout-latency"):
        assert f'id="{div}"' in standalone
    assert standalone.count("Plotly.newPlot") == 5
    assert not re.search(r"<script[^>]+src=", standalone)  # plotly.js is inline, nothing is fetched
    assert len(standalone) > 3_000_000  # plotly.min.js is inside
    page = readout.render_html(data, standalone=False, plotly_src="/assets/plotly.js")
    assert '<script src="/assets/plotly.js">' in page and len(page) < 1_000_000
    csv_text = readout.render_csv(data)
    header = csv_text.splitlines()[0].split(",")
    assert header[:6] == ["metric", "name", "role", "kind", "direction", "population"]
    assert len(csv_text.splitlines()) == 1 + len(data["result"]["metrics"])


def test_a_section_that_cannot_be_read_says_why(
    analysed: dict[str, Any], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed serving read leaves the rest of the readout intact and says "unavailable: reason"."""
    from django.db import DatabaseError

    from experiments import readout

    def broken(**kwargs: Any) -> list[dict[str, Any]]:
        raise DatabaseError("relation shadow_parity is locked")

    monkeypatch.setattr(readout.serving_logs, "shadow_parity_daily", broken)
    with caplog.at_level("ERROR", logger="experiments.readout"):
        data = readout.readout_data(experiment=analysed["experiment"], run=analysed["run"])
    assert data["parity"] == []
    assert data["unavailable"] == {"parity": "unavailable: DatabaseError: relation shadow_parity is locked"}
    assert any(r.exc_info for r in caplog.records), "the error is logged with its traceback"
    page = readout.render_html(data, standalone=False, plotly_src="/assets/plotly.js")
    assert "Shadow parity unavailable: DatabaseError: relation shadow_parity is locked" in page
    assert 'id="readout-forest"' in page and 'id="readout-latency"' in page
    # The same document still renders after the failed read (the savepoint kept the transaction).
    assert readout.readout_data(experiment=analysed["experiment"], run=analysed["run"])["result"]


def test_hypothesis_text_is_escaped(analysed: dict[str, Any]) -> None:
    from experiments import readout
    from experiments.services import experiment_update_design

    experiment_update_design(
        experiment=analysed["experiment"],
        actor="system:test",
        reason="test",
        hypothesis="<script>alert(1)</script>",
        now=NOW,
    )
    analysed["experiment"].refresh_from_db()
    html = readout.render_html(
        readout.readout_data(experiment=analysed["experiment"], run=analysed["run"]), standalone=True
    )
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.browser
def test_html_export_opens_offline_with_working_charts(analysed: dict[str, Any], tmp_path: Path) -> None:
    """Chromium with every network request blocked: all charts render, no script errors."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    require_service("Chromium", chromium is not None, "apt-get install chromium")
    from playwright.sync_api import sync_playwright

    from experiments import readout

    path = tmp_path / "readout.html"
    path.write_text(
        readout.render_html(
            readout.readout_data(experiment=analysed["experiment"], run=analysed["run"]), standalone=True
        )
    )
    requested: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        def block(route: Any) -> None:
            requested.append(route.request.url)
            if route.request.url.startswith("file://"):
                route.continue_()
            else:
                route.abort()

        page.route("**/*", block)
        page.goto(path.as_uri())
        page.wait_for_function(
            "document.querySelectorAll('.js-plotly-plot .main-svg').length >= 5", timeout=20000
        )
        plots = page.locator(".js-plotly-plot").count()
        forest_points = page.locator("#readout-forest .scatterlayer .point").count()
        banner = page.locator(".banner h2").inner_text()
        browser.close()
    assert errors == []
    assert [u for u in requested if not u.startswith("file://")] == []
    assert plots == 5
    assert forest_points == 27  # 9 metrics × (pooled + 2 populations)
    assert banner.startswith("Recommendation:")
