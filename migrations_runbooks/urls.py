"""Runbook API routes (mounted at the root by controlplane.urls)."""

from django.urls import path

from migrations_runbooks import apis

R = "api/v1/runbooks/<int:runbook_id>/"

urlpatterns = [
    path("api/v1/runbooks/", apis.RunbookListApi.as_view(), name="runbook-list"),
    path("api/v1/runbooks/tick/", apis.RampsTickApi.as_view(), name="runbook-tick"),
    path(R, apis.RunbookDetailApi.as_view(), name="runbook-detail"),
    path(R + "steps/", apis.RunbookStepsApi.as_view(), name="runbook-steps"),
    path(R + "schedule/", apis.RunbookScheduleApi.as_view(), name="runbook-schedule"),
    path(R + "start/", apis.RunbookStartApi.as_view(), name="runbook-start"),
    path(R + "pause/", apis.RunbookPauseApi.as_view(), name="runbook-pause"),
    path(R + "resume/", apis.RunbookResumeApi.as_view(), name="runbook-resume"),
    path(R + "jump/", apis.RunbookJumpApi.as_view(), name="runbook-jump"),
    path(R + "rollback/", apis.RunbookRollbackApi.as_view(), name="runbook-rollback"),
    path(R + "abort/", apis.RunbookAbortApi.as_view(), name="runbook-abort"),
    path(R + "promote/", apis.RunbookPromoteApi.as_view(), name="runbook-promote"),
    path(R + "approve/", apis.RunbookApproveApi.as_view(), name="runbook-approve"),
    path(R + "reject/", apis.RunbookRejectApi.as_view(), name="runbook-reject"),
    path(R + "evaluations/", apis.RunbookEvaluationsApi.as_view(), name="runbook-evaluations"),
    path(R + "capacity/", apis.RunbookCapacityApi.as_view(), name="runbook-capacity"),
    path("api/v1/runbook-templates/", apis.RunbookTemplateListApi.as_view(), name="runbook-template-list"),
    path(
        "api/v1/runbook-notifications/", apis.NotificationListApi.as_view(), name="runbook-notification-list"
    ),
    path("api/v1/runbook-webhooks/", apis.WebhookListApi.as_view(), name="runbook-webhook-list"),
    path("api/v1/capacity/config/", apis.CapacityConfigApi.as_view(), name="capacity-config"),
    path("api/v1/program/", apis.ProgramApi.as_view(), name="program"),
]
