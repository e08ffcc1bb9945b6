"""Experiments API (api/v1/experiments/...), the ingestion API (api/v1/ingest/...) and the readout page;
mounted at the root."""

from django.urls import path

from experiments import apis, ingestion_apis, views

urlpatterns = [
    path("api/v1/experiments/", apis.ExperimentListApi.as_view(), name="experiment-list"),
    path(
        "api/v1/experiments/standard/", apis.ExperimentStandardCreateApi.as_view(), name="experiment-standard"
    ),
    path("api/v1/experiments/<slug:key>/", apis.ExperimentDetailApi.as_view(), name="experiment-detail"),
    path("api/v1/experiments/<slug:key>/start/", apis.ExperimentStartApi.as_view(), name="experiment-start"),
    path("api/v1/experiments/<slug:key>/stop/", apis.ExperimentStopApi.as_view(), name="experiment-stop"),
    path(
        "api/v1/experiments/<slug:key>/analyses/", apis.AnalysisListApi.as_view(), name="experiment-analyses"
    ),
    path(
        "api/v1/experiments/<slug:key>/analyses/<int:analysis_id>/",
        apis.AnalysisDetailApi.as_view(),
        name="experiment-analysis",
    ),
    path("api/v1/experiments/<slug:key>/results/", apis.ResultsApi.as_view(), name="experiment-results"),
    path(
        "api/v1/experiments/<slug:key>/decisions/",
        apis.DecisionListApi.as_view(),
        name="experiment-decisions",
    ),
    path(
        "api/v1/experiments/<slug:key>/decisions/<int:decision_id>/readout.<str:fmt>",
        apis.DecisionReadoutApi.as_view(),
        name="experiment-decision-readout",
    ),
    path(
        "api/v1/experiments/<slug:key>/readout.<str:fmt>",
        apis.ReadoutDownloadApi.as_view(),
        name="experiment-readout-download",
    ),
    path(
        "api/v1/experiments/<slug:key>/warehouse/sql/",
        apis.WarehouseSqlApi.as_view(),
        name="experiment-warehouse-sql",
    ),
    path(
        "api/v1/experiments/<slug:key>/warehouse/statistics/",
        apis.WarehouseStatisticsApi.as_view(),
        name="experiment-warehouse-statistics",
    ),
    path(
        "api/v1/ingest/metric-rows/", ingestion_apis.IngestMetricRowsApi.as_view(), name="ingest-metric-rows"
    ),
    path("api/v1/ingest/events/", ingestion_apis.IngestEventsApi.as_view(), name="ingest-events"),
    path("api/v1/ingest/exposures/", ingestion_apis.IngestExposuresApi.as_view(), name="ingest-exposures"),
    path("api/v1/ingest/latency/", ingestion_apis.IngestLatencyApi.as_view(), name="ingest-latency"),
    path(
        "api/v1/ingest/batches/<slug:kind>/<str:client_batch_id>/",
        ingestion_apis.IngestBatchDetailApi.as_view(),
        name="ingest-batch-detail",
    ),
    path("experiments/<slug:key>/readout/", views.experiment_readout, name="experiment-readout"),
]
