"""A batch of events (and one of warehouse metric rows) arrives more than once, over real HTTP.

The way duplicates really happen: a client whose request timed out while the server was still
working sends it again, and a fleet retries the same batch from several processes at once. The
test drives a live server (Django's threaded server on PostgreSQL, one connection per request)
with ``requests``; exposures, events and metric rows all go in through the API; then the
experiment's analysis reads them back.

Nothing may count twice: one IngestBatch per ``client_batch_id``, one first response (201) and
replays (200, ``replayed: true``) with the same counts for every other send, the stored unit-day
sums exactly those of one copy, and the analysis' per-arm means those of one copy.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections import defaultdict
from typing import Any

import numpy as np
import pytest
import requests

from tests.faults.conftest import lock_waiters, table_locked, wait_until

pytestmark = pytest.mark.postgres

UNITS = [f"u{i}" for i in range(200)]


def post(session: requests.Session, url: str, body: dict[str, Any], **kw: Any) -> requests.Response:
    return session.post(url, json=body, timeout=kw.pop("timeout", 60), **kw)


def send_duplicates(url: str, token: str, body: dict[str, Any], copies: int) -> list[requests.Response]:
    """One send whose client gives up before the answer, and ``copies`` concurrent re-sends.

    The batch table is locked meanwhile, so every send is inside the server at once before any
    of them can claim the ``client_batch_id``: the claim race is certain, not a matter of timing.
    Returns the responses of the re-sends (the abandoned send has none).
    """
    headers = {"Authorization": f"Token {token}"}
    responses: list[requests.Response] = []

    def resend() -> None:
        session = requests.Session()
        session.headers.update(headers)
        responses.append(post(session, url, body))

    with table_locked("experiments_ingestbatch"):
        abandoned = requests.Session()
        abandoned.headers.update(headers)
        with pytest.raises(requests.exceptions.ReadTimeout):
            # The request reaches the server, which goes on with it; the client stops listening.
            post(abandoned, url, body, timeout=(5, 0.001))
        threads = [threading.Thread(target=resend) for _ in range(copies)]
        for t in threads:
            t.start()
        wait_until(
            lambda: len(lock_waiters("experiments_ingestbatch")) == copies + 1,
            timeout=60,
            what="every send to be inside the server",
        )
    for t in threads:
        t.join(120)
    assert len(responses) == copies
    return responses


@pytest.mark.timeout(120)
def test_duplicate_batches_over_http_count_once(postgres, transactional_db, live_server, seeded, users):
    from django.utils import timezone
    from rest_framework.authtoken.models import Token

    from controlplane.core.selectors import allocation_config
    from controlplane.core.services import allocation_change
    from controlplane.serving.models import IngestBatch
    from experiments.models import MetricObservation
    from experiments.services import experiment_analyze, experiment_create_for_surface

    now = timezone.now()
    # Everything happens "today" (the experiment's window starts today), even just after midnight.
    moment = max(now - dt.timedelta(minutes=5), dt.datetime.combine(now.date(), dt.time.min, tzinfo=dt.UTC))
    pages, unified = seeded["pages"], seeded["unified"]
    allocation = allocation_change(
        surface=pages,
        actor="system:test",
        reason="faults: duplicate batches",
        treatment_stack=unified,
        treatment_bp=5000,
        salt="faults-dup",
        now=now - dt.timedelta(hours=2),
    )
    experiment = experiment_create_for_surface(
        surface=pages, treatment_stack=unified, salt=allocation.salt, actor="system:test", now=now
    )
    token = Token.objects.create(user=users["operator"]).key
    base = live_server.url
    session = requests.Session()
    session.headers.update({"Authorization": f"Token {token}"})

    # Exposures, as a fleet that assigns locally reports them.
    config = allocation_config(allocation)
    arms = {}
    exposures = []
    for unit in UNITS:
        a = config.assign(unit)
        arms[unit] = a.arm
        exposures.append(
            {"unit_id": unit, "salt": config.salt, "arm": a.arm, "population": a.population, "stack": a.stack,
             "allocation_version": config.version, "first_exposed_at": moment.isoformat()}
        )  # fmt: skip
    r = post(
        session,
        f"{base}/api/v1/ingest/exposures/",
        {"client_batch_id": "exp-1", "surface": "pages", "rows": exposures},
    )
    assert r.status_code == 201 and r.json()["accepted"] == len(UNITS), r.text

    # One batch of engagement events and one of warehouse metric rows; what one copy adds up to.
    rng = np.random.default_rng(11)
    ts = moment.isoformat()
    events, expected = [], defaultdict(float)
    for unit in UNITS:
        for _ in range(int(rng.integers(1, 6))):
            events.append({"unit_id": unit, "ts": ts, "type": "like"})
            expected[(unit, "likes")] += 1
            expected[(unit, "engagements")] += 1
        seconds = round(float(rng.uniform(5, 120)), 1)
        events.append({"unit_id": unit, "ts": ts, "type": "dwell", "value": seconds})
        expected[(unit, "time_spent")] += seconds
    today = now.date().isoformat()
    rows = [
        {"unit_id": u, "day": today, "metric": "sessions", "value": 1 + i % 3} for i, u in enumerate(UNITS)
    ]
    for row in rows:
        expected[(row["unit_id"], "sessions")] += row["value"]

    for endpoint, body in (
        ("events", {"client_batch_id": "ev-dup-1", "surface": "pages", "events": events}),
        ("metric-rows", {"client_batch_id": "wh-dup-1", "surface": "pages", "rows": rows}),
    ):
        responses = send_duplicates(f"{base}/api/v1/ingest/{endpoint}/", token, body, copies=4)
        final = post(session, f"{base}/api/v1/ingest/{endpoint}/", body)  # and once more, later
        responses.append(final)
        codes = sorted(r.status_code for r in responses)
        # The abandoned first send claimed the batch, or one of the concurrent re-sends did.
        assert codes in ([200] * 5, [200] * 4 + [201]), [(r.status_code, r.text[:200]) for r in responses]
        assert final.status_code == 200 and final.json()["replayed"] is True
        counts = {(r.json()["received"], r.json()["accepted"], r.json()["rejected"]) for r in responses}
        total = len(body.get("events") or body.get("rows"))
        assert counts == {(total, total, 0)}, counts
        kind = "events" if endpoint == "events" else "metric_rows"
        assert IngestBatch.objects.filter(kind=kind, client_batch_id=body["client_batch_id"]).count() == 1

    # Stored: exactly one copy.
    stored = defaultdict(float)
    for unit, metric, value in MetricObservation.objects.filter(surface=pages).values_list(
        "unit_id", "metric", "value"
    ):
        stored[(unit, metric)] += value
    for key, value in expected.items():
        assert stored[key] == pytest.approx(value), key
    assert MetricObservation.objects.filter(batch__client_batch_id="ev-dup-1").count() == len(UNITS) * 3
    assert MetricObservation.objects.filter(batch__client_batch_id="wh-dup-1").count() == len(UNITS)

    # Read back by the analysis: per-arm means of one copy.
    run = experiment_analyze(experiment=experiment, now=timezone.now())
    for metric in ("time_spent", "sessions"):
        for arm in ("control", "treatment"):
            units = [u for u in UNITS if arms[u] == arm]
            want = sum(expected[(u, metric)] for u in units) / len(units)
            got = [
                m[f"{arm}_mean"]
                for m in run.result["metrics"]
                if m["metric"] == metric and m["population"] in ("pooled", "all")
            ]
            assert got and got[0] == pytest.approx(want, rel=1e-9), (metric, arm, got, want)
