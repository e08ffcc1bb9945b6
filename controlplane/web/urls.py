"""Pages of the web UI, mounted at the site root by controlplane.urls."""

from django.urls import path

from controlplane.web import assets, views

urlpatterns = [
    path("", views.home, name="home"),
    path("stacks/", views.stack_list, name="web-stacks"),
    path("surfaces/<slug:surface_key>/", views.surface_detail, name="web-surface-detail"),
    path("audit/", views.audit_log, name="web-audit"),
    path("assets/plotly-<str:plotly_ver>.min.js", assets.plotly_js, name="web-plotly-js"),
]
