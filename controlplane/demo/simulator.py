"""Simulated traffic: the world's users go through the real router, day by day.

The demo and the tests drive a migration with it. Each simulated request is a real
:func:`controlplane.serving.services.rank_request` (assignment, live stack, fallback, exposure and
latency logging, shadow sampling); the world then simulates what the user did with the served list,
and the per-unit-day metric rows go through the real ingestion service.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from django.utils import timezone

from controlplane.core.errors import ApplicationError
from controlplane.core.models import Surface
from controlplane.serving.bulk import insert_rows
from controlplane.serving.models import ServedImpression
from controlplane.serving.routing import IMPRESSION_COLUMNS, deferred_logging, route_cache
from controlplane.serving.services import rank_request, shadow_compare, shadow_parity_aggregate
from controlplane.serving.stacks import stack_registry, unit_for_user, world_user
from experiments.ingestion import ingest_metric_rows, metric_definitions_ensure


def _newcomer_authors(store: Any) -> np.ndarray:
    # Newcomer creators: the bottom decile of authors by followers (the world has no account age).
    followers = np.asarray(store.author_followers)
    return followers <= np.quantile(followers, 0.1)


def _resolve_users(users: int | Iterable[int | str], n_world: int, surface_key: str) -> list[int]:
    if isinstance(users, int | np.integer):
        count = int(users)
        if not 0 < count <= n_world:
            raise ApplicationError(f"users must be in 1..{n_world} for this world", field="users")
        # Same surface → same users every day, so pre-period covariates exist for CUPED.
        seed = int.from_bytes(hashlib.blake2b(surface_key.encode(), digest_size=8).digest(), "little")
        return sorted(int(u) for u in np.random.default_rng(seed).choice(n_world, size=count, replace=False))
    return [world_user(str(u), n_world) if isinstance(u, str) else int(u) % n_world for u in users]


def simulate_traffic(
    *,
    surface: Surface | str,
    users: int | Iterable[int | str],
    day: dt.date,
    effects_by_stack: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
    sessions_mean: float = 1.6,
    explore_rate: float | None = None,
    impression_log_depth: int = 10,
    actor: Any = "system:simulate",
    ingest: bool = True,
    shadow: str = "inline",
) -> dict[str, Any]:
    """Drive one simulated day of traffic through the router and ingest its metric rows.

    Every user makes ``1 + Poisson(sessions_mean − 1)`` feed requests on ``day``; each goes through
    :func:`rank_request` (assignment, live stack, fallback, exposure and latency logging, shadow
    sampling). The world then simulates what the user did with the served list — with the effects
    of ``effects_by_stack`` (``{stack label: rankers.engine.world.Effects}``) applied to lists served
    by that stack, and its ``extra_latency_ms`` added to that stack's latency samples. The
    per-unit-day metric rows (the standard keys of ``experiments.ingestion.STANDARD_METRICS``) are
    ingested as one idempotent batch per surface and day, and the impressions of each request are
    logged with their rewards (engaged = like, comment or share) for counterfactual evaluation.
    Requests the allocation samples for shadowing are scored by the shadow stack ``inline`` (the
    default: parity rows exist when the call returns, no worker needed) or ``enqueue``-d to Celery.
    """
    surface_obj = surface if isinstance(surface, Surface) else Surface.objects.get(key=surface)
    surface_key = surface_obj.key
    effects_by_stack = dict(effects_by_stack or {})
    registry = stack_registry()
    world = registry.world
    store = world.store
    user_list = _resolve_users(users, store.n_users, surface_key)
    base = now or dt.datetime.combine(day, dt.time(12, 0), tzinfo=dt.UTC)
    day_seed = int.from_bytes(
        hashlib.blake2b(f"{surface_key}:{day}".encode(), digest_size=8).digest(), "little"
    )
    rng = np.random.default_rng(day_seed)
    sessions = 1 + rng.poisson(max(0.0, sessions_mean - 1.0), size=len(user_list))
    newcomer = _newcomer_authors(store)

    responses: list[tuple[int, dict[str, Any]]] = []
    shadow_payloads: list[dict[str, Any]] = []
    if shadow not in {"inline", "enqueue"}:
        raise ApplicationError("shadow must be 'inline' or 'enqueue'", field="shadow")
    route_cache.get(surface_key, fresh=True)  # the allocation as of now, then fixed for the run
    with registry.with_effects(effects_by_stack), deferred_logging(), route_cache.pinned():
        for index, (user, n) in enumerate(zip(user_list, sessions, strict=True)):
            for s in range(int(n)):
                response = rank_request(
                    surface_key=surface_key,
                    unit_id=unit_for_user(user),
                    now=base + dt.timedelta(seconds=index * 0.01 + s * 600),
                    request_id=f"sim-{surface_key}-{day.isoformat()}-{user}-{s}",
                    log_impressions=False,
                    explore_rate=explore_rate,
                    deadline=False,  # offline simulation: no thread hand-off per request
                    on_shadow=shadow_payloads.append if shadow == "inline" else None,
                )
                responses.append((user, response))

    # Outcomes per serving stack (its effects apply to its lists), one vectorised batch each.
    by_stack: dict[str, list[int]] = {}
    for i, (_, response) in enumerate(responses):
        by_stack.setdefault(response["stack"], []).append(i)
    per_unit: dict[str, defaultdict[str, float]] = {}
    impression_rows: list[tuple[Any, ...]] = []
    for label, indexes in by_stack.items():
        width = max(len(responses[i][1]["items"]) for i in indexes)
        ranked = np.full((len(indexes), width), -1, dtype=np.int64)
        for row, i in enumerate(indexes):
            ids = [item["post_id"] for item in responses[i][1]["items"]]
            ranked[row, : len(ids)] = ids
        users_arr = np.array([responses[i][0] for i in indexes], dtype=np.int64)
        effects = effects_by_stack.get(label)
        outcome = world.simulate_batch(users_arr, ranked, effects=effects, rng=rng)
        engaged = outcome.actions[:, :3].any(axis=1)
        shown_reward: dict[tuple[int, int], float] = {}
        for k in range(len(outcome)):
            shown_reward[(int(outcome.request_index[k]), int(outcome.position[k]))] = float(engaged[k])
        for row, i in enumerate(indexes):
            user, response = responses[i]
            unit = unit_for_user(user)
            totals = per_unit.setdefault(unit, defaultdict(float))
            totals["requests"] += 1
            if outcome.errors[row]:
                totals["errors"] += 1
            else:
                totals["sessions"] += 1
            for item in response["items"][:impression_log_depth]:
                impression_rows.append(
                    (
                        surface_obj.pk,
                        response["request_id"],
                        unit,
                        label,
                        response["arm"],
                        item["post_id"],
                        item["position"],
                        item["score"],
                        item["propensity"],
                        response["explored"],
                        shown_reward.get((row, item["position"]), 0.0),
                        base,
                    )
                )
        if len(outcome):
            units = np.array([unit_for_user(u) for u in outcome.user_id])
            actions = outcome.actions
            columns = {
                "impressions": np.ones(len(outcome)),
                "likes": actions[:, 0],
                "comments": actions[:, 1],
                "shares": actions[:, 2],
                "hides": actions[:, 3],
                "reports": actions[:, 4],
                "time_spent": outcome.dwell.astype(float),
                "integrity_impressions": outcome.violation.astype(float),
                "newcomer_impressions": newcomer[store.post_author[outcome.post_id]].astype(float),
            }
            columns["meaningful_interactions"] = columns["comments"] + columns["shares"]
            columns["engagements"] = columns["likes"] + columns["comments"] + columns["shares"]
            columns["negative_feedback"] = columns["hides"] + columns["reports"]
            codes, inverse = np.unique(units, return_inverse=True)
            for metric, values in columns.items():
                sums = np.bincount(inverse, weights=np.asarray(values, dtype=float), minlength=len(codes))
                for unit, total in zip(codes, sums, strict=True):
                    per_unit.setdefault(str(unit), defaultdict(float))[metric] += float(total)

    insert_rows(ServedImpression._meta.db_table, IMPRESSION_COLUMNS, impression_rows)
    batch = None
    if ingest:
        metric_definitions_ensure()
        rows = [
            {"unit_id": unit, "day": day.isoformat(), "metric": metric, "value": totals.get(metric, 0.0)}
            for unit, totals in sorted(per_unit.items())
            for metric in SIMULATED_METRICS
        ]
        digest = hashlib.blake2b(",".join(sorted(per_unit)).encode(), digest_size=6).hexdigest()
        batch = ingest_metric_rows(
            surface=surface_obj,
            client_batch_id=f"simulate:{surface_key}:{day.isoformat()}:{digest}",
            rows=rows,
            actor=actor,
            now=max(timezone.now(), base),
        ).to_dict()
    # Shadow scoring of the sampled requests: inline (tests, demo without a worker) or via Celery.
    for payload in shadow_payloads:
        shadow_compare(payload=payload)
    if shadow_payloads:
        shadow_parity_aggregate(day=base.astimezone(dt.UTC).date())
    served = Counter(r["stack"] for _, r in responses)
    return {
        "surface": surface_key,
        "day": day.isoformat(),
        "units": len(user_list),
        "requests": len(responses),
        "by_stack": dict(served),
        "by_arm": dict(Counter(r["arm"] for _, r in responses)),
        "fallbacks": sum(1 for _, r in responses if r["fallback"]),
        "shadowed": sum(1 for _, r in responses if r["shadowed"]),
        "impressions_logged": len(impression_rows),
        "batch": batch,
    }


SIMULATED_METRICS: tuple[str, ...] = (
    "impressions",
    "sessions",
    "time_spent",
    "likes",
    "comments",
    "shares",
    "hides",
    "reports",
    "integrity_impressions",
    "errors",
    "requests",
    "meaningful_interactions",
    "newcomer_impressions",
    "engagements",
    "negative_feedback",
)
