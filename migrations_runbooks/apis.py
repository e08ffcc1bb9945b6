"""Runbook REST API: thin views over ``selectors`` and ``services`` (no business rules here)."""

from __future__ import annotations

from typing import Any, ClassVar

from django.conf import settings
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.core.models import Surface
from controlplane.core.permissions import IsApprover, IsOperator, IsOperatorToRead, IsViewer
from controlplane.core.selectors import stack_get_by_label
from migrations_runbooks import selectors, services
from migrations_runbooks.models import (
    CapacityConfig,
    Milestone,
    Notification,
    Runbook,
    RunbookTemplate,
    WebhookEndpoint,
)


# -- output shapes (documented for OpenAPI; the data come from selectors) ------------------------------
class GateOutput(serializers.Serializer):
    gate = serializers.CharField()
    subject = serializers.CharField()
    outcome = serializers.ChoiceField(choices=["pass", "wait", "hold", "rollback"])
    passed = serializers.BooleanField()
    value = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField(allow_null=True)
    comparator = serializers.CharField()
    reason = serializers.CharField()


class EvaluationOutput(serializers.Serializer):
    id = serializers.IntegerField()
    step_index = serializers.IntegerField()
    evaluated_at = serializers.DateTimeField()
    outcome = serializers.CharField()
    reason = serializers.CharField()
    decision = serializers.CharField()
    analysis_computed_at = serializers.CharField()
    actor = serializers.CharField()
    gates = GateOutput(many=True)


class StepOutput(serializers.Serializer):
    index = serializers.IntegerField()
    name = serializers.CharField()
    treatment_bp = serializers.IntegerField()
    shadow_bp = serializers.IntegerField()
    min_duration_s = serializers.IntegerField()
    min_units = serializers.IntegerField()
    needs_approval = serializers.BooleanField()
    gates = serializers.JSONField()
    started_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
    state = serializers.ChoiceField(choices=["pending", "current", "done"])


class ApprovalOutput(serializers.Serializer):
    id = serializers.IntegerField()
    kind = serializers.CharField()
    step_index = serializers.IntegerField(allow_null=True)
    status = serializers.CharField()
    requested_by = serializers.CharField()
    requested_at = serializers.DateTimeField()
    request_reason = serializers.CharField()
    decided_by = serializers.CharField(allow_null=True)
    decided_at = serializers.DateTimeField(allow_null=True)
    decision_reason = serializers.CharField()


class RunbookOutput(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    surface = serializers.CharField()
    target_stack = serializers.CharField()
    status = serializers.ChoiceField(choices=Runbook.Status.choices)
    status_reason = serializers.CharField()
    current_step = serializers.IntegerField()
    current_step_name = serializers.CharField(allow_null=True)
    treatment_bp = serializers.IntegerField()
    pending_step = serializers.IntegerField(allow_null=True)
    step_started_at = serializers.DateTimeField(allow_null=True)
    next_check_at = serializers.DateTimeField(allow_null=True)
    last_tick_at = serializers.DateTimeField(allow_null=True)
    ticks = serializers.IntegerField()
    start_at = serializers.DateTimeField(allow_null=True)
    started_at = serializers.DateTimeField(allow_null=True)
    started_by = serializers.CharField()
    finished_at = serializers.DateTimeField(allow_null=True)
    experiment_key = serializers.CharField()
    salt = serializers.CharField()
    milestone = serializers.CharField(allow_null=True)
    template = serializers.CharField(allow_null=True)
    promotion_needs_approval = serializers.BooleanField()
    depends_on = serializers.JSONField(allow_null=True)
    steps = StepOutput(many=True)
    current_gates = EvaluationOutput(allow_null=True)
    holding_gates = GateOutput(many=True)
    latest_evaluation = EvaluationOutput(allow_null=True)
    open_approval = ApprovalOutput(allow_null=True)
    approvals = ApprovalOutput(many=True)
    allocation_version = serializers.IntegerField(allow_null=True)
    final_readout = serializers.JSONField(allow_null=True)


class StepInput(serializers.Serializer):
    name = serializers.CharField(max_length=60)
    treatment_bp = serializers.IntegerField(min_value=0, max_value=10000)
    shadow_bp = serializers.IntegerField(min_value=0, max_value=10000, default=0)
    min_duration_s = serializers.IntegerField(min_value=0, max_value=365 * 86400, default=86400)
    min_units = serializers.IntegerField(min_value=0, max_value=10**9, default=0)
    needs_approval = serializers.BooleanField(default=False)
    gates = serializers.DictField(required=False)


def _runbook(runbook_id: int) -> Runbook:
    return get_object_or_404(selectors.runbook_list(), pk=runbook_id)


def _detail(runbook: Runbook) -> dict[str, Any]:
    runbook.refresh_from_db()
    return selectors.runbook_detail(runbook=runbook, now=timezone.now())


# -- runbooks ---------------------------------------------------------------------------------------
class RunbookListApi(APIView):
    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        surface = serializers.SlugField()
        target_stack = serializers.CharField(help_text="key@version of a unified stack")
        name = serializers.CharField(max_length=160, required=False, allow_blank=True, default="")
        template = serializers.SlugField(required=False, allow_null=True, default=None)
        steps = serializers.ListField(
            child=StepInput(), min_length=1, required=False, allow_null=True, default=None
        )
        milestone = serializers.SlugField(required=False, allow_null=True, default=None)
        depends_on = serializers.IntegerField(
            min_value=1, max_value=2**31 - 1, required=False, allow_null=True, default=None
        )
        depends_on_bp = serializers.IntegerField(min_value=1, max_value=10000, default=5000)
        depends_on_hold_s = serializers.IntegerField(min_value=0, max_value=365 * 86400, default=86400)
        check_interval_s = serializers.IntegerField(
            min_value=10, max_value=86400, required=False, allow_null=True, default=None
        )
        promotion_needs_approval = serializers.BooleanField(required=False, allow_null=True, default=None)
        reason = serializers.CharField(required=False, allow_blank=True, default="")

    @extend_schema(
        operation_id="runbooks_list",
        parameters=[
            OpenApiParameter("surface", str),
            OpenApiParameter("status", str, description="comma-separated statuses"),
            OpenApiParameter("milestone", str),
        ],
        responses=RunbookOutput(many=True),
    )
    def get(self, request: Request) -> Response:
        runbooks = selectors.runbook_list(
            surface=request.query_params.get("surface"),
            status=request.query_params.get("status"),
            milestone=request.query_params.get("milestone"),
        )
        now = timezone.now()
        return Response([selectors.runbook_detail(runbook=rb, now=now) for rb in runbooks[:200]])

    @extend_schema(operation_id="runbooks_create", request=InputSerializer, responses={201: RunbookOutput})
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = data.validated_data
        surface = Surface.objects.filter(key=v["surface"]).first()
        if surface is None:
            raise serializers.ValidationError({"surface": [f"unknown surface {v['surface']!r}"]})
        stack = stack_get_by_label(v["target_stack"])
        if stack is None:
            raise serializers.ValidationError({"target_stack": [f"unknown stack {v['target_stack']!r}"]})
        template = None
        if v["template"]:
            template = RunbookTemplate.objects.filter(key=v["template"]).first()
            if template is None:
                raise serializers.ValidationError({"template": [f"unknown template {v['template']!r}"]})
        milestone = None
        if v["milestone"]:
            milestone = Milestone.objects.filter(key=v["milestone"]).first()
            if milestone is None:
                raise serializers.ValidationError({"milestone": [f"unknown milestone {v['milestone']!r}"]})
        depends_on = None
        if v["depends_on"]:
            depends_on = Runbook.objects.filter(pk=v["depends_on"]).first()
            if depends_on is None:
                raise serializers.ValidationError({"depends_on": [f"unknown runbook {v['depends_on']}"]})
        rb = services.runbook_create(
            surface=surface,
            target_stack=stack,
            actor=request.user,
            now=timezone.now(),
            name=v["name"],
            template=template,
            steps=[dict(s) for s in v["steps"]] if v["steps"] else None,
            milestone=milestone,
            depends_on=depends_on,
            depends_on_bp=v["depends_on_bp"],
            depends_on_hold_s=v["depends_on_hold_s"],
            check_interval_s=v["check_interval_s"],
            promotion_needs_approval=v["promotion_needs_approval"],
            reason=v["reason"],
        )
        return Response(_detail(rb), status=status.HTTP_201_CREATED)


class RunbookDetailApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(operation_id="runbooks_retrieve", responses=RunbookOutput)
    def get(self, request: Request, runbook_id: int) -> Response:
        return Response(_detail(_runbook(runbook_id)))


class RunbookStepsApi(APIView):
    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        steps = serializers.ListField(child=StepInput(), min_length=1)
        reason = serializers.CharField(max_length=2000)

    @extend_schema(operation_id="runbooks_steps_update", request=InputSerializer, responses=RunbookOutput)
    def put(self, request: Request, runbook_id: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rb = services.runbook_update_steps(
            runbook=_runbook(runbook_id),
            steps=[dict(s) for s in data.validated_data["steps"]],
            actor=request.user,
            reason=data.validated_data["reason"],
            now=timezone.now(),
        )
        return Response(_detail(rb))


class _RunbookActionApi(APIView):
    """POST {reason} → one state-machine service call; the response is the runbook after it."""

    permission_classes = [IsOperator]
    action: ClassVar[str] = ""

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)

    def call(self, runbook: Runbook, request: Request, data: dict[str, Any]) -> None:
        service = getattr(services, f"runbook_{self.action}")
        service(runbook=runbook, actor=request.user, reason=data["reason"], now=timezone.now())

    def post(self, request: Request, runbook_id: int) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rb = _runbook(runbook_id)
        self.call(rb, request, dict(data.validated_data))
        return Response(_detail(rb))


def _action_schema(action: str, request: Any = None) -> Any:
    return extend_schema(
        operation_id=f"runbooks_{action}",
        request=request or _RunbookActionApi.InputSerializer,
        responses={200: RunbookOutput},
    )


class RunbookStartApi(_RunbookActionApi):
    action = "start"

    @_action_schema("start")
    def post(self, request: Request, runbook_id: int) -> Response:
        return super().post(request, runbook_id)


class RunbookScheduleApi(_RunbookActionApi):
    action = "schedule"

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)
        start_at = serializers.DateTimeField()

    def call(self, runbook: Runbook, request: Request, data: dict[str, Any]) -> None:
        services.runbook_schedule(
            runbook=runbook,
            start_at=data["start_at"],
            actor=request.user,
            reason=data["reason"],
            now=timezone.now(),
        )

    @_action_schema("schedule", InputSerializer)
    def post(self, request: Request, runbook_id: int) -> Response:
        return super().post(request, runbook_id)


class RunbookPauseApi(_RunbookActionApi):
    action = "pause"

    @_action_schema("pause")
    def post(self, request: Request, runbook_id: int) -> Response:
        return super().post(request, runbook_id)


class RunbookResumeApi(_RunbookActionApi):
    action = "resume"

    @_action_schema("resume")
    def post(self, request: Request, runbook_id: int) -> Response:
        return super().post(request, runbook_id)


class RunbookJumpApi(_RunbookActionApi):
    action = "jump"

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)
        to_step = serializers.IntegerField(min_value=0, max_value=1000)

    def call(self, runbook: Runbook, request: Request, data: dict[str, Any]) -> None:
        services.runbook_jump(
            runbook=runbook,
            to_step=data["to_step"],
            actor=request.user,
            reason=data["reason"],
            now=timezone.now(),
        )

    @_action_schema("jump", InputSerializer)
    def post(self, request: Request, runbook_id: int) -> Response:
        return super().post(request, runbook_id)


class RunbookRollbackApi(_RunbookActionApi):
    action = "rollback"

    @_action_schema("rollback")
    def post(self, request: Request, runbook_id: int) -> Response:
        return super().post(request, runbook_id)


class RunbookAbortApi(_RunbookActionApi):
    action = "abort"

    @_action_schema("abort")
    def post(self, request: Request, runbook_id: int) -> Response:
        return super().post(request, runbook_id)


class RunbookPromoteApi(_RunbookActionApi):
    action = "promote"

    @_action_schema("promote")
    def post(self, request: Request, runbook_id: int) -> Response:
        return super().post(request, runbook_id)


class RunbookApproveApi(_RunbookActionApi):
    """Four-eyes: an approver who neither requested nor started the runbook."""

    permission_classes = [IsApprover]
    action = "approve"

    @_action_schema("approve")
    def post(self, request: Request, runbook_id: int) -> Response:
        return super().post(request, runbook_id)


class RunbookRejectApi(_RunbookActionApi):
    permission_classes = [IsApprover]
    action = "reject"

    @_action_schema("reject")
    def post(self, request: Request, runbook_id: int) -> Response:
        return super().post(request, runbook_id)


class RunbookEvaluationsApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="runbooks_evaluations",
        parameters=[OpenApiParameter("limit", int)],
        responses=EvaluationOutput(many=True),
    )
    def get(self, request: Request, runbook_id: int) -> Response:
        try:
            limit = max(1, min(500, int(request.query_params.get("limit", 50))))
        except ValueError:
            raise serializers.ValidationError({"limit": ["must be an integer"]}) from None
        evaluations = selectors.evaluation_list(runbook=_runbook(runbook_id), limit=limit)
        return Response([selectors.evaluation_dict(e) for e in evaluations])


class RunbookCapacityApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="runbooks_capacity",
        responses=inline_serializer(
            "RunbookCapacityPlan",
            {
                "surface": serializers.CharField(),
                "peak_qps": serializers.FloatField(),
                "target_stack": serializers.CharField(),
                "prices": serializers.JSONField(),
                "baseline": serializers.JSONField(),
                "steps": serializers.ListField(child=serializers.JSONField()),
                "promoted": serializers.JSONField(),
            },
        ),
    )
    def get(self, request: Request, runbook_id: int) -> Response:
        return Response(selectors.capacity_plan(runbook=_runbook(runbook_id)))


# -- templates, program, capacity config, webhooks, tick ---------------------------------------------------
class TemplateOutput(serializers.ModelSerializer):
    class Meta:
        model = RunbookTemplate
        fields = ["id", "key", "name", "description", "steps", "promotion_needs_approval", "check_interval_s"]


class RunbookTemplateListApi(APIView):
    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        key = serializers.SlugField(max_length=64)
        name = serializers.CharField(max_length=120)
        description = serializers.CharField(required=False, allow_blank=True, default="")
        steps = serializers.ListField(
            child=StepInput(), min_length=1, required=False, allow_null=True, default=None
        )
        promotion_needs_approval = serializers.BooleanField(default=True)
        check_interval_s = serializers.IntegerField(min_value=10, max_value=86400, default=60)

    @extend_schema(operation_id="runbook_templates_list", responses=TemplateOutput(many=True))
    def get(self, request: Request) -> Response:
        return Response(TemplateOutput(selectors.template_list(), many=True).data)

    @extend_schema(operation_id="runbook_templates_upsert", request=InputSerializer, responses=TemplateOutput)
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        v = dict(data.validated_data)
        raw_steps = v.pop("steps", None)
        steps = [dict(s) for s in raw_steps] if raw_steps else None
        template = services.runbook_template_upsert(actor=request.user, now=timezone.now(), steps=steps, **v)
        return Response(TemplateOutput(template).data)


class ProgramApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="program_progress",
        responses=inline_serializer(
            "ProgramProgress",
            {
                "now": serializers.DateTimeField(),
                "surfaces": serializers.IntegerField(),
                "milestones": serializers.ListField(child=serializers.JSONField()),
            },
        ),
    )
    def get(self, request: Request) -> Response:
        return Response(selectors.program_progress(now=timezone.now()))


class CapacityConfigOutput(serializers.ModelSerializer):
    class Meta:
        model = CapacityConfig
        fields = [
            "headroom",
            "gpu_replica_cost_per_hour",
            "cpu_replica_cost_per_hour",
            "host_cpu_cores_per_gpu_replica",
            "min_replicas",
            "max_gpu_replicas",
            "max_cpu_replicas",
            "updated_at",
        ]


class CapacityConfigApi(APIView):
    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(max_length=2000)
        headroom = serializers.FloatField(min_value=0, max_value=5, required=False)
        gpu_replica_cost_per_hour = serializers.FloatField(min_value=0, max_value=1e6, required=False)
        cpu_replica_cost_per_hour = serializers.FloatField(min_value=0, max_value=1e6, required=False)
        host_cpu_cores_per_gpu_replica = serializers.FloatField(
            min_value=0.01, max_value=1024, required=False
        )
        min_replicas = serializers.IntegerField(min_value=0, max_value=10_000, required=False)
        max_gpu_replicas = serializers.IntegerField(
            min_value=0, max_value=10**6, required=False, allow_null=True
        )
        max_cpu_replicas = serializers.IntegerField(
            min_value=0, max_value=10**6, required=False, allow_null=True
        )

    @extend_schema(operation_id="capacity_config_retrieve", responses=CapacityConfigOutput)
    def get(self, request: Request) -> Response:
        config, _ = CapacityConfig.objects.get_or_create(
            key="default", defaults={"updated_at": timezone.now()}
        )
        return Response(CapacityConfigOutput(config).data)

    @extend_schema(
        operation_id="capacity_config_update", request=InputSerializer, responses=CapacityConfigOutput
    )
    def put(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        reason = values.pop("reason")
        config = services.capacity_config_update(
            actor=request.user, now=timezone.now(), reason=reason, **values
        )
        return Response(CapacityConfigOutput(config).data)


class NotificationOutput(serializers.ModelSerializer):
    endpoint = serializers.CharField(source="endpoint.name")

    class Meta:
        model = Notification
        fields = [
            "id",
            "endpoint",
            "runbook",
            "event",
            "status",
            "attempts",
            "last_status_code",
            "last_error",
            "created_at",
            "next_attempt_at",
            "delivered_at",
            "payload",
        ]


class NotificationListApi(APIView):
    """Webhook deliveries: failures stay visible with their attempts, last status and error class.

    Operators only: deliveries name receivers and carry payloads (issue 17)."""

    permission_classes = [IsOperatorToRead]

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Notification.Status.choices, required=False)
        runbook = serializers.IntegerField(min_value=1, max_value=2**31 - 1, required=False)

    @extend_schema(
        operation_id="runbook_notifications_list",
        parameters=[FilterSerializer],
        responses=NotificationOutput(many=True),
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        runbook = None
        if "runbook" in filters.validated_data:
            runbook = get_object_or_404(Runbook, pk=filters.validated_data["runbook"])
        rows = selectors.notification_list(status=filters.validated_data.get("status"), runbook=runbook)[:200]
        return Response(NotificationOutput(rows, many=True).data)


class WebhookOutput(serializers.ModelSerializer):
    class Meta:
        model = WebhookEndpoint
        fields = ["id", "name", "url", "events", "active", "created_at"]  # never the secret


class WebhookListApi(APIView):
    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=80)
        url = serializers.URLField(max_length=500)
        secret = serializers.CharField(min_length=16, max_length=200, write_only=True)
        events = serializers.ListField(
            child=serializers.CharField(max_length=20),
            default=list,
            help_text=f"subset of {Notification.Event.values}; empty = every event",
        )
        active = serializers.BooleanField(default=True)

    @extend_schema(operation_id="runbook_webhooks_list", responses=WebhookOutput(many=True))
    def get(self, request: Request) -> Response:
        return Response(WebhookOutput(WebhookEndpoint.objects.all(), many=True).data)

    @extend_schema(operation_id="runbook_webhooks_upsert", request=InputSerializer, responses=WebhookOutput)
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        endpoint = services.webhook_endpoint_upsert(
            actor=request.user, now=timezone.now(), **data.validated_data
        )
        return Response(WebhookOutput(endpoint).data)


class RampsTickApi(APIView):
    """Run one sweep now. ``now`` (a simulated clock) is honoured only in demo or debug mode:
    elsewhere a client-chosen clock could age steps past their minimum duration."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        now = serializers.DateTimeField(required=False)

    @extend_schema(
        operation_id="runbooks_tick",
        request=InputSerializer,
        responses=inline_serializer(
            "RampsTick",
            {
                "now": serializers.DateTimeField(),
                "outcomes": serializers.ListField(child=serializers.JSONField()),
            },
        ),
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        now = timezone.now()
        if "now" in data.validated_data:
            if not (settings.DEMO_MODE or settings.DEBUG):
                raise serializers.ValidationError(
                    {"now": ["a simulated clock is only accepted in demo or debug mode"]}
                )
            now = data.validated_data["now"]
            if not 2000 <= now.year <= 2200:
                raise serializers.ValidationError({"now": ["must be within the years 2000..2200"]})
        outcomes = services.ramps_advance_due(now=now)
        return Response({"now": now, "outcomes": [o.__dict__ for o in outcomes]})
