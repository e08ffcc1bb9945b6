"""Read-only admin for the serving logs (they are written by the router and ingestion only)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from controlplane.serving.models import LatencySample, ServedImpression, ShadowComparison, ShadowParityDaily


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(LatencySample)
class LatencySampleAdmin(ReadOnlyAdmin):
    list_display = ("ts", "surface", "stack", "arm", "unit_id", "ms", "status", "source")
    list_filter = ("surface", "stack", "arm", "status", "source")
    search_fields = ("unit_id", "request_id")


@admin.register(ServedImpression)
class ServedImpressionAdmin(ReadOnlyAdmin):
    list_display = (
        "served_at",
        "surface",
        "stack",
        "request_id",
        "position",
        "post_id",
        "score",
        "propensity",
    )
    list_filter = ("surface", "stack", "explored")
    search_fields = ("request_id", "unit_id")


@admin.register(ShadowComparison)
class ShadowComparisonAdmin(ReadOnlyAdmin):
    list_display = ("requested_at", "surface", "live_stack", "shadow_stack", "status", "overlap_10", "rbo")
    list_filter = ("surface", "shadow_stack", "status")


@admin.register(ShadowParityDaily)
class ShadowParityDailyAdmin(ReadOnlyAdmin):
    list_display = (
        "day",
        "surface",
        "shadow_stack",
        "n",
        "overlap_10",
        "rbo",
        "kendall_tau",
        "shadow_p99_ms",
    )
    list_filter = ("surface", "shadow_stack")
