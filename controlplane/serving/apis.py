"""REST API of the serving path: the router, ingestion batches and serving read-outs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from django.utils.dateparse import parse_date, parse_datetime
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.core.errors import ApplicationError
from controlplane.core.models import Surface
from controlplane.core.permissions import VIEWER, IsViewer, has_role
from controlplane.serving import selectors, services


class IsServingClient(BasePermission):
    """Any user holding a role may send ranking requests (the router writes only serving logs)."""

    message = "You need a role (viewer or higher) to send ranking requests."

    def has_permission(self, request: Any, view: Any) -> bool:
        return has_role(request.user, VIEWER)


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
