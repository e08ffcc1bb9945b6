"""Experiments app models. Evidence tables live in models_evidence (written by serving/ingestion).

Below them: the pre-registered experiment design (Experiment + ExperimentMetric), the analysis
runs that turn evidence into numbers, warehouse-computed sufficient statistics, and decisions
with a frozen readout snapshot.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models

from experiments.models_evidence import (
    MetricDayWrite,
    MetricDefinition,
    MetricObservation,
)

__all__ = [
    "AnalysisRollup",
    "AnalysisRun",
    "Decision",
    "Experiment",
    "ExperimentMetric",
    "MetricDayWrite",
    "MetricDefinition",
    "MetricObservation",
    "WarehouseStatistics",
]


class Experiment(models.Model):
    """A pre-registered comparison of the unified stack against the legacy stacks on one surface.

    Identified for analysis by (surface, salt, window): the exposures logged under the allocation
    salt, and each exposed unit's metric rows over the window (and the pre-period for CUPED).
    Once running, the design is locked; every later change goes through a service with a reason
    and is audited.
    """

    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        RUNNING = "running", "Running"
        STOPPED = "stopped", "Stopped"
        DECIDED = "decided", "Decided"

    surface = models.ForeignKey("controlplane.Surface", on_delete=models.PROTECT, related_name="experiments")
    key = models.SlugField(max_length=80, unique=True)
    name = models.CharField(max_length=160)
    hypothesis = models.TextField(blank=True)
    treatment_stack = models.ForeignKey(
        "controlplane.RankingStack", on_delete=models.PROTECT, related_name="experiments"
    )
    controls = models.JSONField(
        default=dict, blank=True, help_text="{population: legacy stack label}: each population's control"
    )
    allocation = models.ForeignKey(
        "controlplane.Allocation",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The allocation version current when the experiment was designed",
    )
    salt = models.CharField(
        max_length=64, help_text="Allocation salt whose exposures the experiment analyses"
    )
    window_start = models.DateField()
    window_end = models.DateField(null=True, blank=True, help_text="Open (today) while running")
    pre_start = models.DateField(null=True, blank=True)
    pre_end = models.DateField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    alpha = models.FloatField(default=0.05)
    power = models.FloatField(default=0.8, help_text="Target power for the days-needed calculation")
    sequential = models.BooleanField(default=True, help_text="Always-valid (mSPRT) results while monitoring")
    locked_at = models.DateTimeField(null=True, blank=True)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(alpha__gt=0) & models.Q(alpha__lt=0.5), name="experiment_alpha_range"
            ),
            models.CheckConstraint(
                condition=models.Q(window_end__isnull=True)
                | models.Q(window_end__gte=models.F("window_start")),
                name="experiment_window_ordered",
            ),
        ]
        indexes = [models.Index(fields=["surface", "status"], name="experiment_surface_status")]

    def __str__(self) -> str:
        return self.key

    @property
    def locked(self) -> bool:
        return self.locked_at is not None


class ExperimentMetric(models.Model):
    """One pre-registered metric of an experiment: its role, direction and margin."""

    class Role(models.TextChoices):
        PRIMARY = "primary", "Primary"
        SECONDARY = "secondary", "Secondary"
        GUARDRAIL = "guardrail", "Guardrail"

    class MarginKind(models.TextChoices):
        ABSOLUTE = "absolute", "Absolute (metric units)"
        RELATIVE = "relative", "Relative (fraction of the control value)"

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="metrics")
    metric = models.ForeignKey(MetricDefinition, on_delete=models.PROTECT, related_name="experiment_uses")
    role = models.CharField(max_length=10, choices=Role.choices)
    direction = models.CharField(
        max_length=8,
        choices=MetricDefinition.Direction.choices,
        help_text="Pre-registered direction of good (copied from the definition unless given)",
    )
    margin_kind = models.CharField(max_length=8, choices=MarginKind.choices, default=MarginKind.RELATIVE)
    margin = models.FloatField(
        null=True,
        blank=True,
        help_text="Equivalence margin (primary/secondary) or non-inferiority margin (guardrail); > 0",
    )
    cuped = models.BooleanField(default=True, help_text="Adjust with the same metric over the pre-period")
    position = models.PositiveSmallIntegerField(default=0)

    class CapSource(models.TextChoices):
        CONTROL = "control", "Control arm"
        PRE = "pre", "Pre-period"

    cap_quantile = models.FloatField(
        null=True,
        blank=True,
        help_text="Pre-registered capping (mean metrics): winsorise each unit's value at this quantile "
        "(0.5 < q < 1), taken from cap_source",
    )
    cap_source = models.CharField(max_length=8, choices=CapSource.choices, default=CapSource.CONTROL)

    class Meta:
        ordering = ["experiment", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["experiment", "metric"], name="experiment_metric_once"),
            models.CheckConstraint(
                condition=models.Q(margin__isnull=True) | models.Q(margin__gt=0),
                name="experiment_margin_positive",
            ),
            models.CheckConstraint(
                condition=models.Q(cap_quantile__isnull=True)
                | (models.Q(cap_quantile__gt=0.5) & models.Q(cap_quantile__lt=1)),
                name="experiment_cap_quantile_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.experiment_id}:{self.metric_id}:{self.role}"


class AnalysisRun(models.Model):
    """One analysis of an experiment: the sufficient statistics it used and the result JSON.

    ``result`` has the shape documented in CONTRACTS.md (units, srm, health, metrics, decision);
    runbook gates and the UI read it.
    """

    class Source(models.TextChoices):
        DATABASE = "database", "In-database aggregate"
        WAREHOUSE = "warehouse", "Warehouse sufficient statistics"

    class Trigger(models.TextChoices):
        ON_DEMAND = "on_demand", "On demand"
        SCHEDULED = "scheduled", "Scheduled task"
        GATE = "gate", "Runbook gate"

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="analyses")
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.DATABASE)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.ON_DEMAND)
    as_of = models.DateField(help_text="Last metric day included")
    window_start = models.DateField()
    window_end = models.DateField()
    statistics = models.JSONField(
        default=list,
        blank=True,
        help_text="The per-arm × population × exposure-day sufficient statistics used",
    )
    result = models.JSONField(default=dict)
    verdict = models.CharField(max_length=10, blank=True)
    query_ms = models.FloatField(null=True, blank=True)
    analysis_ms = models.FloatField(null=True, blank=True)
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        get_latest_by = "created_at"
        indexes = [models.Index(fields=["experiment", "-created_at"], name="analysis_experiment_recent")]

    def __str__(self) -> str:
        return f"{self.experiment_id} @ {self.as_of} ({self.verdict or 'n/a'})"


class AnalysisRollup(models.Model):
    """Each exposed-or-not unit's pivoted metric totals over the closed days already folded.

    A cache for the in-database analysis on PostgreSQL (experiments/rollups.py): the table named
    ``table_name`` has one row per unit with one column per pivot column of the design, summed
    (or maxed, for proportions) over the days in ``folded``. ``folded`` maps each folded day to
    the number of transactions that had written it (:class:`MetricDayWrite`) when it was folded;
    the analysis reads the rollup only while every one of those numbers is unchanged, and otherwise reads the
    rows as if there were no rollup. ``signature`` identifies the design the columns were built
    for: a changed design, window or pre-period rebuilds the table.
    """

    experiment = models.OneToOneField(Experiment, on_delete=models.CASCADE, related_name="rollup")
    signature = models.CharField(max_length=64)
    table_name = models.CharField(max_length=63, unique=True)
    folded = models.JSONField(default=dict, blank=True, help_text="{ISO day: writers of the day when folded}")
    units = models.PositiveIntegerField(default=0)
    rebuilds = models.PositiveIntegerField(default=0)
    fold_ms = models.FloatField(null=True, blank=True, help_text="Duration of the last fold")
    folded_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.experiment_id}: {len(self.folded)} days"


class WarehouseStatistics(models.Model):
    """Sufficient statistics computed by a warehouse with the exported SQL, uploaded per client batch.

    ``rows`` are the rows the exported query returns (one per arm × population × exposure day);
    they add, so the analysis sums them exactly as it sums the in-database rows.
    """

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="warehouse_uploads")
    client_batch_id = models.CharField(max_length=128)
    as_of = models.DateField()
    rows = models.JSONField()
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["experiment", "client_batch_id"], name="warehouse_stats_batch_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.experiment_id}:{self.client_batch_id}"


class Decision(models.Model):
    """A recorded launch decision with the numbers that made it and a frozen readout snapshot."""

    class Verdict(models.TextChoices):
        SHIP = "ship", "Ship (launch-neutral or better)"
        HOLD = "hold", "Hold"
        ROLLBACK = "rollback", "Roll back"
        EXTEND = "extend", "Extend (underpowered)"

    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="decisions")
    analysis = models.ForeignKey(AnalysisRun, on_delete=models.PROTECT, related_name="decisions")
    verdict = models.CharField(max_length=10, choices=Verdict.choices)
    recommended = models.CharField(
        max_length=10, choices=Verdict.choices, help_text="What the analysis recommended"
    )
    reasons = models.JSONField(default=list)
    blocking = models.JSONField(default=list)
    days_needed = models.FloatField(null=True, blank=True)
    numbers = models.JSONField(default=dict, help_text="The analysis result the decision rests on")
    readout = models.JSONField(default=dict, help_text="Frozen readout data (design, numbers, chart series)")
    readout_html = models.TextField(help_text="Frozen self-contained HTML readout at decision time")
    note = models.TextField(blank=True)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    decided_by_label = models.CharField(max_length=150)
    decided_at = models.DateTimeField()

    class Meta:
        ordering = ["-decided_at", "-id"]

    def __str__(self) -> str:
        return f"{self.experiment_id}: {self.verdict}"
