"""Core registry: ranking stacks, surfaces and who serves them, versioned allocations, audit log."""

from __future__ import annotations

from django.conf import settings
from django.db import models


class Population(models.TextChoices):
    """Legacy populations: which legacy stack a user is served by today."""

    CONTENT_FIRST = "content_first", "Content-first users"
    INTEREST_FIRST = "interest_first", "Interest-first users"


class RankingStack(models.Model):
    class Kind(models.TextChoices):
        CONTENT_FIRST = "content_first", "Content-first (legacy)"
        INTEREST_FIRST = "interest_first", "Interest-first (legacy)"
        UNIFIED_MTL = "unified_mtl", "Unified multi-task"

    class Device(models.TextChoices):
        CPU = "cpu", "CPU"
        GPU = "gpu", "GPU"

    class Status(models.TextChoices):
        CANDIDATE = "candidate", "Candidate"
        ACTIVE = "active", "Active"
        RETIRED = "retired", "Retired"

    key = models.SlugField(max_length=64, help_text="Stack family, e.g. unified-mtl")
    version = models.CharField(max_length=32)
    kind = models.CharField(max_length=20, choices=Kind.choices)
    device = models.CharField(max_length=8, choices=Device.choices, default=Device.CPU)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.ACTIVE)
    latency_slo_ms = models.FloatField(help_text="p99 latency budget per request, milliseconds")
    throughput_per_replica = models.FloatField(
        null=True, blank=True, help_text="Measured requests/s one replica sustains within the p99 budget"
    )
    p50_latency_ms = models.FloatField(null=True, blank=True)
    p99_latency_ms = models.FloatField(null=True, blank=True)
    host_cpu_ms_per_request = models.FloatField(
        null=True, blank=True, help_text="CPU time per request outside the accelerator (retrieval, pass 0/2)"
    )
    offline_metrics = models.JSONField(default=dict, blank=True)
    artifact = models.JSONField(
        default=dict, blank=True, help_text="uri, sha256, config of the trained model"
    )
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key", "version"]
        constraints = [
            models.UniqueConstraint(fields=["key", "version"], name="stack_key_version_unique"),
            models.CheckConstraint(condition=models.Q(latency_slo_ms__gt=0), name="stack_slo_positive"),
        ]

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        return f"{self.key}@{self.version}"


class Surface(models.Model):
    class Status(models.TextChoices):
        LEGACY = "legacy", "Legacy"
        MIGRATING = "migrating", "Migrating"
        UNIFIED = "unified", "Unified"

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    peak_qps = models.FloatField(help_text="Peak ranking requests per second")
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.LEGACY)
    production_stack = models.ForeignKey(
        RankingStack,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="production_for",
        help_text="Set on promotion: the stack that serves every population",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["key"]
        constraints = [models.CheckConstraint(condition=models.Q(peak_qps__gte=0), name="surface_qps_nonneg")]

    def __str__(self) -> str:
        return self.key


class SurfacePopulation(models.Model):
    """Which legacy stack serves which legacy population of a surface today, and its share of units."""

    surface = models.ForeignKey(Surface, on_delete=models.CASCADE, related_name="populations")
    population = models.CharField(max_length=20, choices=Population.choices)
    stack = models.ForeignKey(RankingStack, on_delete=models.PROTECT, related_name="serves")
    share_bp = models.PositiveIntegerField(help_text="Share of the surface's units, basis points of 10000")

    class Meta:
        ordering = ["surface", "population"]
        constraints = [
            models.UniqueConstraint(fields=["surface", "population"], name="surface_population_unique"),
            models.CheckConstraint(condition=models.Q(share_bp__lte=10000), name="population_share_le_10000"),
        ]

    def __str__(self) -> str:
        return f"{self.surface.key}/{self.population} → {self.stack.label}"


class Allocation(models.Model):
    """An immutable version of a surface's traffic allocation; the highest version is current."""

    surface = models.ForeignKey(Surface, on_delete=models.CASCADE, related_name="allocations")
    version = models.PositiveIntegerField()
    salt = models.CharField(max_length=64)
    holdout_bp = models.PositiveIntegerField(default=0)
    treatment_stack = models.ForeignKey(
        RankingStack, null=True, blank=True, on_delete=models.PROTECT, related_name="treatment_allocations"
    )
    treatment_bp = models.PositiveIntegerField(default=0)
    shadow_stack = models.ForeignKey(
        RankingStack, null=True, blank=True, on_delete=models.PROTECT, related_name="shadow_allocations"
    )
    shadow_bp = models.PositiveIntegerField(default=0, help_text="Share of requests also ranked in shadow")
    populations = models.JSONField(help_text="Snapshot of [{population, stack, bp}] at this version")
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["surface", "-version"]
        get_latest_by = "version"
        constraints = [
            models.UniqueConstraint(fields=["surface", "version"], name="allocation_surface_version_unique"),
            models.CheckConstraint(
                condition=models.Q(holdout_bp__lte=10000)
                & models.Q(treatment_bp__lte=10000)
                & models.Q(shadow_bp__lte=10000),
                name="allocation_bp_in_range",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.surface.key} v{self.version}"


class AuditEvent(models.Model):
    """Append-only record of every state change: who, what, before/after, why, when."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    actor_label = models.CharField(max_length=150, help_text="Username, or system:<component> for jobs")
    verb = models.CharField(max_length=64, db_index=True)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    target_repr = models.CharField(max_length=200)
    surface_key = models.CharField(max_length=64, blank=True, db_index=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="audit_target_idx")]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.actor_label} {self.verb} {self.target_repr}"

    def save(self, *args: object, **kwargs: object) -> None:
        # Append-only is an invariant of the table, not business logic: refuse edits anywhere.
        if self.pk is not None and not self._state.adding:
            raise PermissionError("audit events are append-only")
        super().save(*args, **kwargs)  # type: ignore[arg-type]

    def delete(self, *args: object, **kwargs: object) -> tuple[int, dict[str, int]]:
        raise PermissionError("audit events are append-only")
