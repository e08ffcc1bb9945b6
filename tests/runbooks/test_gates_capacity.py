"""Gate logic on analysis results of the contract shape, and capacity arithmetic worked by hand."""

from __future__ import annotations

import math

import pytest

from experiments.outcome import MetricOutcome
from migrations_runbooks import capacity, gates
from migrations_runbooks.gates import HOLD, PASS, ROLLBACK, WAIT, StepFacts, evaluate, summarize
from tests.runbooks.conftest import analysis_result, metric


def facts(
    elapsed_h: float = 48, min_h: float = 24, min_units: int = 100, config=None, bp: int = 500
) -> StepFacts:
    return StepFacts(
        name="5%",
        treatment_bp=bp,
        shadow_bp=0,
        min_duration_s=min_h * 3600,
        min_units=min_units,
        gates=config or {**gates.DEFAULT_RAMP_GATES, "capacity": False},
        elapsed_s=elapsed_h * 3600,
        slo_ms=80.0,
    )


def outcome(result, **kw):
    return summarize(evaluate(facts(**kw), analysis=result))


def test_healthy_mature_step_passes():
    assert outcome(analysis_result()) == PASS


def test_young_step_waits_even_when_everything_passes():
    result = evaluate(facts(elapsed_h=3), analysis=analysis_result())
    assert summarize(result) == WAIT
    [duration] = [g for g in result if g.gate == "min_duration"]
    assert (duration.value, duration.threshold) == (3 * 3600, 24 * 3600)


def test_too_few_units_waits():
    result = evaluate(facts(min_units=10_000), analysis=analysis_result(control=9000, treatment=400))
    [units] = [g for g in result if g.gate == "min_units"]
    assert units.outcome == WAIT and units.value == 400
    assert summarize(result) == WAIT


def test_srm_holds_with_p_value_and_threshold():
    result = evaluate(facts(), analysis=analysis_result(srm_p=1e-6))
    [srm] = [g for g in result if g.gate == "srm"]
    assert (srm.outcome, srm.value, srm.threshold) == (HOLD, 1e-6, 0.001)
    assert summarize(result) == HOLD


def test_guardrail_worse_rolls_back_even_on_a_young_step():
    result = evaluate(facts(elapsed_h=1), analysis=analysis_result(hide_verdict="worse"))
    assert summarize(result) == ROLLBACK
    [breach] = gates.blocking(result)
    assert breach.subject == "hide_report_rate/pooled" and "significantly worse" in breach.reason


def test_noninferiority_shown_passes_even_if_sequentially_worse_within_margin():
    within_margin = {"ci": [0.0005, 0.002], "computable": True}
    assert outcome(analysis_result(hide_verdict="noninferior", hide_sequential=within_margin)) == PASS
    assert outcome(analysis_result(hide_verdict="inferior", hide_sequential=within_margin)) == ROLLBACK


def test_sequential_interval_decides_over_fixed_horizon_verdict():
    # Lower is better: an always-valid CI wholly above 0 is a breach even when the fixed-horizon
    # verdict is only 'inconclusive'.
    breach = {"ci": [0.001, 0.004], "computable": True}
    assert outcome(analysis_result(hide_verdict="inconclusive", hide_sequential=breach)) == ROLLBACK
    # A CI straddling 0 means "not significantly worse under sequential monitoring": passes, even
    # though non-inferiority is not established yet (and even if a fixed-horizon p-value peeked < α).
    fine = {"ci": [-0.002, 0.004], "computable": True}
    assert outcome(analysis_result(hide_verdict="inconclusive", hide_sequential=fine)) == PASS
    assert outcome(analysis_result(hide_verdict="worse", hide_sequential=fine)) == PASS


def test_inconclusive_guardrail_without_sequential_holds_when_mature():
    assert outcome(analysis_result(hide_verdict="inconclusive")) == HOLD
    assert outcome(analysis_result(hide_verdict="inconclusive"), elapsed_h=2) == WAIT


def test_higher_is_better_sequential_direction():
    # Decided by experiments (the outcome adapter derives it for results stored without it).
    m = metric("time_spent", "guardrail", direction="higher", sequential={"ci": [-0.5, -0.1]})
    assert MetricOutcome.from_dict(m).sequential_worse is True
    m = metric("time_spent", "guardrail", direction="higher", sequential={"ci": [0.1, 0.5]})
    assert MetricOutcome.from_dict(m).sequential_worse is False
    assert MetricOutcome.from_dict(metric("x", "guardrail", sequential=None)).sequential_worse is None


def test_primary_significantly_worse_holds_not_rolls_back():
    result = evaluate(facts(), analysis=analysis_result(primary_verdict="worse"))
    assert summarize(result) == HOLD
    assert [g.subject for g in gates.blocking(result)] == ["time_spent/pooled"]


def test_not_computable_metric_never_passes():
    result = analysis_result()
    result["metrics"][2]["verdict"] = "not_computable"
    result["metrics"][2]["computable"] = False
    assert outcome(result) == HOLD


def test_latency_over_slo_holds_with_value_and_threshold():
    result = evaluate(facts(), analysis=analysis_result(latency_p99=91.5))
    [lat] = [g for g in result if g.gate == "latency_slo"]
    assert (lat.outcome, lat.value, lat.threshold) == (HOLD, 91.5, 80.0)


def test_missing_analysis_waits_then_holds():
    young = evaluate(facts(elapsed_h=2), analysis=None, analysis_error="boom")
    mature = evaluate(facts(), analysis=None, analysis_error="boom")
    assert summarize(young) == WAIT and summarize(mature) == HOLD
    assert "boom" in gates.blocking(mature)[0].reason


def test_ship_decision_gate():
    config = {**gates.DEFAULT_RAMP_GATES, "capacity": False, "ship_decision": True}
    assert outcome(analysis_result(decision="ship"), config=config) == PASS
    assert outcome(analysis_result(decision="extend"), config=config) == HOLD


def test_parity_gates_on_shadow_step():
    shadow = StepFacts("shadow", 0, 1000, 3600, 100, gates.DEFAULT_SHADOW_GATES, 7200, 80.0)
    good = {
        "n": 500,
        "overlap_10": 0.5,
        "rbo": 0.6,
        "calibration_diff": 0.01,
        "error_rate": 0.0,
        "shadow_p99_ms": 70,
    }
    assert summarize(evaluate(shadow, analysis=None, parity=good)) == PASS
    bad = {**good, "calibration_diff": 0.2}
    result = evaluate(shadow, analysis=None, parity=bad)
    [held] = gates.blocking(result)
    assert (held.gate, held.subject, held.value, held.threshold, held.comparator) == (
        "parity",
        "calibration_diff",
        0.2,
        0.05,
        "<=",
    )
    slow = {**good, "shadow_p99_ms": 120}
    assert [g.gate for g in gates.blocking(evaluate(shadow, analysis=None, parity=slow))] == ["latency_slo"]
    assert summarize(evaluate(shadow, analysis=None, parity=None)) == HOLD


def test_aggregate_parity_weights_by_n_and_takes_worst_p99():
    rows = [
        {
            "day": "d1",
            "n": 100,
            "overlap_10": 0.4,
            "shadow_p99_ms": 60,
            "errors": 1,
            "timeouts": 0,
            "error_rate": 0.01,
        },
        {
            "day": "d2",
            "n": 300,
            "overlap_10": 0.8,
            "shadow_p99_ms": 75,
            "errors": 2,
            "timeouts": 1,
            "error_rate": 0.01,
        },
        {
            "day": "d3",
            "n": 0,
            "overlap_10": None,
            "shadow_p99_ms": None,
            "errors": 0,
            "timeouts": 0,
            "error_rate": None,
        },
    ]
    agg = gates.aggregate_parity(rows)
    assert agg["n"] == 400
    assert agg["overlap_10"] == pytest.approx((0.4 * 100 + 0.8 * 300) / 400)
    assert agg["shadow_p99_ms"] == 75 and agg["error_rate"] == pytest.approx(4 / 400)


def test_gate_config_validation():
    assert gates.validate_config({"parity": True})["parity"] == gates.DEFAULT_PARITY_THRESHOLDS
    for bad in ({"latency": 5}, {"srm": "yes"}, {"parity": {"rbo": {"min": "x"}}}, {"nope": True}, []):
        with pytest.raises(ValueError):
            gates.validate_config(bad)


# -- capacity ---------------------------------------------------------------------------------------
STACKS = {
    "cf@1": capacity.StackSpec("cf@1", "content_first", "cpu", 220.0),
    "if@1": capacity.StackSpec("if@1", "interest_first", "cpu", 180.0),
    "u@1": capacity.StackSpec("u@1", "unified_mtl", "gpu", 900.0, 3.0),
}
PRICES = capacity.Prices(
    headroom=0.3,
    gpu_replica_cost_per_hour=2.5,
    cpu_replica_cost_per_hour=0.4,
    host_cpu_cores_per_gpu_replica=2.0,
)
GROUPS = (("content_first", "cf@1", 6000), ("interest_first", "if@1", 4000))


def test_qps_split_by_shares_and_shadow():
    load = capacity.SurfaceLoad("groups", 800.0, GROUPS, "u@1", 2500, "u@1", 1000)
    qps = capacity.stack_qps([load])
    assert qps["u@1"] == pytest.approx((200.0, 80.0))  # 25% live + 10% of requests shadowed
    assert qps["cf@1"][0] == pytest.approx(800 * 0.75 * 0.6)
    assert qps["if@1"][0] == pytest.approx(800 * 0.75 * 0.4)


def test_replicas_by_hand():
    # groups at 25%: cf 360 qps → ⌈360·1.3/220⌉ = ⌈2.127⌉ = 3; if 240 → ⌈1.733⌉ = 2.
    # unified 200 live + 80 shadow = 280 qps → throughput ⌈364/900⌉ = 1; host CPU 364·3 ms = 1.092
    # cores → ⌈0.546⌉ = 1 replica.
    load = capacity.SurfaceLoad("groups", 800.0, GROUPS, "u@1", 2500, "u@1", 1000)
    plan = capacity.plan_fleet([load], STACKS, PRICES)
    assert {s.stack: s.replicas for s in plan.stacks} == {"cf@1": 3, "if@1": 2, "u@1": 1}
    assert plan.stack("u@1").host_cpu_cores == pytest.approx(280 * 1.3 * 3 / 1000)
    assert plan.cost_per_hour == pytest.approx(5 * 0.4 + 2.5)


def test_host_cpu_can_size_the_gpu_fleet():
    # pages at 100%: 1200 qps·1.3 = 1560 → throughput ⌈1560/900⌉ = 2 GPU replicas, but host CPU
    # 1560·3 ms = 4.68 cores / 2 cores per replica → 3 replicas: host CPU binds.
    load = capacity.SurfaceLoad("pages", 1200.0, (("content_first", "cf@1", 10000),), "u@1", 10000)
    unified = capacity.plan_fleet([load], STACKS, PRICES).stack("u@1")
    assert (unified.replicas_by_throughput, unified.replicas_by_host_cpu, unified.replicas) == (2, 3, 3)
    assert unified.binding == "host_cpu"
    roomy = capacity.Prices(host_cpu_cores_per_gpu_replica=8.0)
    assert capacity.plan_fleet([load], STACKS, roomy).stack("u@1").binding == "throughput"


def test_savings_when_legacy_retires():
    base = capacity.SurfaceLoad("pages", 1200.0, (("content_first", "cf@1", 10000),))
    promoted = capacity.SurfaceLoad("pages", 1200.0, (("content_first", "u@1", 10000),))
    before = capacity.plan_fleet([base], STACKS, PRICES)
    after = capacity.plan_fleet([promoted], STACKS, PRICES)
    saved = capacity.savings(before, after)
    cf = math.ceil(1200 * 1.3 / 220)  # 8 CPU replicas
    assert saved["legacy_replicas_freed"] == cf == 8
    assert saved["unified_replicas_added"] == 3
    assert saved["cost_saved_per_hour"] == pytest.approx(8 * 0.4 - 3 * 2.5)


def test_limits_and_unknown_throughput():
    load = capacity.SurfaceLoad("pages", 1200.0, (("content_first", "cf@1", 10000),), "u@1", 10000)
    plan = capacity.plan_fleet([load], STACKS, PRICES)
    check = capacity.check_limits(plan, capacity.Prices(max_gpu_replicas=2))
    assert not check.ok and "fleet limit 2" in check.reason
    assert capacity.check_limits(plan, capacity.Prices(max_gpu_replicas=3)).ok
    unknown = {**STACKS, "u@1": capacity.StackSpec("u@1", "unified_mtl", "gpu", None, 3.0)}
    check = capacity.check_limits(capacity.plan_fleet([load], unknown, PRICES), PRICES)
    assert not check.ok and not check.computable and "no measured throughput" in check.reason
    gate = gates.capacity_gate(check, subject="100%")
    assert gate.outcome == HOLD


def test_significantly_worse_within_the_margin_holds_and_beyond_it_rolls_back():
    """A guardrail worse than control is a breach only when its estimated harm exceeds the margin."""
    worse = {"ci": [0.0002, 0.0009], "computable": True}
    result = analysis_result(hide_verdict="inconclusive", hide_sequential=worse)
    for m in result["metrics"]:
        if m["metric"] == "hide_report_rate":
            m.update(margin=0.03, margin_kind="relative", treatment_mean=0.0204, rel_lift=0.02, diff=0.0004)
    gates_ = evaluate(facts(), analysis=result)
    assert summarize(gates_) == HOLD
    [held] = [g for g in gates_ if g.outcome == HOLD]
    assert "within its margin" in held.reason and held.subject == "hide_report_rate/pooled"
    for m in result["metrics"]:
        if m["metric"] == "hide_report_rate":
            m.update(treatment_mean=0.0212, rel_lift=0.06, diff=0.0012)
    assert outcome(result) == ROLLBACK
    # Absolute margins compare the difference (latency in ms, lower is better).
    m = metric("latency_p99", "guardrail", direction="lower", control_mean=40.0, treatment_mean=60.0)
    assert (
        MetricOutcome.from_dict({**m, "margin": 25.0, "margin_kind": "absolute"}).harm_beyond_margin is False
    )
    assert (
        MetricOutcome.from_dict({**m, "margin": 15.0, "margin_kind": "absolute"}).harm_beyond_margin is True
    )
