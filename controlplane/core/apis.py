"""REST API of the core registry: thin views over selectors and services."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.core import selectors, services
from controlplane.core.models import AuditEvent, RankingStack, Surface
from controlplane.core.permissions import IsOperator, IsViewer


class StackOutput(serializers.ModelSerializer):
    # ``label`` (key@version) is a typed model property: ModelSerializer serves it read-only.
    class Meta:
        model = RankingStack
        fields = [
            "id",
            "label",
            "key",
            "version",
            "kind",
            "device",
            "status",
            "latency_slo_ms",
            "throughput_per_replica",
            "p50_latency_ms",
            "p99_latency_ms",
            "host_cpu_ms_per_request",
            "offline_metrics",
            "artifact",
            "description",
            "created_at",
            "updated_at",
        ]


class StackListApi(APIView):
    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        key = serializers.SlugField(max_length=64)
        version = serializers.CharField(max_length=32)
        kind = serializers.ChoiceField(choices=RankingStack.Kind.choices)
        device = serializers.ChoiceField(choices=RankingStack.Device.choices, default=RankingStack.Device.CPU)
        status = serializers.ChoiceField(
            choices=RankingStack.Status.choices, default=RankingStack.Status.ACTIVE
        )
        latency_slo_ms = serializers.FloatField(min_value=0.001)
        throughput_per_replica = serializers.FloatField(min_value=0.001, required=False, allow_null=True)
        p50_latency_ms = serializers.FloatField(min_value=0, required=False, allow_null=True)
        p99_latency_ms = serializers.FloatField(min_value=0, required=False, allow_null=True)
        host_cpu_ms_per_request = serializers.FloatField(min_value=0, required=False, allow_null=True)
        offline_metrics = serializers.DictField(required=False)
        artifact = serializers.DictField(required=False)
        description = serializers.CharField(required=False, allow_blank=True, default="")
        reason = serializers.CharField(required=False, allow_blank=True, default="")

    @extend_schema(
        operation_id="stacks_list",
        parameters=[OpenApiParameter("kind", str), OpenApiParameter("status", str)],
        responses=StackOutput(many=True),
    )
    def get(self, request: Request) -> Response:
        stacks = selectors.stack_list(
            kind=request.query_params.get("kind"), status=request.query_params.get("status")
        )
        return Response(StackOutput(stacks, many=True).data)

    @extend_schema(
        operation_id="stacks_register",
        request=InputSerializer,
        responses={201: StackOutput, 200: StackOutput},
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        existed = RankingStack.objects.filter(
            key=data.validated_data["key"], version=data.validated_data["version"]
        ).exists()
        stack = services.stack_register(actor=request.user, **data.validated_data)
        return Response(
            StackOutput(stack).data, status=status.HTTP_200_OK if existed else status.HTTP_201_CREATED
        )


class StackDetailApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(operation_id="stacks_retrieve", responses=StackOutput)
    def get(self, request: Request, stack_id: int) -> Response:
        return Response(StackOutput(get_object_or_404(RankingStack, pk=stack_id)).data)


class AllocationOutput(serializers.Serializer):
    surface = serializers.CharField(source="surface.key")
    version = serializers.IntegerField()
    salt = serializers.CharField()
    holdout_bp = serializers.IntegerField()
    treatment_stack = serializers.CharField(source="treatment_stack.label", allow_null=True, default=None)
    treatment_bp = serializers.IntegerField()
    shadow_stack = serializers.CharField(source="shadow_stack.label", allow_null=True, default=None)
    shadow_bp = serializers.IntegerField()
    populations = serializers.JSONField()
    live_shares = serializers.SerializerMethodField()
    reason = serializers.CharField()
    created_at = serializers.DateTimeField()

    def get_live_shares(self, obj: Any) -> dict[str, float]:
        return selectors.allocation_config(obj).live_shares()


class SurfaceOutput(serializers.ModelSerializer):
    production_stack = serializers.CharField(source="production_stack.label", allow_null=True, default=None)
    populations = serializers.SerializerMethodField()
    allocation = serializers.SerializerMethodField()

    class Meta:
        model = Surface
        fields = ["id", "key", "name", "peak_qps", "status", "production_stack", "populations", "allocation"]

    def get_populations(self, obj: Surface) -> list[dict[str, Any]]:
        return [
            {"population": p.population, "stack": p.stack.label, "share_bp": p.share_bp}
            for p in obj.populations.all()
        ]

    def get_allocation(self, obj: Surface) -> dict[str, Any] | None:
        allocation = selectors.allocation_current(surface=obj)
        return dict(AllocationOutput(allocation).data) if allocation else None


class SurfaceListApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(operation_id="surfaces_list", responses=SurfaceOutput(many=True))
    def get(self, request: Request) -> Response:
        return Response(SurfaceOutput(selectors.surface_list(), many=True).data)


class SurfaceDetailApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(operation_id="surfaces_retrieve", responses=SurfaceOutput)
    def get(self, request: Request, surface_key: str) -> Response:
        return Response(SurfaceOutput(get_object_or_404(selectors.surface_list(), key=surface_key)).data)


class _StackLabelField(serializers.CharField):
    """A stack given as its label ``key@version``; validated to exist."""

    def to_internal_value(self, data: Any) -> RankingStack | None:  # type: ignore[override]
        label = super().to_internal_value(data)
        if label == "":
            return None
        stack = selectors.stack_get_by_label(label)
        if stack is None:
            raise serializers.ValidationError(
                f"unknown stack {label!r}; expected key@version of a registered stack"
            )
        return stack


class AllocationApi(APIView):
    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)
        expected_version = serializers.IntegerField(required=False, min_value=1)
        treatment_stack = _StackLabelField(required=False, allow_null=True, allow_blank=True)
        treatment_bp = serializers.IntegerField(required=False, min_value=0, max_value=10000)
        shadow_stack = _StackLabelField(required=False, allow_null=True, allow_blank=True)
        shadow_bp = serializers.IntegerField(required=False, min_value=0, max_value=10000)
        holdout_bp = serializers.IntegerField(required=False, min_value=0, max_value=10000)

    @extend_schema(operation_id="allocation_current", responses=AllocationOutput)
    def get(self, request: Request, surface_key: str) -> Response:
        surface = get_object_or_404(Surface, key=surface_key)
        allocation = selectors.allocation_current(surface=surface)
        return Response(AllocationOutput(allocation).data)

    @extend_schema(
        operation_id="allocation_change",
        request=InputSerializer,
        responses={
            200: AllocationOutput,
            400: OpenApiResponse(description="invalid"),
            409: OpenApiResponse(description="stale expected_version"),
        },
    )
    def post(self, request: Request, surface_key: str) -> Response:
        surface = get_object_or_404(Surface, key=surface_key)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        allocation = services.allocation_change(surface=surface, actor=request.user, **data.validated_data)
        return Response(AllocationOutput(allocation).data)


class AllocationHistoryApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(operation_id="allocation_history", responses=AllocationOutput(many=True))
    def get(self, request: Request, surface_key: str) -> Response:
        surface = get_object_or_404(Surface, key=surface_key)
        return Response(AllocationOutput(selectors.allocation_history(surface=surface), many=True).data)


class PublishedConfigApi(APIView):
    """The allocation config serving fleets poll. Supports ETag / If-None-Match (304)."""

    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="config_allocations",
        responses={
            200: inline_serializer(
                "PublishedConfig",
                {
                    "schema": serializers.IntegerField(),
                    "surfaces": serializers.ListField(child=serializers.DictField()),
                    "versions": serializers.DictField(child=serializers.IntegerField()),
                },
            ),
            304: OpenApiResponse(description="unchanged since the ETag in If-None-Match"),
        },
    )
    def get(self, request: Request) -> Response:
        body, etag = selectors.published_config()
        if_none_match = request.headers.get("If-None-Match", "")
        candidates = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",") if tag.strip()}
        if etag in candidates or "*" in candidates:
            response = Response(status=status.HTTP_304_NOT_MODIFIED)
        else:
            response = Response(body)
        response["ETag"] = etag
        response["Cache-Control"] = "private, max-age=0, must-revalidate"
        return response


class AuditOutput(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "actor_label",
            "verb",
            "target_type",
            "target_id",
            "target_repr",
            "surface_key",
            "before",
            "after",
            "reason",
            "created_at",
        ]


class AuditListApi(APIView):
    permission_classes = [IsViewer]

    class FilterSerializer(serializers.Serializer):
        actor = serializers.CharField(required=False)
        surface = serializers.CharField(required=False)
        verb = serializers.CharField(required=False)
        since = serializers.DateTimeField(required=False)
        until = serializers.DateTimeField(required=False)
        target_type = serializers.CharField(required=False)
        target_id = serializers.CharField(required=False)

    class PageSerializer(serializers.Serializer):
        count = serializers.IntegerField()
        next = serializers.URLField(allow_null=True)
        previous = serializers.URLField(allow_null=True)
        results = AuditOutput(many=True)

    @extend_schema(
        operation_id="audit_list",
        parameters=[FilterSerializer, OpenApiParameter("limit", int), OpenApiParameter("offset", int)],
        responses=PageSerializer,
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        events = selectors.audit_list(**filters.validated_data)
        paginator = LimitOffsetPagination()
        page = paginator.paginate_queryset(events, request, view=self)
        return paginator.get_paginated_response(AuditOutput(page, many=True).data)
