"""Migration runbooks: per-surface ramp plans, their steps and gates, approvals, webhooks and milestones.

A runbook moves one surface from its legacy stack(s) to a target (unified) stack through ordered
ramp steps. The beat sweeper (``services.ramps_advance_due``) evaluates the current step's gates on
fresh analysis and advances, holds, waits for approval or rolls back; every transition is a service
call in one transaction that also publishes the allocation version it implies.

No logic lives here: fields, choices, constraints and ``__str__`` only (see STYLE.md).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import models


class RunbookTemplate(models.Model):
    """A reusable plan: ordered step specs and whether promotion needs a second pair of eyes.

    ``steps`` is a list of ``{"name", "treatment_bp", "shadow_bp", "min_duration_s", "min_units",
    "needs_approval", "gates": {...}}``; see ``services.DEFAULT_STEPS`` for the standard plan.
    """

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    steps = models.JSONField()
    promotion_needs_approval = models.BooleanField(default=True)
    check_interval_s = models.PositiveIntegerField(default=60)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class Milestone(models.Model):
    """A program milestone grouping runbooks across surfaces, e.g. "unified MTL model on every surface"."""

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=160)
    description = models.TextField(blank=True)
    order = models.PositiveIntegerField(default=0)
    target_kind = models.CharField(
        max_length=20,
        default="unified_mtl",
        help_text="Traffic counts as 'on target' when served by a stack of this kind…",
    )
    target_stack = models.ForeignKey(
        "controlplane.RankingStack",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="…or, when set, by exactly this stack version (e.g. the unified value model).",
    )
    due_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["order", "key"]

    def __str__(self) -> str:
        return self.key


class Runbook(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        SCHEDULED = "scheduled", "Scheduled"
        RUNNING = "running", "Running"
        WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
        HELD = "held", "Held by a gate"
        PAUSED = "paused", "Paused by an operator"
        PROMOTED = "promoted", "Promoted"
        ROLLED_BACK = "rolled_back", "Rolled back"
        ABORTED = "aborted", "Aborted"

    surface = models.ForeignKey("controlplane.Surface", on_delete=models.PROTECT, related_name="runbooks")
    name = models.CharField(max_length=160)
    template = models.ForeignKey(
        RunbookTemplate, null=True, blank=True, on_delete=models.SET_NULL, related_name="runbooks"
    )
    milestone = models.ForeignKey(
        Milestone, null=True, blank=True, on_delete=models.SET_NULL, related_name="runbooks"
    )
    target_stack = models.ForeignKey("controlplane.RankingStack", on_delete=models.PROTECT, related_name="+")
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.DRAFT, db_index=True)
    status_reason = models.TextField(blank=True)
    current_step = models.IntegerField(default=-1, help_text="Index of the live step; -1 before start")
    step_started_at = models.DateTimeField(null=True, blank=True)
    pending_step = models.IntegerField(
        null=True, blank=True, help_text="Step the runbook moves to once its approval is granted"
    )
    # Dependencies: start only after another runbook reached depends_on_bp and held there cleanly.
    depends_on = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="dependents"
    )
    depends_on_bp = models.PositiveIntegerField(default=5000)
    depends_on_hold_s = models.PositiveIntegerField(default=86400)
    start_at = models.DateTimeField(null=True, blank=True)
    check_interval_s = models.PositiveIntegerField(default=60)
    next_check_at = models.DateTimeField(null=True, blank=True, db_index=True)
    last_tick_at = models.DateTimeField(null=True, blank=True)
    ticks = models.PositiveIntegerField(default=0)
    promotion_needs_approval = models.BooleanField(default=True)
    # The experiment analysed while this runbook ramps (experiments.Experiment.key) and its salt.
    experiment_key = models.CharField(max_length=100, blank=True)
    salt = models.CharField(max_length=64, blank=True)
    plan_version = models.PositiveIntegerField(default=1, help_text="Bumped by every edit of the steps")
    last_evaluation = models.JSONField(
        null=True,
        blank=True,
        help_text="The latest look at the gates (every tick; history rows only on change)",
    )
    ship_decision = models.JSONField(
        null=True,
        blank=True,
        help_text="The analysis that recommended ship, on the step that took the decision",
    )
    final_readout = models.JSONField(null=True, blank=True, help_text="Frozen analysis at promotion")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    started_by_label = models.CharField(max_length=150, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    ACTIVE = (
        Status.SCHEDULED,
        Status.RUNNING,
        Status.WAITING_APPROVAL,
        Status.HELD,
        Status.PAUSED,
    )
    LIVE = (Status.RUNNING, Status.WAITING_APPROVAL, Status.HELD, Status.PAUSED)
    TERMINAL = (Status.PROMOTED, Status.ROLLED_BACK, Status.ABORTED)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One live plan per surface: two runbooks must never fight over one allocation.
            models.UniqueConstraint(
                fields=["surface"],
                condition=models.Q(status__in=["scheduled", "running", "waiting_approval", "held", "paused"]),
                name="runbook_one_active_per_surface",
            )
        ]
        indexes = [models.Index(fields=["status", "next_check_at"], name="runbook_due_idx")]

    def __str__(self) -> str:
        return f"runbook {self.pk} ({self.surface_id}: {self.name})"

    @property
    def experiment(self) -> Any:
        """The experiments.Experiment analysed for this runbook, when the experiments app provides it."""
        if not self.experiment_key:
            return None
        try:
            model = apps.get_model("experiments", "Experiment")
        except LookupError:
            return None
        return model.objects.filter(key=self.experiment_key).first()


class RampStep(models.Model):
    runbook = models.ForeignKey(Runbook, on_delete=models.CASCADE, related_name="steps")
    index = models.PositiveIntegerField()
    name = models.CharField(max_length=60)
    treatment_bp = models.PositiveIntegerField(help_text="Units on the target stack, basis points")
    shadow_bp = models.PositiveIntegerField(default=0, help_text="Requests also ranked in shadow")
    min_duration = models.DurationField(default=dt.timedelta(hours=24))
    min_units = models.PositiveIntegerField(default=0)
    needs_approval = models.BooleanField(default=False, help_text="Entering this step needs an approver")
    gates = models.JSONField(default=dict, blank=True, help_text="Gate switches and thresholds")
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["runbook", "index"]
        constraints = [
            models.UniqueConstraint(fields=["runbook", "index"], name="rampstep_runbook_index_unique"),
            models.CheckConstraint(
                condition=models.Q(treatment_bp__lte=10000) & models.Q(shadow_bp__lte=10000),
                name="rampstep_bp_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.runbook_id}#{self.index} {self.name}"

    @property
    def is_shadow(self) -> bool:
        return self.treatment_bp == 0 and self.shadow_bp > 0


class StepEvaluation(models.Model):
    """One look at a step's gates by the sweeper (or an operator action), and what it decided."""

    class Outcome(models.TextChoices):
        WAIT = "wait", "Waiting for duration or sample"
        ADVANCE = "advance", "Advanced"
        HOLD = "hold", "Held by a gate"
        ROLLBACK = "rollback", "Rolled back"
        APPROVAL = "approval", "Waiting for approval"
        PROMOTE = "promote", "Promoted"
        BLOCKED = "blocked", "Waiting on a dependency"
        START = "start", "Started"
        MONITOR = "monitor", "Monitored (paused or waiting)"

    runbook = models.ForeignKey(Runbook, on_delete=models.CASCADE, related_name="evaluations")
    step = models.ForeignKey(RampStep, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    step_index = models.IntegerField()
    evaluated_at = models.DateTimeField(db_index=True)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    reason = models.TextField(blank=True)
    analysis_computed_at = models.CharField(max_length=40, blank=True)
    decision = models.CharField(max_length=12, blank=True, help_text="Analysis decision verdict")
    actor_label = models.CharField(max_length=150, default="system:beat")

    class Meta:
        ordering = ["-evaluated_at", "-id"]

    def __str__(self) -> str:
        return f"{self.runbook_id}#{self.step_index} {self.outcome} @ {self.evaluated_at:%Y-%m-%d %H:%M}"


class GateResult(models.Model):
    """One gate of one evaluation: which gate, its value and threshold, and what it means."""

    class Outcome(models.TextChoices):
        PASS = "pass", "Pass"
        WAIT = "wait", "Not yet (duration or sample)"
        HOLD = "hold", "Hold"
        ROLLBACK = "rollback", "Breach: roll back"

    evaluation = models.ForeignKey(StepEvaluation, on_delete=models.CASCADE, related_name="gates")
    gate = models.CharField(max_length=40)
    subject = models.CharField(max_length=80, blank=True, help_text="Metric / population / stack")
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    value = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    comparator = models.CharField(max_length=4, blank=True, help_text="How value relates to threshold")
    reason = models.TextField()

    class Meta:
        ordering = ["evaluation", "id"]

    def __str__(self) -> str:
        return f"{self.gate}[{self.subject}] {self.outcome}"

    @property
    def passed(self) -> bool:
        return self.outcome == self.Outcome.PASS


class Approval(models.Model):
    """A request for a second person to let a runbook enter a step, or promote."""

    class Kind(models.TextChoices):
        STEP = "step", "Enter step"
        JUMP = "jump", "Jump to step"
        PROMOTION = "promotion", "Promotion"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        REJECTED = "rejected", "Rejected"
        CONSUMED = "consumed", "Used"
        CANCELLED = "cancelled", "Cancelled"

    runbook = models.ForeignKey(Runbook, on_delete=models.CASCADE, related_name="approvals")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    step_index = models.IntegerField(null=True, blank=True, help_text="Target step (null for promotion)")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    requested_by_label = models.CharField(max_length=150)
    requested_at = models.DateTimeField()
    request_reason = models.TextField(blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_reason = models.TextField(blank=True)

    class Meta:
        ordering = ["-requested_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["runbook"],
                condition=models.Q(status__in=["pending", "approved"]),
                name="approval_one_open_per_runbook",
            )
        ]

    def __str__(self) -> str:
        target = "promotion" if self.kind == self.Kind.PROMOTION else f"step {self.step_index}"
        return f"approval {self.pk} for runbook {self.runbook_id} {target}: {self.status}"


class WebhookEndpoint(models.Model):
    """Where runbook events are POSTed, signed with HMAC-SHA256 of a shared secret."""

    name = models.CharField(max_length=80, unique=True)
    url = models.URLField(max_length=500)
    secret = models.CharField(max_length=200, help_text="Shared secret for the X-Runbook-Signature HMAC")
    events = models.JSONField(default=list, blank=True, help_text="Event names; empty = all events")
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Notification(models.Model):
    """One webhook delivery: its payload, attempts and last error stay visible."""

    class Event(models.TextChoices):
        HOLD = "hold", "Held"
        ROLLBACK = "rollback", "Rolled back"
        APPROVAL_NEEDED = "approval_needed", "Approval needed"
        PROMOTION = "promotion", "Promoted"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed (retries exhausted)"

    endpoint = models.ForeignKey(WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries")
    runbook = models.ForeignKey(Runbook, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    event = models.CharField(max_length=20, choices=Event.choices)
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField()
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.event} → {self.endpoint_id}: {self.status}"


class CapacityConfig(models.Model):
    """Prices, headroom and fleet limits for capacity plans (one row keyed "default").

    Default prices are AWS on-demand list prices (us-east-1): a legacy CPU ranking replica as a
    c6i.8xlarge (32 vCPU, $1.36/h) and a GPU replica as a g5.xlarge (1× A10G, 4 vCPU, $1.006/h), of
    whose vCPUs about two are left for retrieval and pass 0/2 next to the model server. Configure them.
    """

    key = models.SlugField(max_length=32, unique=True, default="default")
    headroom = models.FloatField(default=0.3, help_text="Spare fraction above peak (0.3 = 30%)")
    gpu_replica_cost_per_hour = models.FloatField(default=1.006)
    cpu_replica_cost_per_hour = models.FloatField(default=1.36)
    host_cpu_cores_per_gpu_replica = models.FloatField(
        default=2.0, help_text="Host cores each GPU replica brings for retrieval and pass 0/2"
    )
    min_replicas = models.PositiveIntegerField(default=1, help_text="Per stack serving any traffic")
    max_gpu_replicas = models.PositiveIntegerField(
        null=True, blank=True, help_text="Fleet limit; blank = none"
    )
    max_cpu_replicas = models.PositiveIntegerField(
        null=True, blank=True, help_text="Fleet limit; blank = none"
    )
    updated_at = models.DateTimeField()

    def __str__(self) -> str:
        return self.key
