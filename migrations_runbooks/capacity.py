"""Capacity plans: QPS per stack, replicas (GPU for the unified stack, CPU for legacy), cost and savings.

Model (per stack, over every surface it serves):

* QPS. A surface at peak ``Q`` with treatment share ``t = treatment_bp/10000`` sends ``Q·t`` to the
  treatment stack and ``Q·(1−t)·s_p`` to the legacy stack of each population ``p`` (share ``s_p``;
  the holdout stays on legacy). Shadowing re-ranks ``Q·shadow_bp/10000`` requests on the shadow
  stack as well, so shadow load is real load on that fleet.
* Replicas from throughput. ``throughput_per_replica`` is the measured request rate one replica
  sustains *within the p99 budget*, so ``n_tp = ⌈Q_stack·(1+h)/throughput⌉`` with headroom ``h``
  (capacity planning with a utilisation ceiling, e.g. Google SRE book ch. 18 "N+2" style headroom).
* Host CPU. A GPU replica still needs host CPU for retrieval, pass 0 and pass 2
  (``host_cpu_ms_per_request``, ~3 ms measured). Cores needed ``= Q_stack·(1+h)·ms/1000``; each GPU
  replica brings ``host_cpu_cores_per_gpu_replica`` cores, so ``n_cpu = ⌈cores/cores_per_replica⌉``
  and the fleet is ``max(n_tp, n_cpu)`` — host CPU, not the GPU, can be what sizes it.
* Cost per hour ``= n·price(device)``; savings are against the surface's baseline (every population
  on its legacy stack, nothing treated, nothing shadowed).

The functions in the first half are pure (plain dataclasses in, dataclasses out); the second half
reads the registry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

BUCKETS = 10_000


@dataclass(frozen=True, slots=True)
class StackSpec:
    label: str
    kind: str
    device: str
    throughput_per_replica: float | None
    host_cpu_ms_per_request: float | None = None
    status: str = "active"


@dataclass(frozen=True, slots=True)
class SurfaceLoad:
    """One surface's traffic under some allocation (current, or a step being considered)."""

    surface: str
    peak_qps: float
    populations: tuple[tuple[str, str, int], ...]  # (population, legacy stack label, bp)
    treatment_stack: str | None = None
    treatment_bp: int = 0
    shadow_stack: str | None = None
    shadow_bp: int = 0


@dataclass(frozen=True, slots=True)
class Prices:
    """Defaults mirror ``CapacityConfig`` (AWS on-demand: g5.xlarge GPU, c6i.8xlarge CPU replicas)."""

    headroom: float = 0.3
    gpu_replica_cost_per_hour: float = 1.006
    cpu_replica_cost_per_hour: float = 1.36
    host_cpu_cores_per_gpu_replica: float = 2.0
    min_replicas: int = 1
    max_gpu_replicas: int | None = None
    max_cpu_replicas: int | None = None


@dataclass(frozen=True, slots=True)
class StackPlan:
    stack: str
    kind: str
    device: str
    live_qps: float
    shadow_qps: float
    qps: float
    replicas_by_throughput: int | None
    host_cpu_cores: float
    replicas_by_host_cpu: int
    replicas: int | None
    binding: str  # "throughput" | "host_cpu" | "idle" | "unknown"
    cost_per_hour: float | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class FleetPlan:
    stacks: tuple[StackPlan, ...]
    gpu_replicas: int
    cpu_replicas: int
    cost_per_hour: float
    computable: bool
    reasons: tuple[str, ...] = field(default=())

    def stack(self, label: str) -> StackPlan | None:
        return next((s for s in self.stacks if s.stack == label), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stacks": [asdict(s) for s in self.stacks],
            "gpu_replicas": self.gpu_replicas,
            "cpu_replicas": self.cpu_replicas,
            "cost_per_hour": round(self.cost_per_hour, 4),
            "computable": self.computable,
            "reasons": list(self.reasons),
        }


def stack_qps(loads: Iterable[SurfaceLoad]) -> dict[str, tuple[float, float]]:
    """(live QPS, shadow QPS) per stack label, summed over surfaces."""
    out: dict[str, list[float]] = {}
    for load in loads:
        treated = load.treatment_bp / BUCKETS if load.treatment_stack else 0.0
        for _population, stack, bp in load.populations:
            out.setdefault(stack, [0.0, 0.0])[0] += load.peak_qps * (1.0 - treated) * bp / BUCKETS
        if load.treatment_stack and treated:
            out.setdefault(load.treatment_stack, [0.0, 0.0])[0] += load.peak_qps * treated
        if load.shadow_stack and load.shadow_bp:
            out.setdefault(load.shadow_stack, [0.0, 0.0])[1] += load.peak_qps * load.shadow_bp / BUCKETS
    return {k: (v[0], v[1]) for k, v in out.items()}


def plan_stack(spec: StackSpec, live_qps: float, shadow_qps: float, prices: Prices) -> StackPlan:
    qps = live_qps + shadow_qps
    price = prices.gpu_replica_cost_per_hour if spec.device == "gpu" else prices.cpu_replica_cost_per_hour
    if qps <= 0:
        return StackPlan(spec.label, spec.kind, spec.device, 0.0, 0.0, 0.0, 0, 0.0, 0, 0, "idle", 0.0)
    demand = qps * (1.0 + prices.headroom)
    host_cores = 0.0
    by_host = 0
    if spec.device == "gpu" and spec.host_cpu_ms_per_request:
        host_cores = demand * spec.host_cpu_ms_per_request / 1000.0
        by_host = math.ceil(host_cores / prices.host_cpu_cores_per_gpu_replica - 1e-9)
    if not spec.throughput_per_replica or spec.throughput_per_replica <= 0:
        return StackPlan(
            spec.label,
            spec.kind,
            spec.device,
            live_qps,
            shadow_qps,
            qps,
            None,
            host_cores,
            by_host,
            None,
            "unknown",
            None,
            reason=f"{spec.label} has no measured throughput per replica",
        )
    by_tp = math.ceil(demand / spec.throughput_per_replica - 1e-9)
    replicas = max(prices.min_replicas, by_tp, by_host)
    binding = "host_cpu" if by_host > by_tp else "throughput"
    return StackPlan(
        spec.label,
        spec.kind,
        spec.device,
        live_qps,
        shadow_qps,
        qps,
        by_tp,
        round(host_cores, 4),
        by_host,
        replicas,
        binding,
        replicas * price,
    )


def plan_fleet(loads: Sequence[SurfaceLoad], stacks: Mapping[str, StackSpec], prices: Prices) -> FleetPlan:
    """Replicas and cost per stack for a set of surface loads (stacks shared across surfaces add up)."""
    plans: list[StackPlan] = []
    reasons: list[str] = []
    for label, (live, shadow) in sorted(stack_qps(loads).items()):
        spec = stacks.get(label)
        if spec is None:
            reasons.append(f"stack {label} is not registered")
            continue
        plan = plan_stack(spec, live, shadow, prices)
        if plan.replicas is None:
            reasons.append(plan.reason)
        plans.append(plan)
    gpu = sum(p.replicas or 0 for p in plans if p.device == "gpu")
    cpu = sum(p.replicas or 0 for p in plans if p.device != "gpu")
    cost = sum(p.cost_per_hour or 0.0 for p in plans)
    return FleetPlan(tuple(plans), gpu, cpu, cost, not reasons, tuple(reasons))


def baseline_load(load: SurfaceLoad) -> SurfaceLoad:
    """The same surface with nothing treated and nothing shadowed."""
    return SurfaceLoad(load.surface, load.peak_qps, load.populations)


def savings(baseline: FleetPlan, plan: FleetPlan) -> dict[str, Any]:
    """Replicas freed on legacy (CPU) stacks, replicas added on GPU, and the net cost change per hour."""
    legacy_before = sum(s.replicas or 0 for s in baseline.stacks if s.kind != "unified_mtl")
    legacy_after = sum(s.replicas or 0 for s in plan.stacks if s.kind != "unified_mtl")
    unified_after = sum(s.replicas or 0 for s in plan.stacks if s.kind == "unified_mtl")
    unified_before = sum(s.replicas or 0 for s in baseline.stacks if s.kind == "unified_mtl")
    return {
        "legacy_replicas_freed": legacy_before - legacy_after,
        "unified_replicas_added": unified_after - unified_before,
        "cpu_replicas_delta": plan.cpu_replicas - baseline.cpu_replicas,
        "gpu_replicas_delta": plan.gpu_replicas - baseline.gpu_replicas,
        "baseline_cost_per_hour": round(baseline.cost_per_hour, 4),
        "cost_per_hour": round(plan.cost_per_hour, 4),
        "cost_saved_per_hour": round(baseline.cost_per_hour - plan.cost_per_hour, 4),
    }


@dataclass(frozen=True, slots=True)
class CapacityCheck:
    """Whether a fleet plan fits the configured fleet limits (the capacity gate's input)."""

    ok: bool
    computable: bool
    gpu_needed: int
    gpu_limit: int | None
    cpu_needed: int
    cpu_limit: int | None
    reason: str


def check_limits(plan: FleetPlan, prices: Prices) -> CapacityCheck:
    if not plan.computable:
        return CapacityCheck(
            False,
            False,
            plan.gpu_replicas,
            prices.max_gpu_replicas,
            plan.cpu_replicas,
            prices.max_cpu_replicas,
            "; ".join(plan.reasons),
        )
    problems = []
    if prices.max_gpu_replicas is not None and plan.gpu_replicas > prices.max_gpu_replicas:
        problems.append(f"needs {plan.gpu_replicas} GPU replicas, fleet limit {prices.max_gpu_replicas}")
    if prices.max_cpu_replicas is not None and plan.cpu_replicas > prices.max_cpu_replicas:
        problems.append(f"needs {plan.cpu_replicas} CPU replicas, fleet limit {prices.max_cpu_replicas}")
    return CapacityCheck(
        not problems,
        True,
        plan.gpu_replicas,
        prices.max_gpu_replicas,
        plan.cpu_replicas,
        prices.max_cpu_replicas,
        "; ".join(problems)
        or f"fits: {plan.gpu_replicas} GPU / {plan.cpu_replicas} CPU replicas at peak with headroom",
    )


# -- registry adapters ------------------------------------------------------------------------------
def prices_current() -> Prices:
    from migrations_runbooks.models import CapacityConfig

    config = CapacityConfig.objects.filter(key="default").first()
    if config is None:
        return Prices()
    return Prices(
        headroom=config.headroom,
        gpu_replica_cost_per_hour=config.gpu_replica_cost_per_hour,
        cpu_replica_cost_per_hour=config.cpu_replica_cost_per_hour,
        host_cpu_cores_per_gpu_replica=config.host_cpu_cores_per_gpu_replica,
        min_replicas=config.min_replicas,
        max_gpu_replicas=config.max_gpu_replicas,
        max_cpu_replicas=config.max_cpu_replicas,
    )


def stack_specs() -> dict[str, StackSpec]:
    from controlplane.core.models import RankingStack

    return {
        s.label: StackSpec(
            s.label, s.kind, s.device, s.throughput_per_replica, s.host_cpu_ms_per_request, s.status
        )
        for s in RankingStack.objects.all()
    }


def load_from_allocation(allocation: Any, peak_qps: float) -> SurfaceLoad:
    return SurfaceLoad(
        surface=allocation.surface.key,
        peak_qps=peak_qps,
        populations=tuple((p["population"], p["stack"], int(p["bp"])) for p in allocation.populations),
        treatment_stack=allocation.treatment_stack.label if allocation.treatment_stack else None,
        treatment_bp=allocation.treatment_bp,
        shadow_stack=allocation.shadow_stack.label if allocation.shadow_stack else None,
        shadow_bp=allocation.shadow_bp,
    )


def current_loads(*, at: Any = None) -> dict[int, SurfaceLoad]:
    """Every surface's load under its current allocation (or the one in force at ``at``)."""
    from django.db.models import OuterRef, Subquery

    from controlplane.core.models import Allocation

    # One query: each surface's highest version (as of ``at``), not one query per surface.
    latest = Allocation.objects.filter(surface=OuterRef("surface"))
    if at is not None:
        latest = latest.filter(created_at__lte=at)
    rows = Allocation.objects.select_related("treatment_stack", "shadow_stack", "surface").filter(
        version=Subquery(latest.order_by("-version").values("version")[:1])
    )
    return {a.surface_id: load_from_allocation(a, a.surface.peak_qps) for a in rows}


def baseline_loads() -> dict[int, SurfaceLoad]:
    """Every surface as it was before any migration: version 1 of its allocation (all legacy)."""
    from controlplane.core.models import Allocation

    loads: dict[int, SurfaceLoad] = {}
    for allocation in Allocation.objects.select_related("surface").filter(version=1):
        loads[allocation.surface_id] = SurfaceLoad(
            allocation.surface.key,
            allocation.surface.peak_qps,
            tuple((p["population"], p["stack"], int(p["bp"])) for p in allocation.populations),
        )
    return loads
