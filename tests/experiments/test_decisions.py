"""End to end: simulated traffic with effects injected through the world's knobs → readout → decision.

The knobs are those of ``rankers.engine.world.Effects`` (hide_multiplier, extra_latency_ms, …),
applied to treatment units by the fast numpy world in ``simworld``; the experiment is the
standard one ``experiment_create_for_surface`` registers, analysed by the real service.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
import scipy.stats

from tests.experiments.conftest import NOW, WINDOW_START
from tests.experiments.simworld import Knobs, populate

pytestmark = pytest.mark.django_db
PRE_DAY = WINDOW_START - dt.timedelta(days=1)
AFTER = NOW + dt.timedelta(days=3)


def _run(
    ramped: dict[str, Any], experiment: Any, *, n_units: int, effects: Any = None, seed: int = 7, **kw: Any
) -> Any:
    from experiments.services import experiment_analyze

    populate(
        surface=ramped["groups"],
        allocation=ramped["allocation"],
        n_units=n_units,
        window_start=WINDOW_START,
        window_days=3,
        pre_day=PRE_DAY,
        effects=effects,
        seed=seed,
        **kw,
    )
    return experiment_analyze(experiment=experiment, now=AFTER)


def _metric(run: Any, key: str, population: str = "pooled") -> dict[str, Any]:
    return next(m for m in run.result["metrics"] if m["metric"] == key and m["population"] == population)


@pytest.mark.sqlite_path
def test_neutral_change_ships_and_the_decision_keeps_a_frozen_readout(
    ramped: dict[str, Any], experiment: Any
) -> None:
    from controlplane.core.models import AuditEvent
    from experiments.models import Decision, Experiment
    from experiments.services import experiment_decide

    run = _run(ramped, experiment, n_units=10000)
    decision = run.result["decision"]
    assert decision["verdict"] == "ship", decision
    assert decision["blocking"] == []
    assert {h["check"]: h["ok"] for h in run.result["health"]} == {
        "srm": True,
        "no_data": True,
        "both_arms": True,
        "pre_period_balance": True,
    }
    for key in ("time_spent", "meaningful_interactions"):
        assert _metric(run, key)["verdict"] in ("equivalent", "better")
        assert _metric(run, key)["variance_reduction"] is None  # pooled; per population below
        assert _metric(run, key, "content_first")["variance_reduction"] > 0.3
    for key in ("hide_report_rate", "integrity_rate", "latency_p99", "error_rate"):
        assert _metric(run, key)["verdict"] == "noninferior", key
    # Per population + pooled entries for each of the 9 standard metrics.
    assert len(run.result["metrics"]) == 9 * 3
    assert set(run.result["units"]["by_population"]) == {"content_first", "interest_first"}

    recorded = experiment_decide(experiment=experiment, actor="system:test", now=AFTER)
    assert recorded.verdict == recorded.recommended == Decision.Verdict.SHIP
    assert recorded.numbers["decision"] == decision
    assert recorded.readout["result"]["decision"] == decision
    assert "plotly" in recorded.readout_html and "Recommendation: ship" in recorded.readout_html
    experiment.refresh_from_db()
    assert experiment.status == Experiment.Status.DECIDED
    assert AuditEvent.objects.filter(verb="experiment.decide.ship", target_id=str(experiment.pk)).exists()


@pytest.mark.sqlite_path
def test_hides_regression_is_caught_by_its_guardrail(ramped: dict[str, Any], experiment: Any) -> None:
    run = _run(ramped, experiment, n_units=5000, effects=Knobs(hide_multiplier=1.5, report_multiplier=1.5))
    decision = run.result["decision"]
    assert decision["verdict"] == "rollback", decision
    assert "hide_report_rate" in decision["blocking"]
    hide = _metric(run, "hide_report_rate")
    assert hide["verdict"] == "inferior"
    assert hide["rel_lift"] == pytest.approx(0.5, abs=0.08)
    assert not hide["noninferiority"]["noninferior"]
    assert any("Hide + report rate" in reason for reason in decision["reasons"])
    # The untouched guardrails stay non-inferior: the decision names only the guilty metric.
    assert _metric(run, "integrity_rate")["verdict"] == "noninferior"


def test_latency_regression_is_caught_by_the_p99_guardrail(ramped: dict[str, Any], experiment: Any) -> None:
    run = _run(ramped, experiment, n_units=3000, effects=Knobs(extra_latency_ms=80.0))
    latency = _metric(run, "latency_p99")
    assert latency["verdict"] == "inferior"
    assert latency["diff"] == pytest.approx(80.0, abs=25.0)
    assert run.result["decision"]["verdict"] == "rollback"
    assert "latency_p99" in run.result["decision"]["blocking"]


@pytest.mark.sqlite_path
def test_underpowered_run_says_extend_with_days_needed(ramped: dict[str, Any], experiment: Any) -> None:
    run = _run(ramped, experiment, n_units=2000, arrival_days=3)
    decision = run.result["decision"]
    assert decision["verdict"] == "extend", decision
    assert decision["days_needed"] is not None and 0 < decision["days_needed"] <= 90
    assert set(decision["blocking"]) & {"time_spent", "meaningful_interactions"}
    assert any("more days" in reason for reason in decision["reasons"])
    # The projection is the power calculation: at the projected sample the blocking TOST has ~80 % power.
    blocking = next(k for k in decision["blocking"] if k in ("time_spent", "meaningful_interactions"))
    tm = _metric(run, blocking)
    assert tm["verdict"] == "inconclusive"
    n_now = tm["n_control"] + tm["n_treatment"]
    n_needed = tm["units_needed"]
    assert n_needed > n_now
    se_then = tm["se"] * (n_now / n_needed) ** 0.5  # se ∝ 1/√N at a fixed split
    margin = 0.02 * abs(tm["control_mean"])
    z = scipy.stats.norm.ppf(0.95)
    power = 2 * scipy.stats.norm.cdf(margin / se_then - z) - 1  # TOST power at a true difference of 0
    assert power == pytest.approx(0.8, abs=0.01)
    rate = run.result["daily_new_units"]
    assert decision["days_needed"] >= (n_needed - n_now) / rate - 0.1


def test_srm_holds_the_decision(ramped: dict[str, Any], experiment: Any) -> None:
    from controlplane.serving.models import Exposure

    populate(
        surface=ramped["groups"],
        allocation=ramped["allocation"],
        n_units=4000,
        window_start=WINDOW_START,
        window_days=3,
        pre_day=PRE_DAY,
    )
    # A logging bug drops a quarter of the treatment exposures of content-first users.
    ids = list(
        Exposure.objects.filter(arm="treatment", population="content_first").values_list("pk", flat=True)[::4]
    )
    Exposure.objects.filter(pk__in=ids).delete()
    from experiments.services import experiment_analyze

    run = experiment_analyze(experiment=experiment, now=AFTER)
    assert run.result["srm"]["content_first"]["flagged"] is True
    assert run.result["srm"]["interest_first"]["flagged"] is False
    assert run.result["decision"]["verdict"] == "hold"
    assert any("sample ratio mismatch" in r for r in run.result["decision"]["reasons"])


@pytest.mark.sqlite_path
def test_sequential_looks_chain_and_timeline_grows(ramped: dict[str, Any], experiment: Any) -> None:
    from experiments.selectors import experiment_timeline
    from experiments.services import experiment_analyze

    populate(
        surface=ramped["groups"],
        allocation=ramped["allocation"],
        n_units=1500,
        window_start=WINDOW_START,
        window_days=3,
        pre_day=PRE_DAY,
        latency_per_unit_day=1,
    )
    first = experiment_analyze(experiment=experiment, now=NOW + dt.timedelta(days=1))
    second = experiment_analyze(experiment=experiment, now=NOW + dt.timedelta(days=2))
    assert first.as_of < second.as_of
    seq1 = _metric(first, "time_spent")["sequential"]
    seq2 = _metric(second, "time_spent")["sequential"]
    assert seq1["looks"] == 1 and seq2["looks"] == 2
    # Always-valid: the running p-value never increases and the interval only shrinks.
    assert seq2["p_value"] <= seq1["p_value"]
    assert seq2["ci"][1] - seq2["ci"][0] <= seq1["ci"][1] - seq1["ci"][0] + 1e-12
    days = {p["day"] for p in experiment_timeline(experiment=experiment)}
    assert days == {first.as_of.isoformat(), second.as_of.isoformat()}


def test_no_exposures_says_extend_without_a_projection(ramped: dict[str, Any], experiment: Any) -> None:
    from experiments.services import experiment_analyze

    run = experiment_analyze(experiment=experiment, now=AFTER)
    assert run.result["decision"]["verdict"] == "extend"
    assert run.result["decision"]["days_needed"] is None
    assert not next(h for h in run.result["health"] if h["check"] == "no_data")["ok"]
    assert all(m["verdict"] == "not_computable" for m in run.result["metrics"])
