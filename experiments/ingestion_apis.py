"""Ingestion API (``api/v1/ingest/...``): batches of metric rows, events, exposures and latency samples.

Serving fleets and the warehouse send batches here; each endpoint validates the envelope and hands
the rows to :mod:`experiments.ingestion` (validated in bulk, idempotent per client batch). The four
endpoints share one body (:class:`_IngestApi`) and differ only in their :class:`IngestKind`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

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

from controlplane.core.errors import ApplicationError
from controlplane.core.permissions import IsServingOrOperator, IsViewer
from controlplane.serving.models import IngestBatch
from experiments import ingestion

INGEST_DESCRIPTION = (
    "**Atomic:** a batch's accepted rows and its IngestBatch record commit in one transaction — both "
    "are stored or neither is. **Partial:** validation is per row; each bad row is rejected with an "
    "error `{row, field, message}` (row = 0-based index in the batch) and the good rows are kept "
    "(status `partial`); a batch with no good row is recorded as `rejected` (HTTP 422). "
    "**Idempotent:** `client_batch_id` is unique per (kind, surface); re-sending it returns the first "
    "result with `replayed: true` and writes nothing (a different row count under the same id is refused "
    "with 409); the same id on another surface is another batch. **Re-sending a rejected or partial "
    "batch after a fix:** its id is spent (a re-send would replay the first result), so send the "
    "corrected rows — only the rejected ones for a `partial` batch, whose good rows are stored — under a "
    "new `client_batch_id` (e.g. `<id>-fix1`); `GET /api/v1/ingest/batches/{kind}/{id}/?surface=` shows "
    "which rows were rejected and why. "
    "Rows are rejected for an unknown unit (no exposure on the surface), unknown metric or event type, "
    "negative, non-finite or too large values (beyond MAX_ABS_VALUE, 1e15), and days/timestamps "
    "out of range. PostgreSQL writes use COPY. **Body limit:** INGEST_MAX_BODY_BYTES (256 MiB, enough "
    "for the 2,000,000 rows a batch may hold); a larger body gets a JSON 413 naming the limit."
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
        "surface": serializers.CharField(),
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


class IngestRowsInputSerializer(serializers.Serializer):
    client_batch_id = serializers.CharField(max_length=128)
    surface = serializers.SlugField(max_length=64)
    rows = _RowsField()


class IngestEventsInputSerializer(serializers.Serializer):
    client_batch_id = serializers.CharField(max_length=128)
    surface = serializers.SlugField(max_length=64)
    events = _RowsField()


@dataclass(frozen=True)
class IngestKind:
    """One kind of batch the ingestion API takes: its service, its rows field and its documentation."""

    operation_id: str
    service: Callable[..., ingestion.IngestResult]
    rows_help: str
    input_serializer: type[serializers.Serializer] = IngestRowsInputSerializer
    rows_field: str = "rows"


class _IngestApi(APIView):
    """The one body of every ingestion endpoint; a subclass only names its :class:`IngestKind`.

    A serving fleet's identity (role ``serving``) or an operator may send batches; viewers read."""

    permission_classes = [IsServingOrOperator]
    kind: ClassVar[IngestKind]
    post: ClassVar[Callable[[_IngestApi, Request], Response]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        kind = cls.kind

        def post(self: _IngestApi, request: Request) -> Response:
            return self.ingest(request)

        # A function of its own per endpoint: the schema annotation is stored on the function.
        cls.post = _ingest_schema(kind.operation_id, kind.rows_help, kind.input_serializer)(post)

    def _input(self, request: Request) -> dict[str, Any]:
        data = self.kind.input_serializer(data=request.data)
        try:
            data.is_valid(raise_exception=True)
            return dict(data.validated_data)
        finally:
            # A bound serializer is a cycle too (its fields name it as their parent): it must not
            # keep the batch's rows after the view has taken them (the input is in initial_data,
            # validated_data and the constructor's kwargs, which DRF keeps for copies and repr).
            vars(data)["_kwargs"].pop("data", None)
            for name in ("initial_data", "_validated_data", "_data"):
                data.__dict__.pop(name, None)

    def ingest(self, request: Request) -> Response:
        data = self._input(request)
        field = self.kind.rows_field
        result = self.kind.service(
            surface=data["surface"],
            client_batch_id=data["client_batch_id"],
            actor=request.user,
            **{field: data[field]},
        )
        return _ingest_response(result)

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        # After the response is sent (the server calls close()): an error page still renders first.
        response._resource_closers.append(partial(release_payload, request))
        return response


class IngestMetricRowsApi(_IngestApi):
    kind = IngestKind(
        "ingest_metric_rows",
        ingestion.ingest_metric_rows,
        "Per-unit, per-day metric rows from the warehouse: `rows: [{unit_id, day: YYYY-MM-DD, metric, value}]`.",
    )


class IngestEventsApi(_IngestApi):
    kind = IngestKind(
        "ingest_events",
        ingestion.ingest_events,
        "Engagement events: `events: [{unit_id, ts: ISO 8601, type, value?}]` with type one of "
        + ", ".join(ingestion.EVENT_METRICS)
        + ". Events are rolled up into per-unit-day metric rows (not stored raw); `rows_written` counts them.",
        IngestEventsInputSerializer,
        "events",
    )


class IngestExposuresApi(_IngestApi):
    kind = IngestKind(
        "ingest_exposures",
        ingestion.ingest_exposures,
        "Exposures from fleets that assign locally: `rows: [{unit_id, salt, arm, population, stack, "
        "allocation_version, first_exposed_at}]`. A unit already exposed under the salt keeps its first exposure.",
    )


class IngestLatencyApi(_IngestApi):
    kind = IngestKind(
        "ingest_latency",
        ingestion.ingest_latency,
        "Serving latency samples from fleets: `rows: [{unit_id, stack, arm, ts, ms, salt?, request_id?}]`.",
    )


class IngestBatchDetailApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="ingest_batch_detail",
        parameters=[
            OpenApiParameter(
                "surface",
                str,
                description="the batch's surface; required when the id was used on several surfaces",
            )
        ],
        responses={200: BatchOutput, 400: OpenApiResponse(), 404: OpenApiResponse()},
    )
    def get(self, request: Request, kind: str, client_batch_id: str) -> Response:
        batches = IngestBatch.objects.filter(kind=kind, client_batch_id=client_batch_id)
        surface = request.query_params.get("surface")
        if surface:
            batches = batches.filter(surface_key=surface)
        found = list(batches[:2])
        if not found:
            raise ApplicationError("no such batch", code="not_found", http_status=404)
        if len(found) > 1:
            raise ApplicationError(
                f"batch id {client_batch_id!r} was used on several surfaces; pass ?surface=<key>",
                field="surface",
            )
        return Response(ingestion.IngestResult(found[0], True).to_dict())
