"""The background log writer (PostgreSQL: a second connection must see committed rows)."""

from __future__ import annotations

import pytest

from controlplane.serving.models import Exposure, LatencySample


@pytest.mark.postgres
def test_background_log_writer_takes_logging_off_the_request(
    postgres, transactional_db, seeded, stacks, settings
):
    import time

    from controlplane.serving.services import rank_request

    settings.SERVING_LOG_MODE = "background"
    settings.SERVING_LOG_FLUSH_MS = 50
    body = rank_request(surface_key="pages", unit_id="u77", request_id="bg-1")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not LatencySample.objects.filter(request_id="bg-1").exists():
        time.sleep(0.05)
    sample = LatencySample.objects.get(request_id="bg-1")
    assert sample.stack == body["stack"] and sample.router_ms == pytest.approx(
        body["timings"]["router_ms"], rel=0.5
    )
    assert Exposure.objects.filter(unit_id="u77").count() == 1
