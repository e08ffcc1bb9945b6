"""Pages: overview, stack registry, surface detail (allocation timeline + change form), audit log.

Views are thin: they read through selectors, write through services, and render templates.
Roles: every page needs the viewer role; every write checks its role again here on the server.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from controlplane.core import selectors, services
from controlplane.core.assignment import BUCKETS
from controlplane.core.errors import ApplicationError
from controlplane.core.models import RankingStack, Surface
from controlplane.core.permissions import OPERATOR, has_role
from controlplane.web import charts
from controlplane.web import selectors as web_selectors
from controlplane.web.access import require_role, viewer_required
from controlplane.web.forms import AllocationChangeForm, AuditFilterForm, form_apply_error, pct_to_bp

AUDIT_PAGE_SIZE = 50
#: Window of router latency samples shown as "measured in serving" on the stack registry.
SERVED_WINDOW = dt.timedelta(days=7)
EVENT_TONES = (
    ("rollback", "bad"),
    ("abort", "bad"),
    ("hold", "warn"),
    ("pause", "warn"),
    ("approve", "good"),
    ("advance", "good"),
    ("promote", "good"),
    ("start", "good"),
)


def event_tone(verb: str) -> str:
    for word, tone in EVENT_TONES:
        if word in verb:
            return tone
    return "neutral"


@viewer_required
def home(request: HttpRequest) -> HttpResponse:
    """Where every surface is, what needs attention, and how far the program has come."""
    from migrations_runbooks import selectors as rb_selectors

    now = timezone.now()
    data = web_selectors.overview()
    return render(
        request,
        "web/overview.html",
        {
            "overview": data,
            "progress": data.progress,
            "attention": web_selectors.attention_items(now=now),
            "program": rb_selectors.program_progress(now=now),
        },
    )


@viewer_required
def stack_list(request: HttpRequest) -> HttpResponse:
    from controlplane.serving import selectors as serving_selectors

    stacks = list(selectors.stack_list())
    metric_keys = sorted({k for s in stacks for k in (s.offline_metrics or {})})
    since = timezone.now() - SERVED_WINDOW
    slo = {s.label: s.latency_slo_ms for s in stacks}
    served = [
        {**row, "surface": surface.key, "slo_ms": slo.get(row["stack"])}
        for surface in selectors.surface_list()
        for row in serving_selectors.serving_health(surface=surface, since=since)
    ]
    return render(
        request,
        "web/stacks.html",
        {"stacks": stacks, "metric_keys": metric_keys, "served": served, "served_days": SERVED_WINDOW.days},
    )


def _share_samples(surface: Surface) -> list[charts.ShareSample]:
    history = list(selectors.allocation_history(surface=surface).order_by("version"))
    return [
        charts.ShareSample(
            at=a.created_at,
            treatment_pct=100 * a.treatment_bp / BUCKETS if a.treatment_stack_id else 0.0,
            shadow_pct=100 * a.shadow_bp / BUCKETS if a.shadow_stack_id else 0.0,
            holdout_pct=100 * a.holdout_bp / BUCKETS,
            label=f"v{a.version}: {a.reason[:80]}",
        )
        for a in history
    ]


def surface_timeline_events(
    surface: Surface, *, exclude_prefix: str = "allocation."
) -> list[charts.TimelineEvent]:
    """Audit events on a surface as chart markers (allocation versions are the lines themselves)."""
    events = selectors.audit_list(surface=surface.key).order_by("created_at")[:500]
    return [
        charts.TimelineEvent(
            at=e.created_at,
            label=f"{e.verb} by {e.actor_label}",
            detail=e.reason[:120],
            tone=event_tone(e.verb),
        )
        for e in events
        if not e.verb.startswith(exclude_prefix)
    ]


def _stack_choices() -> list[tuple[str, str]]:
    return [
        (s.label, f"{s.label} ({s.get_kind_display()}, {s.status})")
        for s in selectors.stack_list()
        if s.status != RankingStack.Status.RETIRED
    ]


@viewer_required
@require_http_methods(["GET", "POST"])
def surface_detail(request: HttpRequest, surface_key: str) -> HttpResponse:
    """A surface's allocation history as a timeline, and (operators) a manual allocation change."""
    from migrations_runbooks import selectors as rb_selectors

    surface = get_object_or_404(selectors.surface_list(), key=surface_key)
    current = selectors.allocation_current(surface=surface)
    live, shadow = web_selectors.surface_shares(allocation=current)
    form: AllocationChangeForm | None = None
    can_operate = has_role(request.user, OPERATOR)
    initial = {
        "treatment_stack": current.treatment_stack.label if current and current.treatment_stack else "",
        "treatment_pct": (current.treatment_bp / 100) if current else 0,
        "shadow_stack": current.shadow_stack.label if current and current.shadow_stack else "",
        "shadow_pct": (current.shadow_bp / 100) if current else 0,
        "holdout_pct": (current.holdout_bp / 100) if current else 0,
        "expected_version": current.version if current else None,
    }
    if request.method == "POST":
        require_role(request, OPERATOR)  # the server decides, whatever the page showed
        form = AllocationChangeForm(request.POST, stacks=_stack_choices())
        if form.is_valid():
            data = form.cleaned_data
            try:
                allocation = services.allocation_change(
                    surface=surface,
                    actor=request.user,
                    reason=data["reason"],
                    treatment_stack=selectors.stack_get_by_label(data["treatment_stack"])
                    if data["treatment_stack"]
                    else None,
                    treatment_bp=pct_to_bp(data["treatment_pct"]),
                    shadow_stack=selectors.stack_get_by_label(data["shadow_stack"])
                    if data["shadow_stack"]
                    else None,
                    shadow_bp=pct_to_bp(data["shadow_pct"]),
                    holdout_bp=pct_to_bp(data["holdout_pct"]),
                    expected_version=data.get("expected_version"),
                )
            except ApplicationError as error:
                form_apply_error(form, error, AllocationChangeForm.SERVICE_FIELDS)
            else:
                if current is not None and allocation.pk == current.pk:
                    messages.info(request, "Nothing changed: the allocation already has these values.")
                else:
                    messages.success(request, f"Published allocation v{allocation.version} of {surface.key}.")
                return redirect("web-surface-detail", surface_key=surface.key)
    elif can_operate:
        form = AllocationChangeForm(initial=initial, stacks=_stack_choices())
    now = timezone.now()
    context: dict[str, Any] = {
        "surface": surface,
        "allocation": current,
        "live": sorted(live.items(), key=lambda kv: -kv[1]),
        "shadow": sorted(shadow.items()),
        "history": selectors.allocation_history(surface=surface)[:30],
        "runbooks": list(rb_selectors.runbook_list(surface=surface.key)[:10]),
        "form": form,
        "timeline": charts.share_timeline(
            samples=_share_samples(surface),
            events=surface_timeline_events(surface),
            now=now,
            div_id=f"timeline-{surface.key}",
        ),
    }
    # An invalid form re-renders with 200 (Django's convention; a 4xx document is a console error).
    return render(request, "web/surface_detail.html", context)


@viewer_required
def audit_log(request: HttpRequest) -> HttpResponse:
    """The audit log, filtered by actor, surface, verb (prefix) and UTC dates; 50 a page."""
    form = AuditFilterForm(request.GET or None, choices=web_selectors.audit_filter_choices())
    filters: dict[str, Any] = {"actor": None, "surface": None, "verb": None, "since": None, "until": None}
    if form.is_bound and form.is_valid():
        filters.update({k: v for k, v in form.cleaned_data.items() if v})
    events = web_selectors.audit_page_events(**filters)
    page = Paginator(events, AUDIT_PAGE_SIZE).get_page(request.GET.get("page"))
    query = urlencode({k: v for k, v in request.GET.items() if k != "page" and v})
    return render(
        request,
        "web/audit.html",
        {"form": form, "page": page, "query": query, "filtered": any(filters.values())},
    )
