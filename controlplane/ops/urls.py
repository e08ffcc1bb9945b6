from django.urls import path

from controlplane.ops import health, metrics

urlpatterns = [
    path("metrics", metrics.metrics_view, name="metrics"),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.ReadinessView.as_view(), name="readyz"),
]
