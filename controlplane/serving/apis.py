"""REST API of the serving path: the router, ingestion batches and serving read-outs."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable
from functools import partial
from typing import Any

from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.request import Empty, Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.errors import ApplicationError
from controlplane.models import Surface
from controlplane.permissions import IsServingOrOperator, IsViewer
from controlplane.serving import selectors, services
from experiments import ingestion
from experiments.models import IngestBatch


class IsServingClient(IsServingOrOperator):
    """Rank requests write exposures, so they need the serving role (a fleet) or an operator; a
    viewer only reads (issue 17: a viewer could write exposures through this endpoint)."""

    message = "You need the serving role (or operator) to send ranking requests."


class _AfterResponse(Response):
    """A response that runs callbacks once the server has sent it (WSGI ``close()``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.after: list[Callable[[], None]] = []

    def close(self) -> None:
        super().close()
        callbacks, self.after = self.after, []
        for callback in callbacks:
            callback()


class ItemOutput(serializers.Serializer):
    post_id = serializers.IntegerField()
    score = serializers.FloatField()
    position = serializers.IntegerField()
    propensity = serializers.FloatField(allow_null=True)


class RankOutput(serializers.Serializer):
    request_id = serializers.CharField()
    surface = serializers.CharField()
    unit_id = serializers.CharField()
    arm = serializers.CharField()
    population = serializers.CharField()
    stack = serializers.CharField(help_text="Label of the stack that served the items")
    assigned_stack = serializers.CharField(help_text="Label of the stack the assignment chose")
    allocation_version = serializers.IntegerField()
    items = ItemOutput(many=True)
    explored = serializers.BooleanField()
    fallback = serializers.DictField(allow_null=True)
    shadowed = serializers.BooleanField()
    timings = serializers.DictField(child=serializers.FloatField())


class SurfaceRankApi(APIView):
    permission_classes = [IsServingClient]

    class InputSerializer(serializers.Serializer):
        # Not trimmed or coerced here: the assignment library decides what a well-formed unit id is.
        unit_id = serializers.CharField(trim_whitespace=False, allow_blank=True)
        context = serializers.JSONField(required=False, default=dict)  # type: ignore[assignment]
        num_items = serializers.IntegerField(required=False, default=50)

    @extend_schema(
        operation_id="surfaces_rank",
        request=InputSerializer,
        description=(
            "Rank a feed for one unit. The surface's current allocation assigns the arm (hash of salt and "
            "unit id); the assigned stack ranks under a deadline (twice its latency SLO unless "
            "SERVING_RANK_TIMEOUT_MS is set). If it raises or times out, the surface's production stack "
            "(before promotion: the unit's legacy stack) serves instead and `fallback` says why. The first "
            "exposure per unit and allocation salt is logged; a sampled share of requests is re-ranked by "
            "the shadow stack in a background task after the response is sent."
        ),
        responses={
            200: RankOutput,
            400: OpenApiResponse(
                description="malformed unit id, context that is not an object, bad num_items"
            ),
            404: OpenApiResponse(description="unknown surface"),
            413: OpenApiResponse(description="context larger than SERVING_MAX_CONTEXT_BYTES (4096)"),
            503: OpenApiResponse(description="neither the assigned nor the fallback stack could serve"),
        },
    )
    def post(self, request: Request, surface_key: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        after: list[Callable[[], None]] = []
        result = services.rank_request(
            surface_key=surface_key,
            unit_id=data.validated_data["unit_id"],
            context=data.validated_data["context"],
            num_items=data.validated_data["num_items"],
            defer=after.append,
        )
        response = _AfterResponse(result)
        response.after.extend(after)
        return response


INGEST_DESCRIPTION = (
    "**Atomic:** a batch's accepted rows and its IngestBatch record commit in one transaction — both "
    "are stored or neither is. **Partial:** validation is per row; each bad row is rejected with an "
    "error `{row, field, message}` (row = 0-based index in the batch) and the good rows are kept "
    "(status `partial`); a batch with no good row is recorded as `rejected` (HTTP 422). "
    "**Idempotent:** `client_batch_id` is unique per kind; re-sending it returns the first result with "
    "`replayed: true` and writes nothing (a different row count under the same id is refused with 409). "
    "Rows are rejected for an unknown unit (no exposure on the surface), unknown metric or event type, "
    "negative, non-finite or too large values (beyond INGEST_MAX_ABS_VALUE, 1e12), and days/timestamps out of range. PostgreSQL writes use COPY."
)


@extend_schema_field({"type": "array", "items": {"type": "object"}})
class _RowsField(serializers.Field):
    """A JSON array of row objects, passed through unvalidated (rows are validated in bulk)."""

    def to_internal_value(self, data: Any) -> list[Any]:
        if not isinstance(data, list):
            raise serializers.ValidationError("must be a JSON array of row objects")
        return data

    def to_representation(self, value: Any) -> Any:
        return value


BatchOutput = inline_serializer(
    name="IngestBatchOutput",
    fields={
        "client_batch_id": serializers.CharField(),
        "kind": serializers.CharField(),
        "status": serializers.ChoiceField(choices=IngestBatch.Status.choices),
        "received": serializers.IntegerField(),
        "accepted": serializers.IntegerField(),
        "rejected": serializers.IntegerField(),
        "errors": serializers.ListField(child=serializers.DictField()),
        "replayed": serializers.BooleanField(),
        "rows_written": serializers.IntegerField(),
        "created_at": serializers.DateTimeField(),
    },
)


def _ingest_response(result: ingestion.IngestResult) -> Response:
    body = result.to_dict()
    code: int
    if result.replayed:
        code = status.HTTP_200_OK
    elif result.batch.status == IngestBatch.Status.REJECTED:
        code = status.HTTP_422_UNPROCESSABLE_ENTITY
    else:
        code = status.HTTP_201_CREATED
    return Response(body, status=code)


def _ingest_schema(operation_id: str, rows_help: str, request: Any) -> Callable[[Any], Any]:
    return extend_schema(
        operation_id=operation_id,
        request=request,
        description=f"{rows_help}\n\n{INGEST_DESCRIPTION}",
        responses={
            201: BatchOutput,
            200: BatchOutput,
            422: BatchOutput,
            404: OpenApiResponse(description="unknown surface"),
            409: OpenApiResponse(description="client_batch_id reused with a different row count"),
            413: OpenApiResponse(description="more rows than one batch may hold"),
        },
    )


def release_payload(request: Request) -> None:
    """Drop a finished request's references to its body and parsed content.

    The objects that hold them are reference cycles, freed only by the cyclic garbage collector:
    DRF's Request (``parser_context["request"]`` is the request itself, ``["view"]`` the view that
    holds it), Django's request (the messages storage and ``request.htmx`` point back to it) and the
    response (``renderer_context``). An ingestion request lives through several young-generation
    collections, so its cycles end up in the oldest generation, which CPython collects in full only
    once the objects promoted since the last full collection exceed a quarter of those it kept. The
    payload hardly counts toward that (parsed rows are dicts of strings, which the collector does
    not track), and a gunicorn worker keeps a few hundred thousand objects (Django, pandas, torch,
    the stack bundle): each batch's body and rows stayed resident until a rare full collection, and
    the memory came back fragmented. RSS grew with every batch (issue 10's soak; 2,000 events in a
    ~150 KB body: about +0.25 MB a batch, flat with this). Dropped here, the payload goes with its
    last reference when the response is closed; the small cycles are left to the collector.
    """
    django_request = request._request
    django_request.__dict__.pop("_body", None)  # HttpRequest.body: the raw bytes
    django_request._stream = io.BytesIO()  # a BytesIO over those bytes once .body was read
    # DRF's Request keeps the parsed content and its own stream over the body; reset to DRF's
    # "not loaded yet", so that reading .data again raises (the body is gone) instead of parsing.
    for name in ("_data", "_full_data", "_files", "_stream"):
        setattr(request, name, Empty)


class _IngestApi(APIView):
    permission_classes = [IsServingOrOperator]
    rows_field = "rows"

    class InputSerializer(serializers.Serializer):
        client_batch_id = serializers.CharField(max_length=128)
        surface = serializers.SlugField(max_length=64)
        rows = _RowsField()

    def _input(self, request: Request) -> dict[str, Any]:
        data = self.InputSerializer(data=request.data)
        try:
            data.is_valid(raise_exception=True)
            return dict(data.validated_data)
        finally:
            # A bound serializer is a cycle too (its fields name it as their parent): it must not
            # keep the batch's rows after the view has taken them (the input is in initial_data,
            # validated_data and the constructor's kwargs, which DRF keeps for copies and repr).
            data._kwargs.pop("data", None)
            for name in ("initial_data", "_validated_data", "_data"):
                data.__dict__.pop(name, None)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        # After the response is sent (the server calls close()): an error page still renders first.
        response._resource_closers.append(partial(release_payload, request))
        return response


class IngestMetricRowsApi(_IngestApi):
    @_ingest_schema(
        "ingest_metric_rows",
        "Per-unit, per-day metric rows from the warehouse: `rows: [{unit_id, day: YYYY-MM-DD, metric, value}]`.",
        _IngestApi.InputSerializer,
    )
    def post(self, request: Request) -> Response:
        data = self._input(request)
        return _ingest_response(
            ingestion.ingest_metric_rows(
                surface=data["surface"],
                client_batch_id=data["client_batch_id"],
                rows=data["rows"],
                actor=request.user,
            )
        )


class IngestEventsApi(_IngestApi):
    class InputSerializer(serializers.Serializer):
        client_batch_id = serializers.CharField(max_length=128)
        surface = serializers.SlugField(max_length=64)
        events = _RowsField()

    @_ingest_schema(
        "ingest_events",
        "Engagement events: `events: [{unit_id, ts: ISO 8601, type, value?}]` with type one of "
        + ", ".join(ingestion.EVENT_METRICS)
        + ". Events are rolled up into per-unit-day metric rows (not stored raw); `rows_written` counts them.",
        InputSerializer,
    )
    def post(self, request: Request) -> Response:
        data = self._input(request)
        return _ingest_response(
            ingestion.ingest_events(
                surface=data["surface"],
                client_batch_id=data["client_batch_id"],
                events=data["events"],
                actor=request.user,
            )
        )


class IngestExposuresApi(_IngestApi):
    @_ingest_schema(
        "ingest_exposures",
        "Exposures from fleets that assign locally: `rows: [{unit_id, salt, arm, population, stack, "
        "allocation_version, first_exposed_at}]`. A unit already exposed under the salt keeps its first exposure.",
        _IngestApi.InputSerializer,
    )
    def post(self, request: Request) -> Response:
        data = self._input(request)
        return _ingest_response(
            ingestion.ingest_exposures(
                surface=data["surface"],
                client_batch_id=data["client_batch_id"],
                rows=data["rows"],
                actor=request.user,
            )
        )


class IngestLatencyApi(_IngestApi):
    @_ingest_schema(
        "ingest_latency",
        "Serving latency samples from fleets: `rows: [{unit_id, stack, arm, ts, ms, salt?, request_id?}]`.",
        _IngestApi.InputSerializer,
    )
    def post(self, request: Request) -> Response:
        data = self._input(request)
        return _ingest_response(
            ingestion.ingest_latency(
                surface=data["surface"],
                client_batch_id=data["client_batch_id"],
                rows=data["rows"],
                actor=request.user,
            )
        )


class IngestBatchDetailApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(operation_id="ingest_batch_detail", responses={200: BatchOutput, 404: OpenApiResponse()})
    def get(self, request: Request, kind: str, client_batch_id: str) -> Response:
        batch = IngestBatch.objects.filter(kind=kind, client_batch_id=client_batch_id).first()
        if batch is None:
            raise ApplicationError("no such batch", code="not_found", http_status=404)
        return Response(ingestion.IngestResult(batch, True).to_dict())


def _surface_or_404(surface_key: str) -> Surface:
    surface = Surface.objects.filter(key=surface_key).first()
    if surface is None:
        raise ApplicationError(
            f"unknown surface {surface_key!r}", field="surface", code="unknown_surface", http_status=404
        )
    return surface


def _query_date(request: Request, name: str) -> dt.date | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    value = parse_date(raw)
    if value is None:
        raise ApplicationError(f"{name} must be a date YYYY-MM-DD", field=name)
    return value


def _query_datetime(request: Request, name: str) -> dt.datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    value = parse_datetime(raw)
    if value is None:
        day = parse_date(raw)
        value = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC) if day else None
    if value is None:
        raise ApplicationError(f"{name} must be an ISO 8601 date or timestamp", field=name)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


class ShadowParityApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="surfaces_shadow_parity",
        parameters=[OpenApiParameter("stack", str), OpenApiParameter("since", str, description="YYYY-MM-DD")],
        description="Shadow parity per day and shadow stack: overlap@10/@50, RBO, Kendall τ, calibration "
        "difference, live/shadow latency p50/p99, errors and timeouts.",
        responses={200: OpenApiResponse(description="list of per-day parity rows")},
    )
    def get(self, request: Request, surface_key: str) -> Response:
        surface = _surface_or_404(surface_key)
        rows = selectors.shadow_parity_daily(
            surface=surface,
            stack=request.query_params.get("stack") or None,
            since=_query_date(request, "since"),
        )
        return Response([{**row, "day": row["day"].isoformat()} for row in rows])


class ServingHealthApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="surfaces_serving_health",
        parameters=[OpenApiParameter("since", str), OpenApiParameter("until", str)],
        description="Router requests, fallbacks, errors and latency p50/p99 per served stack and arm.",
        responses={200: OpenApiResponse(description="list of per stack and arm rows")},
    )
    def get(self, request: Request, surface_key: str) -> Response:
        surface = _surface_or_404(surface_key)
        return Response(
            selectors.serving_health(
                surface=surface,
                since=_query_datetime(request, "since"),
                until=_query_datetime(request, "until"),
            )
        )


class CounterfactualApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="surfaces_counterfactual",
        parameters=[
            OpenApiParameter("candidate", str, required=True, description="stack label, e.g. unified-mtl@1"),
            OpenApiParameter("logging_stack", str),
            OpenApiParameter("since", str),
            OpenApiParameter("until", str),
        ],
        description="Offline IPS/SNIPS value of a candidate stack from the impression log (item-position "
        "model), the logged policy's observed value, and the position bias measured on explored requests.",
        responses={200: OpenApiResponse(description="IPS report")},
    )
    def get(self, request: Request, surface_key: str) -> Response:
        surface = _surface_or_404(surface_key)
        candidate = request.query_params.get("candidate")
        if not candidate:
            raise ApplicationError("candidate is required (a stack label)", field="candidate")
        try:
            report = selectors.counterfactual_report(
                surface=surface,
                candidate_stack=candidate,
                logging_stack=request.query_params.get("logging_stack") or None,
                since=_query_datetime(request, "since"),
                until=_query_datetime(request, "until"),
            )
        except ValueError as exc:
            raise ApplicationError(str(exc), field="candidate") from exc
        return Response(report)
