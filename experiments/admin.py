"""Read-mostly admin: designs, analyses and decisions change through services (audited)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from experiments.models import AnalysisRun, Decision, Experiment, ExperimentMetric, WarehouseStatistics


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


class ExperimentMetricInline(admin.TabularInline):
    model = ExperimentMetric
    extra = 0
    can_delete = False
    readonly_fields = ["metric", "role", "direction", "margin_kind", "margin", "cuped", "position"]

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Experiment)
class ExperimentAdmin(ReadOnlyAdmin):
    list_display = ["key", "surface", "treatment_stack", "status", "window_start", "window_end", "locked_at"]
    list_filter = ["status", "surface"]
    search_fields = ["key", "name"]
    inlines = [ExperimentMetricInline]


@admin.register(AnalysisRun)
class AnalysisRunAdmin(ReadOnlyAdmin):
    list_display = [
        "experiment",
        "as_of",
        "source",
        "trigger",
        "verdict",
        "query_ms",
        "analysis_ms",
        "created_at",
    ]
    list_filter = ["verdict", "source", "trigger"]
    exclude = ["statistics"]


@admin.register(Decision)
class DecisionAdmin(ReadOnlyAdmin):
    list_display = ["experiment", "verdict", "recommended", "days_needed", "decided_by_label", "decided_at"]
    exclude = ["readout_html"]


@admin.register(WarehouseStatistics)
class WarehouseStatisticsAdmin(ReadOnlyAdmin):
    list_display = ["experiment", "client_batch_id", "as_of", "created_by", "created_at"]
    exclude = ["rows"]
