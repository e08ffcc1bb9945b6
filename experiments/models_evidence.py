"""Evidence tables the analysis owns: metric definitions and per-unit, per-day metric rows.

Exposures and ingest batches are serving's logs (``controlplane.serving.models``); the analysis reads
them through serving's selectors.

These are written by the serving path and by ingestion (bulk, validated, idempotent per client
batch) and read by the analysis as one aggregate query per experiment. Rows are narrow and
append-only; the sufficient statistics are computed where the rows live.
"""

from __future__ import annotations

from django.db import models


class MetricDefinition(models.Model):
    """A per-unit, per-day metric that can be ingested, or a ratio / quantile built from them."""

    class Kind(models.TextChoices):
        MEAN = "mean", "Mean per unit"
        PROPORTION = "proportion", "Proportion of units (0/1)"
        RATIO = "ratio", "Ratio of sums (delta method)"
        QUANTILE = "quantile", "Quantile of samples (e.g. p99 latency)"

    class Direction(models.TextChoices):
        HIGHER = "higher", "Higher is better"
        LOWER = "lower", "Lower is better"

    key = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=12, choices=Kind.choices, default=Kind.MEAN)
    direction = models.CharField(max_length=8, choices=Direction.choices, default=Direction.HIGHER)
    # Ratio metrics: Σ numerator / Σ denominator over units, both ingested metric keys.
    numerator = models.SlugField(max_length=64, blank=True)
    denominator = models.SlugField(max_length=64, blank=True)
    # Quantile metrics: the quantile (0.99 for p99) of latency samples.
    quantile = models.FloatField(null=True, blank=True)
    ingestible = models.BooleanField(default=True, help_text="Rows of this key may be ingested directly")
    description = models.TextField(blank=True)

    class Meta:
        ordering = ["key"]

    def __str__(self) -> str:
        return self.key


class MetricObservation(models.Model):
    """One metric value of one unit on one day (the warehouse hand-off grain).

    The table is written in bulk (millions of rows per batch, PostgreSQL ``COPY``), so it carries
    only what its readers need: the primary key and one index, (surface, metric, day), which the
    analysis's range scan uses (experiments/aggregation.py); it then hash-aggregates by unit.

    **No database foreign-key constraints** (``db_constraint=False``) on ``surface`` and
    ``batch``. Integrity is guaranteed by the only writer, the ingestion service
    (experiments/ingestion.py): it resolves the surface and creates the :class:`IngestBatch` in the
    same transaction as the rows it copies, so every row's references exist when it commits.
    Deletes still follow ``on_delete`` (Django collects the rows). The constraints cost two
    deferred trigger checks per row at commit: 6.6 s per 1M rows, the larger part of ingestion
    time. No single-column indexes either (``db_index=False``; a ``SlugField`` would add two
    for ``metric``) and none on (surface, unit_id) or batch: no query reads metric rows by unit or
    by batch, and each index adds about 1-2 s of server time per 1M rows copied (bench/serving.py).
    Removing a batch (nothing in the code does) sets its rows' batch to null with a table scan.
    On PostgreSQL the id sequence caches 1000 values per session (migration 0004).
    """

    surface = models.ForeignKey(
        "controlplane.Surface",
        on_delete=models.CASCADE,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    unit_id = models.CharField(max_length=128)
    day = models.DateField()
    metric = models.SlugField(max_length=64, db_index=False)
    value = models.FloatField()
    batch = models.ForeignKey(
        "serving.IngestBatch",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )

    class Meta:
        indexes = [models.Index(fields=["surface", "metric", "day"], name="metric_obs_surface_metric_day")]

    def __str__(self) -> str:
        return f"{self.unit_id} {self.day} {self.metric}={self.value}"


class MetricDayWrite(models.Model):
    """One transaction that wrote (inserted, updated or deleted) metric rows of a surface and day.

    Recorded by statement-level triggers on the metric table (PostgreSQL, migration 0005), so
    every writer counts — the ingestion service, COPY, a bulk_create, a DELETE — in the same
    transaction as its rows, and a rolled-back write leaves no trace. Rows are never removed, so
    "the number of writers of a day is what it was" means "no row of that day changed": the
    analysis rollups (experiments/rollups.py) use it to know whether a day they folded still holds
    exactly the rows they folded. One row per transaction, not a counter bumped per statement: a
    transaction writing a day in many statements inserts once (``ON CONFLICT DO NOTHING``), where
    updating one counter row per statement would grow a chain of row versions and slow every
    later update of that transaction. SQLite has no rollups and no triggers here; it stays empty.
    """

    surface = models.ForeignKey(
        "controlplane.Surface",
        on_delete=models.CASCADE,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    day = models.DateField()
    txid = models.BigIntegerField(help_text="txid_current() of the writing transaction")

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["surface", "day", "txid"], name="metric_day_write_once")
        ]

    def __str__(self) -> str:
        return f"{self.surface_id}:{self.day} by {self.txid}"
