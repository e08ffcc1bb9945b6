"""Read-only admin: runbooks change only through the services (which audit)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin

from migrations_runbooks.models import (
    Approval,
    CapacityConfig,
    GateResult,
    Milestone,
    Notification,
    RampStep,
    Runbook,
    RunbookTemplate,
    StepEvaluation,
    WebhookEndpoint,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


class RampStepInline(admin.TabularInline):
    model = RampStep
    extra = 0
    can_delete = False
    fields = (
        "index",
        "name",
        "treatment_bp",
        "shadow_bp",
        "min_duration",
        "min_units",
        "needs_approval",
        "started_at",
    )
    readonly_fields = fields

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Runbook)
class RunbookAdmin(ReadOnlyAdmin):
    list_display = ["id", "surface", "name", "status", "current_step", "next_check_at", "milestone"]
    list_filter = ["status", "surface", "milestone"]
    inlines = [RampStepInline]


class GateResultInline(admin.TabularInline):
    model = GateResult
    extra = 0
    can_delete = False
    fields = ("gate", "subject", "outcome", "value", "threshold", "comparator", "reason")
    readonly_fields = fields

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(StepEvaluation)
class StepEvaluationAdmin(ReadOnlyAdmin):
    list_display = ["runbook", "step_index", "evaluated_at", "outcome", "decision"]
    list_filter = ["outcome"]
    inlines = [GateResultInline]


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = [
        "runbook",
        "kind",
        "step_index",
        "status",
        "requested_by_label",
        "decided_by",
        "decided_at",
    ]
    list_filter = ["status", "kind"]


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "event",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "created_at",
    ]
    list_filter = ["status", "event"]


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ReadOnlyAdmin):
    list_display = ["name", "url", "events", "active"]
    exclude = ["secret"]


for model in (RunbookTemplate, Milestone, CapacityConfig):
    admin.site.register(model, ReadOnlyAdmin)
