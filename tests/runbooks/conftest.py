"""Runbook test helpers: a simulated clock, analysis results of the contract shape, a webhook receiver."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def metric(
    key: str,
    role: str,
    *,
    direction: str = "higher",
    verdict: str = "equivalent",
    population: str = "pooled",
    control_mean: float = 1.0,
    treatment_mean: float = 1.0,
    ci: tuple[float, float] = (-0.01, 0.01),
    sequential: dict[str, Any] | None = None,
    kind: str = "mean",
    margin: float = 0.03,
) -> dict[str, Any]:
    diff = treatment_mean - control_mean
    return {
        "metric": key,
        "name": key,
        "role": role,
        "kind": kind,
        "direction": direction,
        "population": population,
        "computable": verdict != "not_computable",
        "reason": "" if verdict != "not_computable" else "zero variance",
        "control_mean": control_mean,
        "treatment_mean": treatment_mean,
        "diff": diff,
        "ci": list(ci),
        "rel_lift": diff / control_mean if control_mean else None,
        "rel_lift_ci": None,
        "p_value": 0.5,
        "p_adjusted": 0.5,
        "equivalence": None,
        "noninferiority": {"margin": margin, "p_value": 0.01} if role == "guardrail" else None,
        "sequential": sequential,
        "verdict": verdict,
    }


def analysis_result(
    *,
    control: int = 5000,
    treatment: int = 5000,
    srm_p: float = 0.6,
    hide_verdict: str = "noninferior",
    hide_sequential: dict[str, Any] | None = None,
    primary_verdict: str = "equivalent",
    latency_p99: float = 55.0,
    decision: str = "ship",
    populations: tuple[str, ...] = ("pooled",),
) -> dict[str, Any]:
    """A result dict shaped like experiments.AnalysisRun.result (CONTRACTS.md)."""
    metrics = []
    for pop in populations:
        metrics += [
            metric("time_spent", "primary", verdict=primary_verdict, population=pop),
            metric("meaningful_interactions", "primary", verdict="equivalent", population=pop),
            metric(
                "hide_report_rate",
                "guardrail",
                direction="lower",
                verdict=hide_verdict,
                population=pop,
                control_mean=0.02,
                treatment_mean=0.02 if hide_verdict != "worse" else 0.026,
                sequential=hide_sequential,
            ),
            metric("integrity_rate", "guardrail", direction="lower", verdict="noninferior", population=pop),
            metric(
                "latency_p99",
                "guardrail",
                direction="lower",
                verdict="noninferior",
                population=pop,
                kind="quantile",
                control_mean=50.0,
                treatment_mean=latency_p99,
                margin=15.0,
            ),
        ]
    return {
        "computed_at": "2026-03-02T09:00:00+00:00",
        "units": {"control": control, "treatment": treatment, "by_population": {}},
        "srm": {"pooled": {"chi2": 0.3, "p_value": srm_p, "flagged": srm_p < 0.001}},
        "health": [],
        "metrics": metrics,
        "decision": {
            "verdict": decision,
            "reasons": [f"scripted {decision}"],
            "blocking": [],
            "days_needed": None,
        },
    }


class ScriptedAnalysis:
    """Stands in for experiments.services.experiment_analyze in unit tests of the state machine.

    ``results[surface_key]`` is a result dict or a callable(now) -> result dict; calls are recorded.
    """

    def __init__(self) -> None:
        self.results: dict[str, Any] = {}
        self.calls: list[tuple[str, dt.datetime]] = []

    def __call__(self, *, runbook: Any, now: dt.datetime) -> tuple[dict[str, Any] | None, str]:
        self.calls.append((runbook.surface.key, now))
        value = self.results.get(runbook.surface.key)
        if value is None:
            return None, "scripted: no analysis"
        return (value(now) if callable(value) else value), ""


@pytest.fixture
def scripted_analysis(monkeypatch: pytest.MonkeyPatch) -> ScriptedAnalysis:
    from migrations_runbooks import gates

    scripted = ScriptedAnalysis()
    monkeypatch.setattr(gates, "fresh_analysis", scripted)
    # Self-contained: no experiments-app rows; the runbook still records its experiment key.
    monkeypatch.setattr(gates, "experiment_attach", lambda *, runbook, actor, now: f"scripted-{runbook.pk}")
    monkeypatch.setattr(
        gates,
        "experiment_freeze",
        lambda **kw: {"decision": None, "decision_error": "scripted"},
    )
    return scripted


@pytest.fixture
def scripted_parity(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Shadow parity aggregate returned for every runbook (edit the dict to change it)."""
    from migrations_runbooks import gates

    parity: dict[str, Any] = {
        "n": 5000,
        "days": 1,
        "overlap_10": 0.55,
        "rbo": 0.62,
        "calibration_diff": 0.01,
        "error_rate": 0.001,
        "shadow_p99_ms": 61.0,
    }
    monkeypatch.setattr(gates, "fresh_parity", lambda *, runbook, since: (dict(parity), ""))
    # Serving health of the target stack at the 100% bake step.
    serving = {
        "requests": 50_000,
        "errors": 10,
        "fallbacks": 20,
        "error_rate": 0.0002,
        "fallback_rate": 0.0004,
        "p99_ms": 66.0,
    }
    monkeypatch.setattr(gates, "fresh_serving", lambda *, runbook, since, until: (dict(serving), ""))
    return parity


class Receiver:
    """A local HTTP webhook receiver on 127.0.0.1 that verifies Standard Webhooks signatures with the
    ``standardwebhooks`` library, as a client would (against the header's timestamp: tests deliver
    on a simulated clock; ``test_webhook_security`` verifies on the real one)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.requests: list[dict[str, Any]] = []
        self.fail_next = 0
        self.redirect_to: str | None = None
        self.reply = b"ok"
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                from standardwebhooks.webhooks import Webhook

                from migrations_runbooks.notifications import signing_key

                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                ts = int(self.headers.get("webhook-timestamp", "0") or 0)
                expected = Webhook(signing_key(receiver.secret)).sign(
                    msg_id=self.headers.get("webhook-id", ""),
                    timestamp=dt.datetime.fromtimestamp(ts, dt.UTC),
                    data=body.decode(),
                )
                record = {
                    "headers": dict(self.headers),
                    "raw": body,
                    "body": json.loads(body),
                    "signature_ok": hmac.compare_digest(expected, self.headers.get("webhook-signature", "")),
                }
                receiver.requests.append(record)
                status = 200
                if receiver.redirect_to:
                    self.send_response(302)
                    self.send_header("Location", receiver.redirect_to)
                    self.end_headers()
                    return
                if receiver.fail_next > 0:
                    receiver.fail_next -= 1
                    status = 503
                self.send_response(status)
                self.end_headers()
                self.wfile.write(receiver.reply if status == 200 else b"unavailable: " + receiver.reply)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/runbooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [r["body"]["event"] for r in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(settings: Any) -> Iterator[Receiver]:
    # The receiver listens on loopback, which the SSRF guard refuses unless an operator allows it.
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    r = Receiver(secret="shared-secret-for-tests-0123456789")
    yield r
    r.close()


@pytest.fixture
def webhook(receiver: Receiver, db: Any) -> Any:
    from migrations_runbooks.models import WebhookEndpoint

    return WebhookEndpoint.objects.create(
        name="test-receiver", url=receiver.url, secret=receiver.secret, events=[], created_at=T0
    )


@pytest.fixture
def eager_celery() -> Iterator[Any]:
    """Run .delay() inline (webhook deliveries) for tests that do not use a real worker."""
    from controlplane.celery import app

    old = app.conf.task_always_eager, app.conf.task_eager_propagates
    app.conf.task_always_eager, app.conf.task_eager_propagates = True, False
    yield app
    app.conf.task_always_eager, app.conf.task_eager_propagates = old


def fast_steps(*, approval_at: tuple[int, ...] = (), hours: int = 24) -> list[dict[str, Any]]:
    """The standard six steps with short durations, for simulated-clock tests."""
    from migrations_runbooks.services import DEFAULT_STEPS

    steps = []
    for i, s in enumerate(DEFAULT_STEPS):
        steps.append({**s, "min_duration_s": hours * 3600, "needs_approval": i in approval_at})
    return steps


def drive(
    tick: Callable[[dt.datetime], Any],
    start: dt.datetime,
    *,
    until: Callable[[], bool],
    step: dt.timedelta,
    limit: int = 200,
) -> dt.datetime:
    """Advance a simulated clock, ticking at each step, until ``until()`` holds."""
    now = start
    for _ in range(limit):
        if until():
            return now
        now = now + step
        tick(now)
    raise AssertionError(f"condition not reached by {now}")
