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
    path("api/v1/ingest/metric-rows/", apis.IngestMetricRowsApi.as_view(), name="ingest-metric-rows"),
    path("api/v1/ingest/events/", apis.IngestEventsApi.as_view(), name="ingest-events"),
    path("api/v1/ingest/exposures/", apis.IngestExposuresApi.as_view(), name="ingest-exposures"),
    path("api/v1/ingest/latency/", apis.IngestLatencyApi.as_view(), name="ingest-latency"),
    path(
        "api/v1/ingest/batches/<slug:kind>/<str:client_batch_id>/",
        apis.IngestBatchDetailApi.as_view(),
        name="ingest-batch-detail",
    ),
]
