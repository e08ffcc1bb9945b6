"""Pre-registered designs: validation that names the field, locking, audited changes, idempotency."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from controlplane.core.errors import ApplicationError, ConflictError
from tests.experiments.conftest import NOW, WINDOW_START

pytestmark = [pytest.mark.django_db, pytest.mark.sqlite_path]


def _create(ramped: dict[str, Any], metrics: list[dict[str, Any]], **kw: Any) -> Any:
    from experiments.services import experiment_create, metric_definitions_ensure_standard

    metric_definitions_ensure_standard()
    return experiment_create(
        surface=ramped["groups"],
        key=kw.pop("key", "exp-a"),
        treatment_stack=ramped["unified"],
        salt=ramped["allocation"].salt,
        window_start=WINDOW_START,
        metrics=metrics,
        actor="system:test",
        now=NOW,
        **kw,
    )


PRIMARY = {"metric": "time_spent", "role": "primary", "margin": 0.02}


@pytest.mark.parametrize(
    ("metric", "field", "message"),
    [
        ({"metric": "likes", "role": "secondary", "margin": 0}, "metrics[1].margin", "must be > 0"),
        ({"metric": "likes", "role": "secondary", "margin": -0.01}, "metrics[1].margin", "must be > 0"),
        (
            {"metric": "scroll_depth", "role": "guardrail", "margin": 0.05, "kind": "mean"},
            "metrics[1].direction",
            "a guardrail needs a direction",
        ),
        (
            {"metric": "reply_rate", "role": "secondary", "kind": "ratio", "numerator": "comments"},
            "metrics[1].denominator",
            "a ratio metric needs a denominator",
        ),
        ({"metric": "error_rate", "role": "guardrail"}, "metrics[1].margin", "non-inferiority margin"),
        ({"metric": "likes", "role": "boss"}, "metrics[1].role", "must be one of"),
        (
            {
                "metric": "p95",
                "role": "guardrail",
                "kind": "quantile",
                "direction": "lower",
                "margin": 5,
                "margin_kind": "absolute",
            },
            "metrics[1].quantile",
            "quantile between 0 and 1",
        ),
    ],
)
def test_bad_designs_are_refused_naming_the_field(
    ramped: dict[str, Any], metric: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(ApplicationError) as info:
        _create(ramped, [PRIMARY, metric])
    assert field in info.value.errors
    assert any(message in m for m in info.value.errors[field])
    from experiments.models import Experiment

    assert not Experiment.objects.exists()


def test_a_design_needs_a_primary_and_a_unified_treatment(ramped: dict[str, Any]) -> None:
    with pytest.raises(ApplicationError) as info:
        _create(ramped, [{"metric": "likes", "role": "secondary"}])
    assert info.value.field == "metrics"
    from experiments.services import experiment_create

    with pytest.raises(ApplicationError) as info:
        experiment_create(
            surface=ramped["groups"],
            key="legacy",
            treatment_stack=ramped["content_first"],
            salt="s",
            window_start=WINDOW_START,
            metrics=[PRIMARY],
            actor="system:test",
            now=NOW,
        )
    assert info.value.field == "treatment_stack"


def test_inline_metric_definitions_are_created(ramped: dict[str, Any]) -> None:
    from experiments.models import MetricDefinition

    experiment = _create(
        ramped,
        [
            PRIMARY,
            {
                "metric": "reply_rate",
                "role": "guardrail",
                "kind": "ratio",
                "numerator": "comments",
                "denominator": "impressions",
                "direction": "higher",
                "margin": 0.05,
            },
        ],
    )
    definition = MetricDefinition.objects.get(key="reply_rate")
    assert (definition.kind, definition.numerator, definition.denominator, definition.ingestible) == (
        "ratio",
        "comments",
        "impressions",
        False,
    )
    assert experiment.metrics.get(metric=definition).direction == "higher"
    # The pre-period defaults to the 14 days before the window.
    assert (experiment.pre_start, experiment.pre_end) == (
        WINDOW_START - dt.timedelta(days=14),
        WINDOW_START - dt.timedelta(days=1),
    )


def test_running_design_is_locked_and_changes_are_audited_with_a_reason(ramped: dict[str, Any]) -> None:
    from controlplane.core.models import AuditEvent
    from experiments.services import experiment_start, experiment_update_design

    experiment = _create(ramped, [PRIMARY])
    # Drafts change freely.
    experiment_update_design(experiment=experiment, actor="system:test", hypothesis="draft tweak", now=NOW)
    experiment = experiment_start(experiment=experiment, actor="system:test", now=NOW)
    assert experiment.locked_at == NOW and experiment.status == "running"
    with pytest.raises(ApplicationError) as info:
        experiment_update_design(experiment=experiment, actor="system:test", alpha=0.01, now=NOW)
    assert info.value.field == "reason"
    experiment_update_design(
        experiment=experiment,
        actor="system:test",
        reason="legal asked for a stricter α",
        alpha=0.01,
        metrics=[{**PRIMARY, "margin": 0.01}],
        now=NOW,
    )
    event = AuditEvent.objects.get(verb="experiment.design_change")
    assert event.reason == "legal asked for a stricter α"
    assert event.before["alpha"] == 0.05 and event.after["alpha"] == 0.01
    assert event.before["metrics"][0]["margin"] == 0.02 and event.after["metrics"][0]["margin"] == 0.01
    with pytest.raises(ApplicationError) as info:
        experiment_update_design(
            experiment=experiment,
            actor="system:test",
            reason="x",
            metrics=[{**PRIMARY, "margin": 0.0}],
            now=NOW,
        )
    assert "metrics[0].margin" in info.value.errors


def test_create_for_surface_is_idempotent_per_key(ramped: dict[str, Any]) -> None:
    from experiments.metrics import STANDARD_SET
    from experiments.services import experiment_create_for_surface

    kwargs = {
        "surface": ramped["groups"],
        "treatment_stack": ramped["unified"],
        "salt": ramped["allocation"].salt,
        "actor": "system:test",
        "now": NOW,
    }
    first = experiment_create_for_surface(**kwargs)
    again = experiment_create_for_surface(**kwargs)
    assert first.pk == again.pk
    assert first.status == "running" and first.locked_at is not None
    roles = {m.metric.key: (m.role, m.direction) for m in first.metrics.select_related("metric")}
    assert roles == {s.key: (s.role, roles[s.key][1]) for s in STANDARD_SET}
    assert roles["latency_p99"] == ("guardrail", "lower") and roles["hide_report_rate"] == (
        "guardrail",
        "lower",
    )
    assert first.controls == {"content_first": "content-first@1", "interest_first": "interest-first@1"}
    with pytest.raises(ConflictError):
        experiment_create_for_surface(**{**kwargs, "salt": "another"}, key=first.key)


def test_stop_fixes_the_window_and_needs_a_reason(ramped: dict[str, Any], experiment: Any) -> None:
    from experiments.services import experiment_stop

    with pytest.raises(ApplicationError):
        experiment_stop(experiment=experiment, actor="system:test", reason="", now=NOW)
    stopped = experiment_stop(
        experiment=experiment, actor="system:test", reason="enough data", now=NOW + dt.timedelta(days=10)
    )
    assert stopped.status == "stopped" and stopped.window_end == (NOW + dt.timedelta(days=9)).date()
