"""Trained ranking-stack artifacts linked to the control plane's stack registry."""

from __future__ import annotations

from django.db import models

from controlplane.core.models import RankingStack


class TrainedArtifact(models.Model):
    """One trained artifact (weights + config + metrics, by sha256) behind a registered stack version.

    The artifact files live on disk (``path``); this row is what the registry knows about them:
    the checksum the serving fleet must verify, the training config, the offline report and, once
    benchmarked, the measured serving figures.
    """

    stack = models.ForeignKey(RankingStack, on_delete=models.PROTECT, related_name="trained_artifacts")
    kind = models.CharField(max_length=20, choices=RankingStack.Kind.choices)
    world = models.CharField(max_length=32, help_text="Simulated world the stack was trained in")
    path = models.CharField(max_length=500, help_text="Artifact directory (weights.pt, config.json, …)")
    sha256 = models.CharField(max_length=64, help_text="sha256 of weights.pt")
    engine_stack_key = models.CharField(max_length=80, help_text="Key the engine stamps on rank results")
    files = models.JSONField(default=dict, help_text="file name → sha256, from the manifest")
    config = models.JSONField(default=dict)
    metrics = models.JSONField(default=dict)
    bench = models.JSONField(default=dict, blank=True, help_text="Measured serving figures, if benchmarked")
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["stack", "sha256"], name="artifact_stack_sha_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.kind}:{self.sha256[:12]} → {self.stack.label}"
