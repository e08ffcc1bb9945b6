"""``/metrics``: the in-code counters (``controlplane.core.telemetry``) plus gauges read from the database.

The gauges are computed when Prometheus scrapes, from a few indexed, grouped queries, so they
are right whichever process changed the rows:

* ``controlplane_runbooks{state}``: runbooks by state;
* ``controlplane_experiment_analysis_age_seconds{experiment,surface}``: age of the newest analysis
  of each running experiment (``+Inf`` when it has none yet);
* ``controlplane_runbook_analysis_age_seconds{runbook,surface,experiment}``: the same for the
  experiment of each running runbook (the "ramp without fresh analysis" alert reads it);
* ``controlplane_shadow_parity{surface,stack,measure}``: the newest daily shadow parity of each
  (surface, shadow stack): overlap@10, overlap@50, RBO, Kendall τ, calibration difference, error rate.

Access: a user with the operator role (session or API token), or ``Authorization: Bearer
<METRICS_SCRAPE_TOKEN>`` when that setting is configured.
"""

from __future__ import annotations

import datetime as dt
import hmac
import logging
import os
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db.models import Count, Max
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from controlplane.core.permissions import OPERATOR, has_role

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PARITY_MEASURES = ("overlap_10", "overlap_50", "rbo", "kendall_tau", "calibration_diff")


def process_registry() -> CollectorRegistry:
    """This process's counters, or every process's on this host in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


class DatabaseCollector(Collector):
    """Gauges computed from the database at scrape time (one registry per scrape)."""

    def __init__(self, now: dt.datetime | None = None) -> None:
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now or timezone.now()
        errors = GaugeMetricFamily(
            "controlplane_metrics_collect_errors",
            "Database gauge families that failed to compute in this scrape (see the web log).",
        )
        failed = 0
        for family in (self._runbooks, self._analysis_age, self._runbook_analysis_age, self._shadow_parity):
            try:
                yield family(now)
            except Exception:  # one broken family must not hide the others
                failed += 1
                log.exception("metrics: %s failed", family.__name__)
        errors.add_metric([], failed)
        yield errors

    def _runbooks(self, now: dt.datetime) -> Metric:
        from migrations_runbooks.models import Runbook

        gauge = GaugeMetricFamily("controlplane_runbooks", "Runbooks by state.", labels=["state"])
        counts = dict(
            Runbook.objects.values_list("status").annotate(n=Count("pk")).values_list("status", "n")
        )
        for state in Runbook.Status.values:
            gauge.add_metric([state], counts.get(state, 0))
        return gauge

    def _analysis_age(self, now: dt.datetime) -> Metric:
        from experiments.models import Experiment

        gauge = GaugeMetricFamily(
            "controlplane_experiment_analysis_age_seconds",
            "Seconds since the newest analysis of each running experiment (+Inf: none yet).",
            labels=["experiment", "surface"],
        )
        rows = (
            Experiment.objects.filter(status=Experiment.Status.RUNNING)
            .annotate(newest=Max("analyses__created_at"))
            .values_list("key", "surface__key", "newest")
            .order_by("key")
        )
        for key, surface, newest in rows:
            age = (now - newest).total_seconds() if newest else float("inf")
            gauge.add_metric([key, surface], max(age, 0.0))
        return gauge

    def _runbook_analysis_age(self, now: dt.datetime) -> Metric:
        from experiments.models import AnalysisRun
        from migrations_runbooks.models import Runbook

        gauge = GaugeMetricFamily(
            "controlplane_runbook_analysis_age_seconds",
            "Seconds since the newest analysis of each running runbook's experiment (+Inf: none yet).",
            labels=["runbook", "surface", "experiment"],
        )
        running = list(
            Runbook.objects.filter(status=Runbook.Status.RUNNING)
            .exclude(experiment_key="")
            .values_list("pk", "surface__key", "experiment_key")
            .order_by("pk")
        )
        newest = dict(
            AnalysisRun.objects.filter(experiment__key__in={key for _, _, key in running})
            .values_list("experiment__key")
            .annotate(newest=Max("created_at"))
            .values_list("experiment__key", "newest")
        )
        for pk, surface, key in running:
            stamp = newest.get(key)
            gauge.add_metric(
                [str(pk), surface, key], max((now - stamp).total_seconds(), 0.0) if stamp else float("inf")
            )
        return gauge

    def _shadow_parity(self, now: dt.datetime) -> Metric:
        from controlplane.serving.models import ShadowParityDaily

        gauge = GaugeMetricFamily(
            "controlplane_shadow_parity",
            "Newest daily shadow parity of each (surface, shadow stack), by measure.",
            labels=["surface", "stack", "measure"],
        )
        since = now.date() - dt.timedelta(days=7)
        newest: dict[tuple[str, str], Any] = {}
        rows = (
            ShadowParityDaily.objects.filter(day__gte=since)
            .select_related("surface")
            .order_by("surface__key", "shadow_stack", "day")
        )
        for row in rows:
            newest[(row.surface.key, row.shadow_stack)] = row
        for (surface, stack), row in sorted(newest.items()):
            for measure in PARITY_MEASURES:
                value = getattr(row, measure)
                if value is not None:
                    gauge.add_metric([surface, stack, measure], float(value))
            if row.n:
                gauge.add_metric([surface, stack, "error_rate"], (row.errors + row.timeouts) / row.n)
        return gauge


def _token_user(request: HttpRequest) -> Any:
    """The user of an ``Authorization: Token <token>`` header (a django-rest-knox token), if valid."""
    header = request.headers.get("Authorization", "")
    if not header.startswith("Token "):
        return None
    from knox.auth import TokenAuthentication
    from rest_framework.exceptions import AuthenticationFailed

    try:
        user, _ = TokenAuthentication().authenticate_credentials(
            header.removeprefix("Token ").strip().encode()
        )
    except AuthenticationFailed:
        return None
    return user


def metrics_allowed(request: HttpRequest) -> int:
    """200 when the caller may scrape, else 401 (no credentials) or 403 (no operator role)."""
    token = getattr(settings, "METRICS_SCRAPE_TOKEN", "")
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        given = header.removeprefix("Bearer ").strip()
        return 200 if hmac.compare_digest(given.encode(), token.encode()) else 401
    user = _token_user(request) or getattr(request, "user", None)
    if not getattr(user, "is_authenticated", False):
        return 401
    return 200 if has_role(user, OPERATOR) else 403


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    allowed = metrics_allowed(request)
    if allowed != 200:
        response = HttpResponse(
            "operator role or scrape token required\n", status=allowed, content_type="text/plain"
        )
        if allowed == 401:
            response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    database = CollectorRegistry(auto_describe=False)
    database.register(DatabaseCollector())
    body = generate_latest(process_registry()) + generate_latest(database)
    response = HttpResponse(body, content_type=CONTENT_TYPE)
    response["Cache-Control"] = "no-store"
    return response
