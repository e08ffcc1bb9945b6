"""Runbook pages: list + create, detail (timeline, steps, gates, next check, actions, live status by
htmx polling), action confirmation with a reason, capacity plan. Reads through
``migrations_runbooks.selectors``; writes through ``migrations_runbooks.services`` (as the API does).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django import forms
from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_http_methods

from controlplane.core import selectors as core_selectors
from controlplane.core.assignment import BUCKETS
from controlplane.core.errors import ApplicationError
from controlplane.core.models import RankingStack, Surface
from controlplane.core.permissions import APPROVER, OPERATOR, has_role
from controlplane.web import charts
from controlplane.web.access import require_role, viewer_required
from controlplane.web.forms import ReasonForm, form_apply_error
from controlplane.web.views import event_tone
from migrations_runbooks import selectors as rb_selectors
from migrations_runbooks import services as rb_services
from migrations_runbooks.models import Approval, Runbook, RunbookTemplate

#: Seconds between htmx polls of a runbook's status card.
POLL_SECONDS = 3


@dataclass(frozen=True)
class RunbookAction:
    name: str
    label: str
    role: str
    statuses: tuple[str, ...]
    tone: str  # button style: primary | warn | danger
    explains: str
    service: Callable[..., Any]


S = Runbook.Status
ACTIONS: dict[str, RunbookAction] = {
    a.name: a
    for a in (
        RunbookAction(
            "start",
            "Start",
            OPERATOR,
            (S.DRAFT, S.SCHEDULED),
            "primary",
            "Publishes the first step's allocation now (capacity and dependency are checked first).",
            rb_services.runbook_start,
        ),
        RunbookAction(
            "pause",
            "Pause",
            OPERATOR,
            (S.RUNNING, S.HELD, S.WAITING_APPROVAL),
            "warn",
            "Freezes advancement at the current step. Guardrails are still watched: a breach still rolls back.",
            rb_services.runbook_pause,
        ),
        RunbookAction(
            "resume",
            "Resume",
            OPERATOR,
            (S.PAUSED, S.HELD),
            "primary",
            "Lets the sweeper advance again; the next check re-evaluates every gate on fresh analysis.",
            rb_services.runbook_resume,
        ),
        RunbookAction(
            "approve",
            "Approve",
            APPROVER,
            (S.WAITING_APPROVAL, S.RUNNING, S.HELD, S.PAUSED),
            "primary",
            "Grants the open approval (four-eyes: not the operator who requested or started the runbook). "
            "Traffic moves on the next check, only if the gates still pass.",
            rb_services.runbook_approve,
        ),
        RunbookAction(
            "reject",
            "Reject",
            APPROVER,
            (S.WAITING_APPROVAL, S.RUNNING, S.HELD, S.PAUSED),
            "warn",
            "Refuses the open approval; the runbook stays on its step, held, with your reason.",
            rb_services.runbook_reject,
        ),
        RunbookAction(
            "rollback",
            "Roll back",
            OPERATOR,
            Runbook.LIVE,
            "danger",
            "Moves every unit back to its legacy stack at once (a new allocation version) and ends the runbook.",
            rb_services.runbook_rollback,
        ),
        RunbookAction(
            "abort",
            "Abort",
            OPERATOR,
            (S.DRAFT, *Runbook.ACTIVE),
            "danger",
            "Cancels the plan; a live runbook hands all traffic back to the legacy stacks.",
            rb_services.runbook_abort,
        ),
    )
}


def _open_approval(runbook: Runbook) -> Approval | None:
    return runbook.approvals.filter(status=Approval.Status.PENDING).first()


def available_actions(runbook: Runbook, user: Any) -> list[RunbookAction]:
    """Actions this user may try now. Display only: every POST is checked again by role and service."""
    approval = _open_approval(runbook)
    # Four-eyes (the service's rule): whoever requested the approval or started the runbook
    # cannot grant it, so they are not offered the button either.
    own = approval is not None and getattr(user, "pk", None) in (
        approval.requested_by_id,
        runbook.started_by_id,
    )
    out = []
    for action in ACTIONS.values():
        if runbook.status not in action.statuses or not has_role(user, action.role):
            continue
        if action.name in ("approve", "reject") and (approval is None or own):
            continue
        out.append(action)
    return out


def _runbook(runbook_id: int) -> Runbook:
    return get_object_or_404(
        Runbook.objects.select_related("surface", "target_stack", "template", "milestone"), pk=runbook_id
    )


# -- list and create ------------------------------------------------------------------------------------
class RunbookCreateForm(ReasonForm):
    surface = forms.ModelChoiceField(queryset=Surface.objects.none(), label="Surface", to_field_name="key")
    target_stack = forms.ModelChoiceField(queryset=RankingStack.objects.none(), label="Target stack")
    template = forms.ModelChoiceField(
        queryset=RunbookTemplate.objects.none(),
        label="Plan",
        required=False,
        empty_label="Standard plan: shadow → 1% → 5% → 25% → 50% → 100%",
        to_field_name="key",
    )
    name = forms.CharField(label="Name", required=False, max_length=160, help_text="Optional.")
    reason = forms.CharField(
        label="Reason", required=False, widget=forms.Textarea(attrs={"rows": 2}), max_length=2000
    )
    field_order = ["surface", "target_stack", "template", "name", "reason"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        fields: Any = self.fields
        fields["surface"].queryset = Surface.objects.exclude(status=Surface.Status.UNIFIED).order_by("key")
        fields["target_stack"].queryset = RankingStack.objects.filter(
            kind=RankingStack.Kind.UNIFIED_MTL
        ).exclude(status=RankingStack.Status.RETIRED)
        fields["target_stack"].label_from_instance = lambda s: s.label
        fields["template"].queryset = RunbookTemplate.objects.order_by("key")
        fields["template"].label_from_instance = lambda t: f"{t.name} ({len(t.steps)} steps)"

    def clean_reason(self) -> str:
        return str(self.cleaned_data.get("reason") or "")


RUNBOOK_FIELDS: dict[str, str | None] = {
    "surface": "surface",
    "target_stack": "target_stack",
    "depends_on": None,
    "depends_on_bp": None,
    "steps": "template",
}


@viewer_required
@require_http_methods(["GET", "POST"])
def runbook_list(request: HttpRequest) -> HttpResponse:
    form: RunbookCreateForm | None = None
    if request.method == "POST":
        require_role(request, OPERATOR)
        form = RunbookCreateForm(request.POST)
        if form.is_valid():
            data = form.cleaned_data
            try:
                runbook = rb_services.runbook_create(
                    surface=data["surface"],
                    target_stack=data["target_stack"],
                    template=data["template"],
                    name=data["name"],
                    reason=data["reason"],
                    actor=request.user,
                    now=timezone.now(),
                )
            except ApplicationError as error:
                form_apply_error(form, error, RUNBOOK_FIELDS)
            else:
                messages.success(
                    request, f"Created runbook “{runbook.name}” as a draft. Start it when ready."
                )
                return redirect("web-runbook-detail", runbook_id=runbook.pk)
    elif has_role(request.user, OPERATOR):
        form = RunbookCreateForm()
    status = request.GET.get("status", "")
    runbooks = list(rb_selectors.runbook_list(status=status or None))
    return render(
        request,
        "web/runbooks.html",
        {"runbooks": runbooks, "form": form, "status": status, "statuses": Runbook.Status.choices},
    )


# -- detail -----------------------------------------------------------------------------------------------
def _state_token(detail: dict[str, Any]) -> str:
    """Changes whenever something the timeline shows changes (status, step, allocation, approvals)."""
    approvals = [(a["id"], a["status"]) for a in detail["approvals"]]
    key = repr(
        (
            detail["status"],
            detail["current_step"],
            detail["allocation_version"],
            approvals,
            detail["ticks"] if detail["status"] in (S.HELD,) else 0,
        )
    )
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def runbook_timeline(runbook: Runbook, *, now: dt.datetime, suffix: str = "") -> Any:
    """Shares of the surface over time since the runbook was created, with its events marked."""
    history = list(core_selectors.allocation_history(surface=runbook.surface).order_by("version"))
    since = runbook.created_at
    in_force = [a for a in history if a.created_at <= since][-1:]  # the version live when it was created
    shown = in_force + [a for a in history if a.created_at > since]
    samples = [
        charts.ShareSample(
            at=max(a.created_at, since),
            treatment_pct=100 * a.treatment_bp / BUCKETS if a.treatment_stack_id else 0.0,
            shadow_pct=100 * a.shadow_bp / BUCKETS if a.shadow_stack_id else 0.0,
            holdout_pct=100 * a.holdout_bp / BUCKETS,
            label=f"v{a.version}: {a.reason[:80]}",
        )
        for a in shown
    ]
    events = core_selectors.audit_list(surface=runbook.surface.key, since=since).order_by("created_at")[:500]
    markers = [
        charts.TimelineEvent(
            at=e.created_at,
            label=f"{e.verb} by {e.actor_label}",
            detail=e.reason[:160],
            tone=event_tone(e.verb),
        )
        for e in events
        if not e.verb.startswith("allocation.")
    ]
    end = runbook.finished_at or now
    return charts.share_timeline(
        samples=samples, events=markers, now=end, div_id=f"runbook-timeline-{runbook.pk}{suffix}"
    )


def experiment_progress(runbook: Runbook) -> dict[str, Any] | None:
    """The runbook's experiment: latest verdict, units, days left and sample progress per blocking metric.

    "Power" here is the share of the sample size each blocking test needs for the experiment's target
    power (units now / units needed, from the analysis' own power calculation), which is what a PM
    can act on while the ramp runs; days left is the analysis' projection at the current rate.
    """
    experiment = runbook.experiment
    if experiment is None:
        return None
    from experiments import selectors as exp_selectors
    from experiments.outcome import analysis_outcome

    run = exp_selectors.experiment_latest_analysis(experiment=experiment)
    outcome = analysis_outcome(run.result if run else None)
    if outcome is None:
        return {
            "experiment": experiment,
            "run": run,
            "verdict": None,
            "reasons": [],
            "days_needed": None,
            "units": 0,
            "sample": [],
            "target_power": getattr(experiment, "power", None),
        }
    n_now = outcome.units.total
    blocking = set(outcome.recommendation.blocking)
    sample: list[dict[str, Any]] = []
    for m in outcome.metrics:
        if m.population != "pooled" or m.role == "secondary":
            continue
        needed = m.units_needed
        sample.append(
            {
                "metric": m.name,
                "role": m.role,
                "verdict": str(m.verdict),
                "blocking": m.metric in blocking,
                "units_needed": needed,
                "progress": min(1.0, n_now / needed) if needed else (1.0 if needed == 0 else None),
            }
        )
    return {
        "experiment": experiment,
        "run": run,
        "verdict": str(outcome.recommendation.verdict or ""),
        "reasons": list(outcome.recommendation.reasons),
        "days_needed": outcome.recommendation.days_needed,
        "units": n_now,
        "sample": sample,
        "target_power": getattr(experiment, "power", None),
    }


def _detail_context(request: HttpRequest, runbook: Runbook, now: dt.datetime) -> dict[str, Any]:
    detail = rb_selectors.runbook_detail(runbook=runbook, now=now)
    open_approval = _open_approval(runbook)
    return {
        "runbook": runbook,
        "detail": detail,
        "state": _state_token(detail),
        "actions": available_actions(runbook, request.user),
        "open_approval": open_approval,
        "poll_seconds": POLL_SECONDS,
        "live": runbook.status in Runbook.ACTIVE,
        "now": now,
        "next_check_in": (detail["next_check_at"] - now).total_seconds() if detail["next_check_at"] else None,
    }


@viewer_required
def runbook_detail(request: HttpRequest, runbook_id: int) -> HttpResponse:
    """The full page on navigation; only the status card when htmx polls (plus a timeline refresh
    trigger when the state the timeline shows has changed since the client's last look)."""
    runbook = _runbook(runbook_id)
    now = timezone.now()
    context = _detail_context(request, runbook, now)
    if getattr(request, "htmx", False):  # django_htmx.middleware.HtmxMiddleware sets it
        if request.GET.get("part") == "timeline":
            # A fresh div id: htmx "settles" attributes of elements whose id survives a swap, which
            # would strip the classes plotly adds while drawing (and with them its CSS).
            return HttpResponse(runbook_timeline(runbook, now=now, suffix=f"-{time.time_ns()}"))
        if request.GET.get("part") == "history":
            context["evaluations"] = rb_selectors.evaluation_list(runbook=runbook, limit=15)
            return render(request, "web/partials/runbook_history.html", context)
        response = render(request, "web/partials/runbook_status.html", context)
        if request.GET.get("state") and request.GET["state"] != context["state"]:
            response["HX-Trigger"] = "runbook-changed"
        return response
    context.update(
        {
            "timeline": runbook_timeline(runbook, now=now),
            "evaluations": rb_selectors.evaluation_list(runbook=runbook, limit=15),
            "experiment": experiment_progress(runbook),
        }
    )
    return render(request, "web/runbook_detail.html", context)


@viewer_required
@require_http_methods(["GET", "POST"])
def runbook_action(request: HttpRequest, runbook_id: int, action: str) -> HttpResponse:
    """Confirmation page with a reason (GET), then the service call (POST)."""
    spec = ACTIONS.get(action)
    if spec is None:
        raise Http404(f"unknown action {action!r}")
    runbook = _runbook(runbook_id)
    require_role(request, spec.role)  # the page showed the button only to this role; the server checks anyway
    form = ReasonForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            spec.service(
                runbook=runbook, actor=request.user, reason=form.cleaned_data["reason"], now=timezone.now()
            )
        except ApplicationError as error:
            form_apply_error(form, error, {"reason": "reason"})
        else:
            runbook.refresh_from_db()
            messages.success(
                request, f"{spec.label}: done. The runbook is now {runbook.get_status_display().lower()}."
            )
            return redirect("web-runbook-detail", runbook_id=runbook.pk)
    detail = rb_selectors.runbook_detail(runbook=runbook, now=timezone.now())
    return render(
        request,
        "web/runbook_action.html",
        {
            "runbook": runbook,
            "detail": detail,
            "action": spec,
            "form": form,
            "open_approval": _open_approval(runbook),
            "allowed_now": runbook.status in spec.statuses,
        },
    )


# -- capacity ----------------------------------------------------------------------------------------------
@viewer_required
def runbook_capacity(request: HttpRequest, runbook_id: int) -> HttpResponse:
    """Replicas per stack per step and the savings timeline of one runbook's plan."""
    runbook = _runbook(runbook_id)
    plan = rb_selectors.capacity_plan(runbook=runbook)
    stacks = sorted({s["stack"] for row in plan["steps"] for s in row["plan"]["stacks"]})
    for row in plan["steps"]:
        by_stack = {s["stack"]: s for s in row["plan"]["stacks"]}
        row["by_stack"] = [by_stack.get(label) for label in stacks]
    promoted_by_stack = {s["stack"]: s for s in plan["promoted"]["plan"]["stacks"]}
    plan["promoted"]["by_stack"] = [promoted_by_stack.get(label) for label in stacks]
    baseline_by_stack = {s["stack"]: s for s in plan["baseline"]["stacks"]}
    plan["baseline_by_stack"] = [baseline_by_stack.get(label) for label in stacks]
    return render(
        request,
        "web/runbook_capacity.html",
        {
            "runbook": runbook,
            "plan": plan,
            "stacks": stacks,
            "replicas_chart": charts.capacity_replicas(
                plan=plan, stacks=stacks, div_id=f"capacity-{runbook.pk}"
            ),
            "savings_chart": charts.capacity_savings(plan=plan, div_id=f"savings-{runbook.pk}"),
        },
    )


def runbook_url(runbook: Runbook) -> str:
    return reverse("web-runbook-detail", args=[runbook.pk])
