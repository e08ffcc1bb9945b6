"""Serving reads: the logs a rank request writes (exposures, latency samples), shadow parity per day,
serving health, latency samples per arm, IPS evaluation. The analysis reads serving's logs only here."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from django.db.models import Count, Q, QuerySet

from controlplane.core.models import Surface
from controlplane.serving.counterfactual import ips_value, position_bias
from controlplane.serving.models import Exposure, LatencySample, ServedImpression, ShadowParityDaily

PARITY_FIELDS = (
    "n",
    "compared",
    "errors",
    "timeouts",
    "overlap_10",
    "overlap_50",
    "rbo",
    "kendall_tau",
    "calibration_diff",
    "live_p50_ms",
    "live_p99_ms",
    "shadow_p50_ms",
    "shadow_p99_ms",
)


#: Tables of serving's logs, for the analysis' aggregate SQL (joined where the rows live).
EXPOSURE_TABLE: str = Exposure._meta.db_table
LATENCY_TABLE: str = LatencySample._meta.db_table


def exposures(
    *, surface_id: int, salt: str, arms: tuple[str, ...] = ("control", "treatment"), before: dt.datetime
) -> QuerySet[Exposure]:
    """First exposures of units under an allocation salt, in the given arms, before a time."""
    return Exposure.objects.filter(
        surface_id=surface_id, salt=salt, arm__in=arms, first_exposed_at__lt=before
    )


def latency_rows(
    *,
    surface_id: int,
    salt: str,
    start: dt.datetime,
    end: dt.datetime,
    fields: tuple[str, ...] = ("arm", "population", "ms"),
    arms: tuple[str, ...] = ("control", "treatment"),
) -> QuerySet[LatencySample, tuple[Any, ...]]:
    """Latency samples served under a salt in ``[start, end)``, as ``values_list(*fields)``."""
    return LatencySample.objects.filter(
        surface_id=surface_id, salt=salt, arm__in=arms, ts__gte=start, ts__lt=end
    ).values_list(*fields)


def _surface_of(surface: Surface | str) -> Surface:
    return surface if isinstance(surface, Surface) else Surface.objects.get(key=surface)


def shadow_parity_daily(
    *, surface: Surface | str, stack: Any = None, since: dt.date | None = None
) -> list[dict[str, Any]]:
    """Per-day shadow parity of a surface (optionally one shadow stack label), oldest first.

    Each item: ``{day, stack, n, compared, errors, timeouts, overlap_10, overlap_50, rbo,
    kendall_tau, calibration_diff, live_p50_ms, live_p99_ms, shadow_p50_ms, shadow_p99_ms,
    error_rate}``; the rows are refreshed by the ``shadow_parity_aggregate`` beat task.
    """
    qs = ShadowParityDaily.objects.filter(surface=_surface_of(surface))
    if stack:
        # A RankingStack or its label.
        qs = qs.filter(shadow_stack=getattr(stack, "label", stack))
    if since:
        qs = qs.filter(day__gte=since)
    out = []
    for row in qs.order_by("day", "shadow_stack"):
        item: dict[str, Any] = {"day": row.day, "stack": row.shadow_stack}
        item.update({name: getattr(row, name) for name in PARITY_FIELDS})
        item["error_rate"] = (row.errors + row.timeouts) / row.n if row.n else None
        out.append(item)
    return out


def serving_health(
    *, surface: Surface | str, since: dt.datetime | None = None, until: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """Per served stack and arm: requests, fallbacks, errors and latency p50/p99 (router samples)."""
    qs = LatencySample.objects.filter(surface=_surface_of(surface))
    if since:
        qs = qs.filter(ts__gte=since)
    if until:
        qs = qs.filter(ts__lt=until)
    counts = {
        (r["stack"], r["arm"]): r
        for r in qs.values("stack", "arm").annotate(
            requests=Count("id"),
            fallbacks=Count("id", filter=Q(status=LatencySample.Status.FALLBACK)),
            errors=Count("id", filter=Q(status=LatencySample.Status.ERROR)),
        )
    }
    samples: dict[tuple[str, str], list[float]] = {}
    for stack, arm, ms in qs.values_list("stack", "arm", "ms"):
        samples.setdefault((stack, arm), []).append(ms)
    out = []
    for key in sorted(counts):
        values = np.asarray(samples.get(key, []), dtype=float)
        row = counts[key]
        out.append(
            {
                "stack": key[0],
                "arm": key[1],
                "requests": row["requests"],
                "fallbacks": row["fallbacks"],
                "errors": row["errors"],
                "p50_ms": float(np.percentile(values, 50)) if values.size else None,
                "p99_ms": float(np.percentile(values, 99)) if values.size else None,
            }
        )
    return out


def latency_samples_by_arm(
    *,
    surface: Surface | str,
    salt: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> dict[str, np.ndarray]:
    """Latency samples (ms) per arm, for the quantile metrics (p50/p99) of an experiment's salt."""
    qs = LatencySample.objects.filter(surface=_surface_of(surface)).exclude(status=LatencySample.Status.ERROR)
    if salt:
        qs = qs.filter(salt=salt)
    if since:
        qs = qs.filter(ts__gte=since)
    if until:
        qs = qs.filter(ts__lt=until)
    out: dict[str, list[float]] = {}
    for arm, ms in qs.values_list("arm", "ms"):
        out.setdefault(arm, []).append(ms)
    return {arm: np.asarray(values, dtype=float) for arm, values in out.items()}


def counterfactual_report(
    *,
    surface: Surface | str,
    candidate_stack: str,
    logging_stack: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    max_requests: int = 2000,
    explore_top_k: int = 10,
) -> dict[str, Any]:
    """Off-policy (IPS/SNIPS) value of ``candidate_stack`` from the impression log, plus position bias.

    The candidate re-ranks each logged request's user; its position for every logged item feeds
    the item-position IPS estimator (:func:`controlplane.serving.counterfactual.ips_value`). The
    logged policy's own observed value (mean reward per request) is reported beside it.
    """
    from controlplane.core.models import RankingStack
    from controlplane.serving.services import _rank_request_object
    from controlplane.serving.stacks import stack_registry, world_user

    surface_obj = _surface_of(surface)
    qs = ServedImpression.objects.filter(surface=surface_obj, reward__isnull=False, propensity__isnull=False)
    if logging_stack:
        qs = qs.filter(stack=logging_stack)
    if since:
        qs = qs.filter(served_at__gte=since)
    if until:
        qs = qs.filter(served_at__lt=until)
    request_ids = list(
        qs.order_by("-served_at").values_list("request_id", flat=True).distinct()[: max_requests * 60]
    )
    request_ids = list(dict.fromkeys(request_ids))[:max_requests]
    rows = list(
        qs.filter(request_id__in=request_ids).values_list(
            "request_id", "unit_id", "post_id", "position", "propensity", "reward", "explored"
        )
    )
    key, _, version = candidate_stack.partition("@")
    stack = RankingStack.objects.filter(key=key, version=version).first()
    if stack is None:
        raise ValueError(f"unknown stack {candidate_stack!r}")
    if not rows:
        return {
            "candidate": candidate_stack,
            "requests": 0,
            "ips": None,
            "logged_value": None,
            "position_bias": None,
        }
    registry = stack_registry()
    n_users = registry.world.store.n_users
    index = {rid: i for i, rid in enumerate(dict.fromkeys(r[0] for r in rows))}
    units = {r[0]: r[1] for r in rows}
    depth = max(r[3] for r in rows) + 1
    candidate_positions: dict[str, dict[int, int]] = {}
    for rid in index:
        request = _rank_request_object(surface_obj.key, world_user(units[rid], n_users), max(depth, 10), {})
        result, _ = registry.rank(candidate_stack, stack.kind, request, None)
        candidate_positions[rid] = {item.post_id: item.position for item in result.items}
    req = np.array([index[r[0]] for r in rows])
    pos = np.array([r[3] for r in rows])
    prop = np.array([r[4] for r in rows], dtype=float)
    reward = np.array([r[5] for r in rows], dtype=float)
    explored = np.array([r[6] for r in rows], dtype=bool)
    cand = np.array([candidate_positions[r[0]].get(r[2], -1) for r in rows])
    estimate = ips_value(req, pos, prop, reward, cand, n_requests=len(index))
    logged = np.bincount(req, weights=reward, minlength=len(index))
    return {
        "candidate": candidate_stack,
        "logging_stack": logging_stack,
        "requests": len(index),
        "impressions": len(rows),
        "ips": estimate.to_dict(),
        "logged_value": float(logged.mean()),
        "logged_value_se": float(logged.std(ddof=1) / np.sqrt(len(index))) if len(index) > 1 else None,
        "explored_requests": len({r[0] for r in rows if r[6]}),
        "position_bias": position_bias(pos, reward, explored, k=explore_top_k),
    }
