"""Serving writes: the router, shadow scoring, parity aggregation and simulated traffic.

``rank_request`` is the router: assignment through the surface's current allocation (cached per
process, see :mod:`controlplane.serving.routing`), the live stack ranks under a deadline, a failure
or timeout falls back to the surface's production stack (its legacy stack before promotion), and
the first exposure, a latency sample and the counterfactual impression log are written. A sampled
share of requests is re-ranked by the shadow stack in a Celery task enqueued after the response.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from django.db import transaction
from django.utils import timezone

from controlplane.core.assignment import AssignmentError, bucket
from controlplane.core.errors import ApplicationError
from controlplane.core.models import RankingStack
from controlplane.serving.counterfactual import explore_top_k
from controlplane.serving.models import LatencySample, ServedImpression, ShadowComparison, ShadowParityDaily
from controlplane.serving.parity import ranking_parity
from controlplane.serving.routing import log_buffer, route_cache
from controlplane.serving.stacks import StackUnavailable, setting, stack_registry, world_user

logger = logging.getLogger(__name__)

MAX_ITEMS = 200
counters: Counter[str] = Counter()  # per-process: requests, fallbacks, errors, shadow enqueues


def _engine_surface(surface_key: str) -> str:
    from rankers.engine.types import SURFACES

    return surface_key if surface_key in SURFACES else "pages"


def _timeout_ms(slo_ms: float, name: str) -> float | None:
    configured = setting(name, 0.0)
    if configured and float(configured) > 0:
        return float(configured)
    multiple = float(setting("SERVING_TIMEOUT_SLO_MULTIPLE", 2.0))
    return slo_ms * multiple if multiple > 0 else None


def _rank_request_object(surface_key: str, user: int, num_items: int, context: Mapping[str, Any]) -> Any:
    from rankers.engine.types import RankRequest

    return RankRequest(
        user_id=user, surface=_engine_surface(surface_key), num_items=num_items, context=dict(context)
    )


def _validate_context(context: Any) -> dict[str, Any]:
    if context is None:
        return {}
    if not isinstance(context, dict):
        raise ApplicationError("context must be a JSON object", field="context")
    limit = int(setting("SERVING_MAX_CONTEXT_BYTES", 4096))
    size = len(json.dumps(context, separators=(",", ":"), default=str))
    if size > limit:
        raise ApplicationError(
            f"context is {size} bytes; at most {limit} bytes are accepted",
            field="context",
            code="context_too_large",
            http_status=413,
        )
    return context


def rank_request(
    *,
    surface_key: str,
    unit_id: Any,
    context: Mapping[str, Any] | None = None,
    now: dt.datetime | None = None,
    num_items: int = 50,
    request_id: str | None = None,
    defer: Callable[[Callable[[], None]], None] | None = None,
    log_impressions: bool = True,
    explore_rate: float | None = None,
    deadline: bool = True,
    on_shadow: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Serve one ranking request through the router (see module docstring).

    Returns ``{request_id, surface, unit_id, arm, population, stack, allocation_version, items,
    fallback, shadowed, timings}``; ``fallback`` is ``None`` or ``{"from", "reason", "detail"}``.
    ``defer`` receives the shadow enqueue so an HTTP view can run it after the response is sent;
    without it the enqueue runs on transaction commit (at once outside a transaction); ``on_shadow``
    instead receives the shadow payload itself (simulation scores it inline with
    :func:`shadow_compare`). ``deadline=False`` runs the stack in the calling thread without a timeout.
    Raises ``ApplicationError`` 404 (unknown surface), 400 (malformed unit id / num_items),
    413 (oversized context) and 503 (neither the assigned nor the fallback stack could serve).
    """
    started = time.perf_counter()
    context = _validate_context(context)
    if isinstance(num_items, bool) or not isinstance(num_items, int) or not 1 <= num_items <= MAX_ITEMS:
        raise ApplicationError(f"num_items must be an integer in 1..{MAX_ITEMS}", field="num_items")
    route = route_cache.get(surface_key)
    try:
        assignment = route.config.assign(unit_id)
    except AssignmentError as exc:
        raise ApplicationError(str(exc), field="unit_id", code="malformed_unit_id") from exc
    unit = str(unit_id)
    now = now or timezone.now()
    request_id = request_id or uuid.uuid4().hex
    config = route.config
    registry = stack_registry()
    rank_req = _rank_request_object(
        surface_key, world_user(unit, registry.world.store.n_users), num_items, context
    )
    legacy = next(p.stack for p in config.populations if p.population == assignment.population)

    served, fallback, result, stack_wall = assignment.stack, None, None, 0.0
    attempts = [assignment.stack]
    fallback_label = route.fallback_for(legacy)
    if fallback_label != assignment.stack:
        attempts.append(fallback_label)
    failure: StackUnavailable | None = None
    for label in attempts:
        info = route.stacks.get(label)
        attempt_started = time.perf_counter()
        try:
            if info is None:
                raise StackUnavailable(label, "error", "stack is not in the registry")
            timeout = _timeout_ms(info.latency_slo_ms, "SERVING_RANK_TIMEOUT_MS") if deadline else None
            result, _ = registry.rank(label, info.kind, rank_req, timeout)
            served = label
            break
        except StackUnavailable as exc:
            failure = failure or exc
            logger.warning("rank %s on %s failed: %s", request_id, surface_key, exc)
        finally:
            # The client waits for failed attempts too: they count as stack time, not router time.
            stack_wall += (time.perf_counter() - attempt_started) * 1e3
    counters["requests"] += 1
    if result is None:
        counters["errors"] += 1
        assert failure is not None
        log_buffer.add(
            latency=(
                route.surface_id,
                request_id,
                unit,
                assignment.arm,
                assignment.population,
                assignment.stack,
                config.salt,
                config.version,
                now,
                (time.perf_counter() - started) * 1e3,
                None,
                None,
                LatencySample.Status.ERROR.value,
                "",
                failure.message[:200],
                LatencySample.Source.ROUTER.value,
                None,
            )
        )
        log_buffer.after_request()
        raise ApplicationError(
            f"no stack could serve this request ({failure})", code="stack_unavailable", http_status=503
        )
    if served != assignment.stack:
        assert failure is not None
        counters["fallbacks"] += 1
        fallback = {"from": assignment.stack, "reason": failure.reason, "detail": failure.message}

    # Counterfactual logging: the router explores (RandTop-K) unless the stack logged propensities.
    ranked = result.items
    stack_props = [item.propensity for item in ranked]
    if any(p is not None for p in stack_props):
        order, props, explored = (
            list(range(len(ranked))),
            [p if p is not None else 1.0 for p in stack_props],
            False,
        )
    else:
        explore = explore_top_k(
            request_id,
            len(ranked),
            float(setting("SERVING_EXPLORE_RATE", 0.0)) if explore_rate is None else explore_rate,
            int(setting("SERVING_EXPLORE_TOP_K", 10)),
        )
        order, props, explored = explore.order, explore.propensities, explore.explored
    items = [
        {
            "post_id": ranked[i].post_id,
            "score": ranked[i].score,
            "position": position,
            "propensity": props[position],
        }
        for position, i in enumerate(order)
    ]
    # The stack's own total includes latency injected by simulation effects without sleeping.
    stack_ms = max(stack_wall, float(result.total_ms))

    exposure_key = (route.surface_id, config.salt, unit)
    exposure = None
    if not log_buffer.exposure_seen(exposure_key):
        from controlplane.serving.models import Exposure

        exposure = Exposure(
            surface_id=route.surface_id,
            salt=config.salt,
            unit_id=unit,
            arm=assignment.arm,
            population=assignment.population,
            stack=served,
            allocation_version=config.version,
            bucket=assignment.bucket,
            first_exposed_at=now,
        )
    impressions: list[tuple[Any, ...]] = []
    share = float(setting("SERVING_IMPRESSION_LOG_SHARE", 1.0))
    if log_impressions and share > 0 and (share >= 1 or bucket("impressions", request_id) < share * 10_000):
        depth = int(setting("SERVING_IMPRESSION_LOG_DEPTH", 50))
        impressions = [
            (
                route.surface_id,
                request_id,
                unit,
                served,
                assignment.arm,
                item["post_id"],
                item["position"],
                item["score"],
                item["propensity"],
                explored,
                None,
                now,
            )
            for item in items[:depth]
        ]

    shadowed = (
        bool(config.shadow_stack) and config.should_shadow(request_id) and config.shadow_stack != served
    )
    if shadowed:
        payload = {
            "request_id": request_id,
            "surface_id": route.surface_id,
            "surface_key": surface_key,
            "unit_id": unit,
            "user": rank_req.user_id,
            "num_items": num_items,
            "live_stack": served,
            "shadow_stack": config.shadow_stack,
            "live_ids": [item.post_id for item in ranked],
            "live_scores": [item.score for item in ranked],
            "live_ms": stack_ms,
            "requested_at": now.isoformat(),
        }

        def send() -> None:
            shadow_enqueue(payload=payload)

        if on_shadow is not None:
            on_shadow(payload)
        elif defer is not None:
            defer(send)
        else:
            transaction.on_commit(send)

    router_ms = (time.perf_counter() - started) * 1e3 - stack_wall
    latency = (
        route.surface_id, request_id, unit, assignment.arm, assignment.population, served, config.salt,
        config.version, now, router_ms + stack_ms, stack_ms, router_ms,
        (LatencySample.Status.FALLBACK if fallback else LatencySample.Status.OK).value,
        fallback["from"] if fallback else "", (fallback["detail"] or "")[:200] if fallback else "",
        LatencySample.Source.ROUTER.value, None,
    )  # fmt: skip
    log_buffer.add(exposure=exposure, exposure_key=exposure_key, latency=latency, impressions=impressions)
    log_buffer.after_request()
    # Router overhead = everything but the stack: validation, assignment and logging.
    router_ms = (time.perf_counter() - started) * 1e3 - stack_wall
    return {
        "request_id": request_id,
        "surface": surface_key,
        "unit_id": unit,
        "arm": assignment.arm,
        "population": assignment.population,
        "stack": served,
        "assigned_stack": assignment.stack,
        "allocation_version": config.version,
        "items": items,
        "explored": explored,
        "fallback": fallback,
        "shadowed": shadowed,
        "timings": {"stack_ms": stack_ms, "router_ms": router_ms, "total_ms": router_ms + stack_ms},
    }


# -- shadow ---------------------------------------------------------------------------------------
def shadow_enqueue(*, payload: dict[str, Any]) -> bool:
    """Send one shadow comparison to the workers; never raises (live traffic must not notice)."""
    from controlplane.serving.tasks import shadow_score_task

    try:
        # No publish retry: a shadow comparison is a best-effort sample, and a retrying publish
        # would hold a serving thread while the broker is down.
        shadow_score_task.apply_async(
            kwargs={"payload": payload},
            expires=float(setting("SERVING_SHADOW_EXPIRES_S", 60.0)),
            retry=False,
        )
    except Exception:
        counters["shadow_enqueue_failed"] += 1
        logger.exception("could not enqueue shadow request %s", payload.get("request_id"))
        return False
    counters["shadow_enqueued"] += 1
    return True


def shadow_compare(*, payload: Mapping[str, Any]) -> ShadowComparison:
    """Rank a live request with the shadow stack and record its parity (idempotent per request).

    A shadow stack that raises or exceeds ``SERVING_SHADOW_TIMEOUT_MS`` (default twice its latency
    SLO) is recorded with status ``error`` / ``timeout``; nothing here touches live traffic.
    """
    request_id = str(payload["request_id"])
    existing = ShadowComparison.objects.filter(request_id=request_id).first()
    if existing is not None:
        return existing
    requested_at = dt.datetime.fromisoformat(str(payload["requested_at"]))
    label = str(payload["shadow_stack"])
    row = ShadowComparison(
        surface_id=int(payload["surface_id"]),
        request_id=request_id,
        unit_id=str(payload["unit_id"]),
        live_stack=str(payload["live_stack"]),
        shadow_stack=label,
        day=requested_at.astimezone(dt.UTC).date(),
        requested_at=requested_at,
        live_ms=float(payload["live_ms"]),
    )
    key, _, version = label.partition("@")
    stack = RankingStack.objects.filter(key=key, version=version).first()
    try:
        if stack is None:
            raise StackUnavailable(label, "error", "stack is not in the registry")
        request = _rank_request_object(
            str(payload["surface_key"]), int(payload["user"]), int(payload["num_items"]), {}
        )
        result, wall = stack_registry().rank(
            label, stack.kind, request, _timeout_ms(stack.latency_slo_ms, "SERVING_SHADOW_TIMEOUT_MS")
        )
    except StackUnavailable as exc:
        row.status = (
            ShadowComparison.Status.TIMEOUT if exc.reason == "timeout" else ShadowComparison.Status.ERROR
        )
        row.error = exc.message[:300]
    else:
        parity = ranking_parity(
            payload["live_ids"], payload["live_scores"], result.post_ids, [i.score for i in result.items]
        )
        row.status = ShadowComparison.Status.OK
        row.shadow_ms = max(wall, float(result.total_ms))
        row.overlap_10, row.overlap_50, row.rbo = parity.overlap_10, parity.overlap_50, parity.rbo
        row.kendall_tau, row.shared_items = parity.kendall_tau, parity.shared_items
        row.calibration_diff = parity.calibration_diff
    ShadowComparison.objects.bulk_create([row], ignore_conflicts=True)
    return ShadowComparison.objects.get(request_id=request_id)


def _mean(values: Iterable[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return float(np.mean(clean)) if clean else None


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


@transaction.atomic
def shadow_parity_aggregate(*, day: dt.date, now: dt.datetime | None = None) -> int:
    """(Re)compute the per surface, shadow stack and day parity rows of ``day``; idempotent."""
    now = now or timezone.now()
    groups: dict[tuple[int, str], list[ShadowComparison]] = {}
    for row in ShadowComparison.objects.filter(day=day).order_by("id"):
        groups.setdefault((row.surface_id, row.shadow_stack), []).append(row)
    for (surface_id, label), rows in groups.items():
        ok = [r for r in rows if r.status == ShadowComparison.Status.OK]
        live_ms = [r.live_ms for r in rows]
        shadow_ms = [r.shadow_ms for r in ok if r.shadow_ms is not None]
        ShadowParityDaily.objects.update_or_create(
            surface_id=surface_id,
            shadow_stack=label,
            day=day,
            defaults={
                "n": len(rows),
                "compared": len(ok),
                "errors": sum(r.status == ShadowComparison.Status.ERROR for r in rows),
                "timeouts": sum(r.status == ShadowComparison.Status.TIMEOUT for r in rows),
                "overlap_10": _mean(r.overlap_10 for r in ok),
                "overlap_50": _mean(r.overlap_50 for r in ok),
                "rbo": _mean(r.rbo for r in ok),
                "kendall_tau": _mean(r.kendall_tau for r in ok),
                "calibration_diff": _mean(r.calibration_diff for r in ok),
                "live_p50_ms": _pct(live_ms, 50),
                "live_p99_ms": _pct(live_ms, 99),
                "shadow_p50_ms": _pct(shadow_ms, 50),
                "shadow_p99_ms": _pct(shadow_ms, 99),
                "computed_at": now,
            },
        )
    return len(groups)


@transaction.atomic
def impressions_record_rewards(*, rewards: Mapping[str, Mapping[int, float]]) -> int:
    """Feedback path: set the reward of logged impressions, ``{request_id: {post_id: reward}}``."""
    updated = 0
    for request_id, by_post in rewards.items():
        rows = list(ServedImpression.objects.filter(request_id=request_id, post_id__in=list(by_post)))
        for row in rows:
            row.reward = float(by_post[row.post_id])
        updated += ServedImpression.objects.bulk_update(rows, ["reward"])
    return updated
