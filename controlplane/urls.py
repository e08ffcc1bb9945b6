"""Root URLs. Each app that has pages or APIs ships its own ``urls.py`` and is mounted here."""

from importlib.util import find_spec

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from controlplane.core import apis

api_v1 = [
    path("stacks/", apis.StackListApi.as_view(), name="stack-list"),
    path("stacks/<int:stack_id>/", apis.StackDetailApi.as_view(), name="stack-detail"),
    path("surfaces/", apis.SurfaceListApi.as_view(), name="surface-list"),
    path("surfaces/<slug:surface_key>/", apis.SurfaceDetailApi.as_view(), name="surface-detail"),
    path("surfaces/<slug:surface_key>/allocation/", apis.AllocationApi.as_view(), name="allocation"),
    path(
        "surfaces/<slug:surface_key>/allocations/",
        apis.AllocationHistoryApi.as_view(),
        name="allocation-history",
    ),
    path("config/allocations/", apis.PublishedConfigApi.as_view(), name="published-config"),
    path("audit/", apis.AuditListApi.as_view(), name="audit-list"),
]

urlpatterns = [
    path("", include("controlplane.ops.urls")),  # /metrics, /healthz, /readyz
    path("admin/", admin.site.urls),
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="api-redoc"),
]

# App URL modules, mounted at the root in this order (each defines its own api/v1/... and page paths).
for module in (
    "controlplane.serving.urls",
    "rankers.urls",
    "experiments.urls",
    "migrations_runbooks.urls",
    "controlplane.web.urls",
):
    if find_spec(module) is not None:
        urlpatterns.append(path("", include(module)))

# Login/logout (rate-limited login; templates live with the web UI).
urlpatterns.append(path("accounts/", include("controlplane.web.account_urls")))

# Unknown URLs, malformed requests and crashes under /api/ answer in the API's JSON error shape.
handler400 = "controlplane.core.errors.bad_request"
handler404 = "controlplane.core.errors.page_not_found"
handler500 = "controlplane.core.errors.server_error"
