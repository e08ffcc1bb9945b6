"""Serving URLs (mounted at the root by controlplane.urls)."""

from django.urls import path

from controlplane.serving import apis

urlpatterns = [
    path("api/v1/surfaces/<slug:surface_key>/rank", apis.SurfaceRankApi.as_view(), name="surface-rank"),
    path(
        "api/v1/surfaces/<slug:surface_key>/shadow-parity/",
        apis.ShadowParityApi.as_view(),
        name="shadow-parity",
    ),
    path(
        "api/v1/surfaces/<slug:surface_key>/serving-health/",
        apis.ServingHealthApi.as_view(),
        name="serving-health",
    ),
    path(
        "api/v1/surfaces/<slug:surface_key>/counterfactual/",
        apis.CounterfactualApi.as_view(),
        name="serving-counterfactual",
    ),
]
