"""Pages of the web UI, mounted at the site root by controlplane.urls."""

from django.urls import path

from controlplane.web import assets, experiment_views, runbook_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("stacks/", views.stack_list, name="web-stacks"),
    path("surfaces/<slug:surface_key>/", views.surface_detail, name="web-surface-detail"),
    path("audit/", views.audit_log, name="web-audit"),
    path("runbooks/", runbook_views.runbook_list, name="web-runbooks"),
    path("runbooks/<int:runbook_id>/", runbook_views.runbook_detail, name="web-runbook-detail"),
    path("runbooks/<int:runbook_id>/capacity/", runbook_views.runbook_capacity, name="web-runbook-capacity"),
    path("runbooks/<int:runbook_id>/<slug:action>/", runbook_views.runbook_action, name="web-runbook-action"),
    path("experiments/", experiment_views.experiment_list, name="web-experiments"),
    path("shadow/", experiment_views.shadow_parity, name="web-shadow-parity"),
    path("assets/plotly-<str:plotly_ver>.min.js", assets.plotly_js, name="web-plotly-js"),
]
