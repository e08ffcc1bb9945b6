"""Serving logs: per-request latency samples, counterfactual impression logs and shadow parity.

Serving owns the logs a rank request (or a serving fleet's ingested batch) writes: exposures (the
first time a unit is served under an allocation salt), latency samples, served impressions, shadow
comparisons, and the ingest batches that make re-sent batches idempotent. Rows are narrow and
append-only. The analysis (``experiments``) reads them through ``controlplane.serving.selectors``.
"""

from __future__ import annotations

from django.db import models


class LatencySample(models.Model):
    """One served ranking request: which stack served which unit in which arm, and how long it took.

    ``ms`` is the request's serving latency as the client sees it (router + stack, plus injected
    latency from simulation effects); the analysis compares its p50/p99 per arm as the quantile
    metric ``latency_p99``. ``status`` counts fallbacks: the router served ``stack`` because
    ``fallback_from`` failed or exceeded its timeout.
    """

    class Status(models.TextChoices):
        OK = "ok", "Served by the assigned stack"
        FALLBACK = "fallback", "Served by the fallback stack"
        ERROR = "error", "Failed (no stack could serve)"

    class Source(models.TextChoices):
        ROUTER = "router", "Control-plane router"
        INGESTED = "ingested", "Ingested from a serving fleet"

    surface = models.ForeignKey("controlplane.Surface", on_delete=models.CASCADE, related_name="+")
    request_id = models.CharField(max_length=64, blank=True)
    unit_id = models.CharField(max_length=128)
    arm = models.CharField(max_length=10)
    population = models.CharField(max_length=20, blank=True)
    stack = models.CharField(max_length=100, help_text="Label of the stack that produced the response")
    salt = models.CharField(max_length=64, blank=True, help_text="Allocation salt the arm was assigned under")
    allocation_version = models.PositiveIntegerField(null=True, blank=True)
    ts = models.DateTimeField()
    ms = models.FloatField(help_text="Serving latency of the request, milliseconds")
    stack_ms = models.FloatField(null=True, blank=True, help_text="Time inside the stack, milliseconds")
    router_ms = models.FloatField(null=True, blank=True, help_text="Assignment + logging, milliseconds")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OK)
    fallback_from = models.CharField(max_length=100, blank=True)
    error = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.ROUTER)
    batch = models.ForeignKey(
        "serving.IngestBatch", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        indexes = [
            models.Index(fields=["surface", "ts"], name="latency_surface_ts"),
            models.Index(fields=["surface", "stack", "ts"], name="latency_surface_stack_ts"),
        ]

    def __str__(self) -> str:
        return f"{self.stack} {self.unit_id} {self.ms:.1f} ms"


class ServedImpression(models.Model):
    """Counterfactual log: one item of a served list with its position, score and propensity.

    ``propensity`` is the probability that the logging policy put this post at this position
    (1.0 for a deterministic list, (1-ε)·1[own rank] + ε/K inside an explored top-K); it is what
    makes inverse-propensity (IPS) evaluation of another stack possible. ``reward`` is filled by
    the feedback path (1 when the user engaged, 0 when shown without engagement, null unknown).
    """

    surface = models.ForeignKey("controlplane.Surface", on_delete=models.CASCADE, related_name="+")
    request_id = models.CharField(max_length=64)
    unit_id = models.CharField(max_length=128)
    stack = models.CharField(max_length=100)
    arm = models.CharField(max_length=10)
    post_id = models.BigIntegerField()
    position = models.PositiveIntegerField()
    score = models.FloatField()
    propensity = models.FloatField(null=True, blank=True)
    explored = models.BooleanField(default=False)
    reward = models.FloatField(null=True, blank=True)
    served_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["surface", "served_at"], name="impression_surface_time"),
            models.Index(fields=["request_id"], name="impression_request"),
        ]

    def __str__(self) -> str:
        return f"{self.request_id}#{self.position}: {self.post_id}"


class ShadowComparison(models.Model):
    """Per-request ranking parity between the live stack and the shadow stack (logged only)."""

    class Status(models.TextChoices):
        OK = "ok", "Compared"
        ERROR = "error", "Shadow stack raised"
        TIMEOUT = "timeout", "Shadow stack exceeded its timeout"

    surface = models.ForeignKey("controlplane.Surface", on_delete=models.CASCADE, related_name="+")
    request_id = models.CharField(max_length=64, unique=True)
    unit_id = models.CharField(max_length=128)
    live_stack = models.CharField(max_length=100)
    shadow_stack = models.CharField(max_length=100)
    day = models.DateField()
    requested_at = models.DateTimeField()
    status = models.CharField(max_length=8, choices=Status.choices)
    error = models.CharField(max_length=300, blank=True)
    overlap_10 = models.FloatField(null=True, blank=True)
    overlap_50 = models.FloatField(null=True, blank=True)
    rbo = models.FloatField(null=True, blank=True, help_text="Extrapolated rank-biased overlap, p = 0.9")
    kendall_tau = models.FloatField(null=True, blank=True, help_text="Kendall τ-b on the shared items")
    shared_items = models.PositiveIntegerField(default=0)
    calibration_diff = models.FloatField(
        null=True, blank=True, help_text="Mean shadow score − mean live score on the shared items"
    )
    live_ms = models.FloatField()
    shadow_ms = models.FloatField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["surface", "shadow_stack", "day"], name="shadow_surface_stack_day")]

    def __str__(self) -> str:
        return f"{self.request_id} {self.live_stack} vs {self.shadow_stack}: {self.status}"


class ShadowParityDaily(models.Model):
    """Shadow parity aggregated per surface, shadow stack and day (for the UI and ramp gates)."""

    surface = models.ForeignKey("controlplane.Surface", on_delete=models.CASCADE, related_name="+")
    shadow_stack = models.CharField(max_length=100)
    day = models.DateField()
    n = models.PositiveIntegerField(help_text="Shadowed requests (compared + failed)")
    compared = models.PositiveIntegerField()
    errors = models.PositiveIntegerField()
    timeouts = models.PositiveIntegerField()
    overlap_10 = models.FloatField(null=True, blank=True)
    overlap_50 = models.FloatField(null=True, blank=True)
    rbo = models.FloatField(null=True, blank=True)
    kendall_tau = models.FloatField(null=True, blank=True)
    calibration_diff = models.FloatField(null=True, blank=True)
    live_p50_ms = models.FloatField(null=True, blank=True)
    live_p99_ms = models.FloatField(null=True, blank=True)
    shadow_p50_ms = models.FloatField(null=True, blank=True)
    shadow_p99_ms = models.FloatField(null=True, blank=True)
    computed_at = models.DateTimeField()

    class Meta:
        ordering = ["surface", "shadow_stack", "day"]
        constraints = [
            models.UniqueConstraint(fields=["surface", "shadow_stack", "day"], name="shadow_daily_unique")
        ]

    def __str__(self) -> str:
        return f"{self.surface_id} {self.shadow_stack} {self.day}"


class IngestBatch(models.Model):
    """A client batch: its id makes a re-sent batch idempotent; its errors name the bad rows."""

    class Kind(models.TextChoices):
        METRIC_ROWS = "metric_rows", "Metric rows"
        EVENTS = "events", "Engagement events"
        EXPOSURES = "exposures", "Exposures"
        LATENCY = "latency", "Latency samples"

    class Status(models.TextChoices):
        ACCEPTED = "accepted", "Accepted"
        PARTIAL = "partial", "Partially accepted"
        REJECTED = "rejected", "Rejected"

    client_batch_id = models.CharField(max_length=128)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=10, choices=Status.choices)
    received = models.PositiveIntegerField()
    accepted = models.PositiveIntegerField()
    rejected = models.PositiveIntegerField()
    errors = models.JSONField(default=list, blank=True, help_text="[{row, field, message}] for rejected rows")
    created_by = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = "experiments_ingestbatch"  # the table predates the layering; state-only move
        constraints = [models.UniqueConstraint(fields=["kind", "client_batch_id"], name="ingest_batch_once")]

    def __str__(self) -> str:
        return f"{self.kind}:{self.client_batch_id}"


class Exposure(models.Model):
    """The first time a unit was served under an allocation salt on a surface (one row per unit)."""

    surface = models.ForeignKey("controlplane.Surface", on_delete=models.CASCADE, related_name="exposures")
    salt = models.CharField(
        max_length=64, help_text="Allocation salt: identifies the experiment's assignment"
    )
    unit_id = models.CharField(max_length=128)
    arm = models.CharField(max_length=10)  # holdout / control / treatment
    population = models.CharField(max_length=20)  # content_first / interest_first
    stack = models.CharField(max_length=100, help_text="Stack label that served the first request")
    allocation_version = models.PositiveIntegerField()
    # The unit's assignment bucket under the salt, in [0, 10000). The analysis uses it to keep only
    # units whose arm never changed since their first exposure (a monotone ramp moves control
    # buckets into treatment; see experiments/analysis/, "Crossover"). Null for exposures
    # recorded before buckets were stored: those are kept as first exposed.
    bucket = models.PositiveSmallIntegerField(null=True, blank=True)
    first_exposed_at = models.DateTimeField()

    class Meta:
        db_table = "experiments_exposure"  # the table predates the layering; state-only move
        constraints = [
            models.UniqueConstraint(fields=["surface", "salt", "unit_id"], name="exposure_unit_once")
        ]
        indexes = [models.Index(fields=["surface", "salt", "arm"], name="exposure_arm_idx")]

    def __str__(self) -> str:
        return f"{self.surface_id}/{self.unit_id}:{self.arm}"
