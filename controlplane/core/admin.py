"""Read-only admin: every change goes through the services (which audit), never through admin forms."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from controlplane.core.models import Allocation, AuditEvent, RankingStack, Surface, SurfacePopulation


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(RankingStack)
class RankingStackAdmin(ReadOnlyAdmin):
    list_display = [
        "label",
        "kind",
        "device",
        "status",
        "latency_slo_ms",
        "throughput_per_replica",
        "p99_latency_ms",
    ]
    list_filter = ["kind", "device", "status"]
    search_fields = ["key", "version"]


class SurfacePopulationInline(admin.TabularInline):
    model = SurfacePopulation
    extra = 0
    can_delete = False

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Surface)
class SurfaceAdmin(ReadOnlyAdmin):
    list_display = ["key", "name", "peak_qps", "status", "production_stack"]
    inlines = [SurfacePopulationInline]


@admin.register(Allocation)
class AllocationAdmin(ReadOnlyAdmin):
    list_display = [
        "surface",
        "version",
        "treatment_stack",
        "treatment_bp",
        "shadow_stack",
        "shadow_bp",
        "holdout_bp",
        "created_at",
    ]
    list_filter = ["surface"]


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "actor_label", "verb", "target_repr", "surface_key", "reason"]
    list_filter = ["verb", "surface_key"]
    search_fields = ["actor_label", "verb", "target_repr", "reason"]
