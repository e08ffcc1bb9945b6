"""REST API of experiments: designs, analysis runs, results, decisions, readouts, warehouse path.

Thin views: nested input serializers validate the shape, services enforce the rules (and name
the field at fault), selectors read.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.core import selectors as registry
from controlplane.core.errors import ApplicationError
from controlplane.core.models import Surface
from controlplane.core.permissions import IsApprover, IsOperator, IsViewer
from experiments import aggregation, readout, selectors, services
from experiments.models import AnalysisRun, Decision, Experiment, ExperimentMetric, MetricDefinition
from experiments.outcome import analysis_outcome


def _experiment(key: str) -> Experiment:
    return get_object_or_404(
        Experiment.objects.select_related("surface", "treatment_stack", "allocation"), key=key
    )


def _stack(label: str, field: str) -> Any:
    stack = registry.stack_get_by_label(label)
    if stack is None:
        raise ApplicationError(f"unknown stack {label!r}; expected key@version", field=field)
    return stack


class ExperimentOutput(serializers.Serializer):
    id = serializers.IntegerField()
    key = serializers.CharField()
    status = serializers.CharField()
    locked_at = serializers.DateTimeField(allow_null=True)
    design = serializers.SerializerMethodField()
    latest_analysis = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()

    def get_design(self, obj: Experiment) -> dict[str, Any]:
        return services.experiment_design(obj)

    def get_latest_analysis(self, obj: Experiment) -> dict[str, Any] | None:
        run = selectors.experiment_latest_analysis(experiment=obj)
        if run is None:
            return None
        return {
            "id": run.pk,
            "as_of": run.as_of,
            "verdict": run.verdict,
            "created_at": run.created_at,
            "decision": _result_json(run).get("decision"),
        }

    def get_links(self, obj: Experiment) -> dict[str, str]:
        base = f"/api/v1/experiments/{obj.key}/"
        return {
            "self": base,
            "analyses": base + "analyses/",
            "results": base + "results/",
            "decisions": base + "decisions/",
            "readout_html": base + "readout.html",
            "readout_csv": base + "readout.csv",
            "readout_json": base + "readout.json",
            "warehouse_sql": base + "warehouse/sql/",
            "warehouse_statistics": base + "warehouse/statistics/",
            "page": f"/experiments/{obj.key}/readout/",
        }


class MetricInput(serializers.Serializer):
    metric = serializers.CharField(max_length=64)
    role = serializers.ChoiceField(choices=ExperimentMetric.Role.choices)
    direction = serializers.ChoiceField(
        choices=MetricDefinition.Direction.choices, required=False, allow_null=True
    )
    margin = serializers.FloatField(required=False, allow_null=True)
    margin_kind = serializers.ChoiceField(choices=ExperimentMetric.MarginKind.choices, required=False)
    cuped = serializers.BooleanField(required=False)
    # Pre-registered capping (mean metrics): winsorise at this quantile of cap_source.
    cap_quantile = serializers.FloatField(required=False, allow_null=True)
    cap_source = serializers.ChoiceField(choices=ExperimentMetric.CapSource.choices, required=False)
    # Inline definition of a metric that does not exist yet.
    name = serializers.CharField(max_length=120, required=False)
    kind = serializers.ChoiceField(choices=MetricDefinition.Kind.choices, required=False)
    numerator = serializers.CharField(max_length=64, required=False, allow_blank=True)
    denominator = serializers.CharField(max_length=64, required=False, allow_blank=True)
    quantile = serializers.FloatField(required=False, allow_null=True)


class ExperimentListApi(APIView):
    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        surface = serializers.SlugField()
        key = serializers.SlugField(max_length=80)
        name = serializers.CharField(max_length=160, required=False, allow_blank=True, default="")
        hypothesis = serializers.CharField(required=False, allow_blank=True, default="")
        treatment_stack = serializers.CharField(help_text="key@version of the unified stack")
        salt = serializers.CharField(max_length=64, help_text="allocation salt whose exposures are analysed")
        window_start = serializers.DateField()
        window_end = serializers.DateField(required=False, allow_null=True)
        pre_start = serializers.DateField(required=False, allow_null=True)
        pre_end = serializers.DateField(required=False, allow_null=True)
        alpha = serializers.FloatField(required=False, default=0.05)
        power = serializers.FloatField(required=False, default=0.8)
        sequential = serializers.BooleanField(required=False, default=True)
        start = serializers.BooleanField(required=False, default=False)
        metrics = MetricInput(many=True)

    class FilterSerializer(serializers.Serializer):
        # CharField refuses NUL bytes with a 400 naming the parameter (PostgreSQL text cannot hold them).
        surface = serializers.CharField(required=False, allow_blank=True)
        status = serializers.CharField(required=False, allow_blank=True)
        stack = serializers.CharField(required=False, allow_blank=True)

    @extend_schema(
        operation_id="experiments_list",
        parameters=[
            OpenApiParameter("surface", str),
            OpenApiParameter("status", str),
            OpenApiParameter("stack", str),
        ],
        responses=ExperimentOutput(many=True),
    )
    def get(self, request: Request) -> Response:
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        qs = selectors.experiment_list(
            surface=filters.validated_data.get("surface"),
            status=filters.validated_data.get("status"),
            stack=filters.validated_data.get("stack"),
        )
        return Response(ExperimentOutput(qs, many=True).data)

    @extend_schema(
        operation_id="experiments_create",
        request=InputSerializer,
        responses={
            201: ExperimentOutput,
            400: OpenApiResponse(description="bad design; errors name the field"),
            409: OpenApiResponse(description="key exists"),
        },
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        surface = Surface.objects.filter(key=values.pop("surface")).first()
        if surface is None:
            raise ApplicationError("unknown surface", field="surface")
        values["treatment_stack"] = _stack(values["treatment_stack"], "treatment_stack")
        metrics = [{k: v for k, v in m.items()} for m in values.pop("metrics")]
        experiment = services.experiment_create(
            surface=surface, metrics=metrics, actor=request.user, now=timezone.now(), **values
        )
        return Response(ExperimentOutput(experiment).data, status=status.HTTP_201_CREATED)


class ExperimentStandardCreateApi(APIView):
    """Create (or fetch, idempotent per key) a running experiment with the standard metric set."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        surface = serializers.SlugField()
        treatment_stack = serializers.CharField()
        salt = serializers.CharField(
            max_length=64, required=False, help_text="default: the current allocation's salt"
        )
        key = serializers.SlugField(max_length=80, required=False)
        hypothesis = serializers.CharField(required=False, allow_blank=True, default="")
        sequential = serializers.BooleanField(required=False, default=True)

    @extend_schema(
        operation_id="experiments_create_standard",
        request=InputSerializer,
        responses={200: ExperimentOutput, 201: ExperimentOutput},
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        surface = Surface.objects.filter(key=values["surface"]).first()
        if surface is None:
            raise ApplicationError("unknown surface", field="surface")
        salt = values.get("salt")
        if not salt:
            allocation = registry.allocation_current(surface=surface)
            if allocation is None:
                raise ApplicationError("the surface has no allocation", field="surface")
            salt = allocation.salt
        stack = _stack(values["treatment_stack"], "treatment_stack")
        key = values.get("key")
        existed = bool(key) and Experiment.objects.filter(key=key).exists()
        experiment = services.experiment_create_for_surface(
            surface=surface,
            treatment_stack=stack,
            salt=salt,
            actor=request.user,
            now=timezone.now(),
            key=key,
            hypothesis=values["hypothesis"],
            sequential=values["sequential"],
        )
        return Response(
            ExperimentOutput(experiment).data,
            status=status.HTTP_200_OK if existed else status.HTTP_201_CREATED,
        )


class ExperimentDetailApi(APIView):
    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField(
            required=False,
            allow_blank=True,
            default="",
            help_text="required once the experiment runs (the design is locked)",
        )
        name = serializers.CharField(max_length=160, required=False)
        hypothesis = serializers.CharField(required=False, allow_blank=True)
        window_start = serializers.DateField(required=False)
        window_end = serializers.DateField(required=False, allow_null=True)
        pre_start = serializers.DateField(required=False, allow_null=True)
        pre_end = serializers.DateField(required=False, allow_null=True)
        alpha = serializers.FloatField(required=False)
        power = serializers.FloatField(required=False)
        sequential = serializers.BooleanField(required=False)
        metrics = MetricInput(many=True, required=False)

    @extend_schema(operation_id="experiments_retrieve", responses=ExperimentOutput)
    def get(self, request: Request, key: str) -> Response:
        return Response(ExperimentOutput(_experiment(key)).data)

    @extend_schema(
        operation_id="experiments_update_design",
        request=InputSerializer,
        responses={200: ExperimentOutput, 400: OpenApiResponse(description="bad design or missing reason")},
    )
    def patch(self, request: Request, key: str) -> Response:
        experiment = _experiment(key)
        data = self.InputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        reason = values.pop("reason", "")
        metrics = values.pop("metrics", None)
        experiment = services.experiment_update_design(
            experiment=experiment,
            actor=request.user,
            reason=reason,
            now=timezone.now(),
            metrics=[dict(m) for m in metrics] if metrics is not None else None,
            **values,
        )
        return Response(ExperimentOutput(experiment).data)


class ExperimentStartApi(APIView):
    permission_classes = [IsOperator]

    @extend_schema(operation_id="experiments_start", request=None, responses=ExperimentOutput)
    def post(self, request: Request, key: str) -> Response:
        experiment = services.experiment_start(
            experiment=_experiment(key), actor=request.user, now=timezone.now()
        )
        return Response(ExperimentOutput(experiment).data)


class ExperimentStopApi(APIView):
    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        reason = serializers.CharField()
        window_end = serializers.DateField(required=False)

    @extend_schema(operation_id="experiments_stop", request=InputSerializer, responses=ExperimentOutput)
    def post(self, request: Request, key: str) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        experiment = services.experiment_stop(
            experiment=_experiment(key), actor=request.user, now=timezone.now(), **data.validated_data
        )
        return Response(ExperimentOutput(experiment).data)


def _result_json(run: AnalysisRun) -> dict[str, Any]:
    """The run's result as JSON, read through the outcome adapter (any stored schema → the current one)."""
    outcome = analysis_outcome(run.result)
    return outcome.to_dict() if outcome is not None else {}


class AnalysisOutput(serializers.ModelSerializer):
    result = serializers.SerializerMethodField()

    def get_result(self, obj: AnalysisRun) -> dict[str, Any]:
        return _result_json(obj)

    class Meta:
        model = AnalysisRun
        fields = [
            "id",
            "source",
            "trigger",
            "as_of",
            "window_start",
            "window_end",
            "verdict",
            "query_ms",
            "analysis_ms",
            "created_by",
            "created_at",
            "result",
        ]


class AnalysisListApi(APIView):
    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        source = serializers.ChoiceField(  # type: ignore[assignment]  # DRF pops declared fields
            choices=AnalysisRun.Source.choices, default=AnalysisRun.Source.DATABASE
        )
        run_async = serializers.BooleanField(
            default=False, help_text="enqueue a Celery task instead of waiting"
        )

    @extend_schema(operation_id="experiment_analyses_list", responses=AnalysisOutput(many=True))
    def get(self, request: Request, key: str) -> Response:
        runs = selectors.analysis_list(experiment=_experiment(key))[:100]
        return Response(AnalysisOutput(runs, many=True).data)

    @extend_schema(
        operation_id="experiment_analyze",
        request=InputSerializer,
        responses={
            201: AnalysisOutput,
            202: inline_serializer("AnalysisQueued", {"task_id": serializers.CharField()}),
            409: OpenApiResponse(description="draft experiment"),
        },
    )
    def post(self, request: Request, key: str) -> Response:
        experiment = _experiment(key)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        if data.validated_data["run_async"]:
            from experiments.tasks import experiment_analyze_task

            result = experiment_analyze_task.delay(experiment.pk, "on_demand", data.validated_data["source"])
            return Response({"task_id": result.id}, status=status.HTTP_202_ACCEPTED)
        run = services.experiment_analyze(
            experiment=experiment,
            now=timezone.now(),
            source=data.validated_data["source"],
            actor=request.user,
        )
        return Response(AnalysisOutput(run).data, status=status.HTTP_201_CREATED)


class AnalysisDetailApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="experiment_analysis_retrieve",
        responses=inline_serializer(
            "AnalysisWithStatistics", {"analysis": AnalysisOutput(), "statistics": serializers.ListField()}
        ),
    )
    def get(self, request: Request, key: str, analysis_id: int) -> Response:
        run = get_object_or_404(AnalysisRun, pk=analysis_id, experiment__key=key)
        return Response({"analysis": AnalysisOutput(run).data, "statistics": run.statistics})


class ResultsApi(APIView):
    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="experiment_results",
        responses={200: OpenApiTypes.OBJECT, 404: OpenApiResponse(description="not analysed yet")},
    )
    def get(self, request: Request, key: str) -> Response:
        run = selectors.experiment_latest_analysis(experiment=_experiment(key))
        if run is None:
            return Response({"detail": "not analysed yet", "code": "not_found", "errors": {}}, status=404)
        return Response({"analysis_id": run.pk, **_result_json(run)})


class DecisionOutput(serializers.ModelSerializer):
    decided_by = serializers.CharField(source="decided_by_label")

    class Meta:
        model = Decision
        fields = [
            "id",
            "analysis",
            "verdict",
            "recommended",
            "reasons",
            "blocking",
            "days_needed",
            "note",
            "decided_by",
            "decided_at",
        ]


class DecisionListApi(APIView):
    permission_classes = [IsApprover]

    class InputSerializer(serializers.Serializer):
        verdict = serializers.ChoiceField(choices=Decision.Verdict.choices, required=False)
        note = serializers.CharField(required=False, allow_blank=True, default="")
        analysis = serializers.IntegerField(required=False)

    @extend_schema(operation_id="experiment_decisions_list", responses=DecisionOutput(many=True))
    def get(self, request: Request, key: str) -> Response:
        return Response(DecisionOutput(selectors.decision_list(experiment=_experiment(key)), many=True).data)

    @extend_schema(
        operation_id="experiment_decide",
        request=InputSerializer,
        responses={201: DecisionOutput, 400: OpenApiResponse(description="override without note")},
    )
    def post(self, request: Request, key: str) -> Response:
        experiment = _experiment(key)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        run = None
        if data.validated_data.get("analysis"):
            run = get_object_or_404(AnalysisRun, pk=data.validated_data["analysis"], experiment=experiment)
        decision = services.experiment_decide(
            experiment=experiment,
            actor=request.user,
            now=timezone.now(),
            analysis_run=run,
            verdict=data.validated_data.get("verdict"),
            note=data.validated_data["note"],
        )
        return Response(DecisionOutput(decision).data, status=status.HTTP_201_CREATED)


_CONTENT_TYPES = {
    "html": "text/html; charset=utf-8",
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
}


def _download(body: str, fmt: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=_CONTENT_TYPES[fmt])
    response["Content-Disposition"] = f'attachment; filename="{filename}.{fmt}"'
    return response


class ReadoutDownloadApi(APIView):
    """The readout of the latest (or ``?analysis=``) analysis: self-contained HTML, CSV or JSON."""

    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="experiment_readout_download",
        parameters=[OpenApiParameter("analysis", int, description="analysis id (default: latest)")],
        responses={
            (200, "text/html"): OpenApiTypes.STR,
            (200, "text/csv"): OpenApiTypes.STR,
            (200, "application/json"): OpenApiTypes.OBJECT,
        },
    )
    def get(self, request: Request, key: str, fmt: str) -> HttpResponse:
        if fmt not in _CONTENT_TYPES:
            raise Http404("readouts come as html, csv or json")
        experiment = _experiment(key)
        analysis_id = request.query_params.get("analysis")
        run: AnalysisRun | None
        if analysis_id:
            if not analysis_id.isdigit():
                raise ApplicationError("analysis must be an id", field="analysis")
            run = get_object_or_404(AnalysisRun, pk=int(analysis_id), experiment=experiment)
        else:
            run = selectors.experiment_latest_analysis(experiment=experiment)
        if run is None:
            raise ApplicationError(
                "the experiment has not been analysed yet",
                field="analysis",
                http_status=404,
                code="not_found",
            )
        data = readout.readout_data(experiment=experiment, run=run)
        name = f"readout-{experiment.key}-{run.as_of.isoformat()}"
        if fmt == "html":
            return _download(readout.render_html(data, standalone=True), fmt, name)
        if fmt == "csv":
            return _download(readout.render_csv(data), fmt, name)
        return _download(readout.render_json(data), fmt, name)


class DecisionReadoutApi(APIView):
    """The frozen readout snapshot kept with a decision."""

    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="experiment_decision_readout", responses={(200, "text/html"): OpenApiTypes.STR}
    )
    def get(self, request: Request, key: str, decision_id: int, fmt: str) -> HttpResponse:
        if fmt not in _CONTENT_TYPES:
            raise Http404("readouts come as html, csv or json")
        decision = get_object_or_404(Decision, pk=decision_id, experiment__key=key)
        name = f"decision-{key}-{decision.pk}"
        if fmt == "html":
            return _download(decision.readout_html, fmt, name)
        if fmt == "csv":
            return _download(readout.render_csv(decision.readout), fmt, name)
        return _download(readout.render_json(decision.readout), fmt, name)


class WarehouseSqlApi(APIView):
    """The experiment's aggregate query as plain SQL for a warehouse (same query the database runs).

    The exposure table needs the columns of ``experiments_exposure``: ``surface_id, salt, unit_id,
    arm, population, allocation_version, bucket, first_exposed_at`` (``bucket`` is the unit's
    assignment bucket under the salt; units whose bucket moved arm during the ramp are left out,
    and a null bucket keeps the unit as first exposed). The metric table needs
    ``surface_id, unit_id, day, metric, value``.
    """

    permission_classes = [IsViewer]

    @extend_schema(
        operation_id="experiment_warehouse_sql",
        parameters=[
            OpenApiParameter(
                "as_of", OpenApiTypes.DATE, description="last metric day (default: today or window end)"
            ),
            OpenApiParameter("exposure_table", str, description=f"default {aggregation.EXPOSURE_TABLE}"),
            OpenApiParameter("metric_table", str, description=f"default {aggregation.METRIC_TABLE}"),
            OpenApiParameter("output", str, description="json (default) or text (the bare SQL)"),
        ],
        responses=inline_serializer(
            "WarehouseSql",
            {
                "sql": serializers.CharField(),
                "as_of": serializers.DateField(),
                "columns": serializers.ListField(child=serializers.CharField()),
            },
        ),
    )
    def get(self, request: Request, key: str) -> Response | HttpResponse:
        experiment = _experiment(key)
        as_of_text = request.query_params.get("as_of")
        try:
            as_of = (
                dt.date.fromisoformat(as_of_text)
                if as_of_text
                else services.analysis_as_of(experiment, timezone.now())
            )
        except ValueError as exc:
            raise ApplicationError("as_of must be an ISO date", field="as_of") from exc
        try:
            spec = services.aggregate_spec(
                experiment,
                as_of=as_of,
                exposure_table=request.query_params.get("exposure_table") or aggregation.EXPOSURE_TABLE,
                metric_table=request.query_params.get("metric_table") or aggregation.METRIC_TABLE,
            )
            sql, params = aggregation.build_query(spec)
        except ValueError as exc:
            raise ApplicationError(str(exc), field="exposure_table") from exc
        text = aggregation.render_sql(sql, params)
        columns = [*aggregation.GROUP_FIELDS, *(f"{m.key}__{f}" for m in spec.metrics for f in m.fields())]
        if request.query_params.get("output") == "text":
            return HttpResponse(text + ";\n", content_type="text/plain; charset=utf-8")
        return Response({"sql": text, "as_of": as_of, "columns": columns})


class WarehouseStatisticsApi(APIView):
    """Upload the rows the exported SQL returned (per arm × population × exposure day)."""

    permission_classes = [IsOperator]

    class InputSerializer(serializers.Serializer):
        client_batch_id = serializers.CharField(max_length=128)
        as_of = serializers.DateField()
        rows = serializers.ListField(child=serializers.DictField(), allow_empty=False, max_length=100000)
        analyze = serializers.BooleanField(
            default=True, help_text="run the analysis on the uploaded statistics"
        )

    @extend_schema(
        operation_id="experiment_warehouse_upload",
        request=InputSerializer,
        responses={
            201: inline_serializer(
                "WarehouseUploaded",
                {
                    "upload": serializers.IntegerField(),
                    "rows": serializers.IntegerField(),
                    "analysis": AnalysisOutput(allow_null=True),
                },
            ),
            400: OpenApiResponse(description="a bad row rejects the upload; errors name rows[i].column"),
        },
    )
    def post(self, request: Request, key: str) -> Response:
        experiment = _experiment(key)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = data.validated_data
        upload = services.experiment_warehouse_upload(
            experiment=experiment,
            client_batch_id=values["client_batch_id"],
            rows=values["rows"],
            as_of=values["as_of"],
            actor=request.user,
            now=timezone.now(),
        )
        run = None
        if values["analyze"]:
            run = services.experiment_analyze(
                experiment=experiment,
                now=timezone.now(),
                source=AnalysisRun.Source.WAREHOUSE,
                actor=request.user,
            )
        return Response(
            {
                "upload": upload.pk,
                "rows": len(upload.rows),
                "analysis": AnalysisOutput(run).data if run else None,
            },
            status=status.HTTP_201_CREATED,
        )
