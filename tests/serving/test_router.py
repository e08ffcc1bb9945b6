"""The router: real stacks rank, exposures are logged once, failures fall back, bad input gets a 4xx."""

from __future__ import annotations

import pytest

from controlplane.core import services as registry_services
from controlplane.serving.models import Exposure, LatencySample

pytestmark = pytest.mark.sqlite_path

RANK = "/api/v1/surfaces/{}/rank"


def test_requests_flow_through_the_router_to_real_stacks(seeded, stacks, viewer_client):
    response = viewer_client.post(
        RANK.format("pages"), {"unit_id": "u17", "context": {"app": "ios"}}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["stack"] == "content-first@1" and body["arm"] == "control"
    assert body["allocation_version"] == 1 and body["fallback"] is None
    assert len(body["items"]) == 50
    assert [i["position"] for i in body["items"]] == list(range(50))
    # The same unit gets the same list from the same (deterministic) stack.
    again = viewer_client.post(RANK.format("pages"), {"unit_id": "u17"}, format="json").json()
    assert [i["post_id"] for i in again["items"]] == [i["post_id"] for i in body["items"]]
    # The response really is the engine's ranking for that world user.
    from rankers.engine.types import RankRequest

    direct = stacks.bundle().stacks["content_first"].rank(RankRequest(user_id=17, surface="pages"))
    assert [i["post_id"] for i in body["items"]] == direct.post_ids


def test_treatment_units_get_the_unified_stack_and_allocation_changes_apply_at_once(
    seeded, stacks, viewer_client, users
):
    pages = seeded["pages"]
    allocation = registry_services.allocation_change(
        surface=pages,
        actor=users["operator"],
        reason="ramp",
        treatment_stack=seeded["unified"],
        treatment_bp=10_000,
    )
    body = viewer_client.post(RANK.format("pages"), {"unit_id": "u5"}, format="json").json()
    assert body["arm"] == "treatment" and body["stack"] == "unified-mtl@1"
    assert body["allocation_version"] == allocation.version == 2
    registry_services.allocation_change(
        surface=pages, actor=users["operator"], reason="rollback", treatment_bp=0
    )
    body = viewer_client.post(RANK.format("pages"), {"unit_id": "u5"}, format="json").json()
    assert body["arm"] == "control" and body["stack"] == "content-first@1" and body["allocation_version"] == 3


def test_first_exposure_is_logged_once_per_unit_and_salt(seeded, stacks, users):
    from controlplane.serving.routing import router_reset
    from controlplane.serving.services import rank_request

    for _ in range(3):
        rank_request(surface_key="groups", unit_id="u42")
        router_reset()  # forget the in-process "already logged" keys: the database must dedupe too
    rank_request(surface_key="groups", unit_id="u43")
    exposures = Exposure.objects.filter(surface=seeded["groups"])
    assert sorted(exposures.values_list("unit_id", flat=True)) == ["u42", "u43"]
    assert LatencySample.objects.filter(surface=seeded["groups"], unit_id="u42").count() == 3
    # A new salt is a new experiment: the unit is exposed again under it.
    registry_services.allocation_change(
        surface=seeded["groups"], actor=users["operator"], reason="new", salt="exp-2"
    )
    rank_request(surface_key="groups", unit_id="u42")
    assert Exposure.objects.filter(surface=seeded["groups"], unit_id="u42").count() == 2
    first = Exposure.objects.get(surface=seeded["groups"], unit_id="u42", salt="exp-2")
    assert first.allocation_version == 2 and first.population in {"content_first", "interest_first"}


@pytest.mark.parametrize(
    ("surface", "payload", "status", "field", "code"),
    [
        ("nope", {"unit_id": "u1"}, 404, "surface", "unknown_surface"),
        ("pages", {"unit_id": ""}, 400, "unit_id", "malformed_unit_id"),
        ("pages", {"unit_id": " u1"}, 400, "unit_id", "malformed_unit_id"),
        ("pages", {"unit_id": "x" * 129}, 400, "unit_id", "malformed_unit_id"),
        ("pages", {"unit_id": "u\x071"}, 400, "unit_id", "malformed_unit_id"),
        ("pages", {"unit_id": {"id": 1}}, 400, "unit_id", "invalid"),
        ("pages", {}, 400, "unit_id", "invalid"),
        ("pages", {"unit_id": "u1", "context": ["a"]}, 400, "context", "invalid"),
        ("pages", {"unit_id": "u1", "context": {"blob": "x" * 5000}}, 413, "context", "context_too_large"),
        ("pages", {"unit_id": "u1", "num_items": 0}, 400, "num_items", "invalid"),
    ],
)
def test_bad_requests_get_a_clear_4xx(seeded, viewer_client, surface, payload, status, field, code):
    response = viewer_client.post(RANK.format(surface), payload, format="json")
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code and field in body["errors"], body
    assert Exposure.objects.count() == 0


def test_ranking_needs_a_role(seeded, users, api_client_for):
    assert api_client_for(None).post(RANK.format("pages"), {"unit_id": "u1"}, format="json").status_code in (
        401,
        403,
    )
    assert (
        api_client_for(users["norole"])
        .post(RANK.format("pages"), {"unit_id": "u1"}, format="json")
        .status_code
        == 403
    )


def test_failing_stack_falls_back_to_the_legacy_stack_and_counts_it(seeded, stacks, viewer_client, users):
    registry_services.allocation_change(
        surface=seeded["pages"],
        actor=users["operator"],
        reason="ramp",
        treatment_stack=seeded["unified"],
        treatment_bp=10_000,
    )
    with stacks.faults({"unified-mtl@1": {"error": "CUDA out of memory"}}):
        body = viewer_client.post(RANK.format("pages"), {"unit_id": "u9"}, format="json").json()
    assert body["stack"] == "content-first@1" and body["assigned_stack"] == "unified-mtl@1"
    assert body["arm"] == "treatment"  # intent to treat: the analysis keeps the assigned arm
    assert body["fallback"]["from"] == "unified-mtl@1" and body["fallback"]["reason"] == "error"
    assert "CUDA out of memory" in body["fallback"]["detail"]
    assert len(body["items"]) == 50
    sample = LatencySample.objects.get(unit_id="u9")
    assert sample.status == "fallback" and sample.fallback_from == "unified-mtl@1"
    from controlplane.serving.selectors import serving_health

    health = {(r["stack"], r["arm"]): r for r in serving_health(surface="pages")}
    assert health[("content-first@1", "treatment")]["fallbacks"] == 1


def test_slow_stack_times_out_and_falls_back(seeded, stacks, viewer_client, users, settings):
    settings.SERVING_RANK_TIMEOUT_MS = 150
    registry_services.allocation_change(
        surface=seeded["pages"],
        actor=users["operator"],
        reason="ramp",
        treatment_stack=seeded["unified"],
        treatment_bp=10_000,
    )
    with stacks.faults({"unified-mtl@1": {"delay_ms": 1000}}):
        body = viewer_client.post(RANK.format("pages"), {"unit_id": "u9"}, format="json").json()
    assert body["stack"] == "content-first@1" and body["fallback"]["reason"] == "timeout"
    assert 150 <= body["timings"]["stack_ms"] < 900


def test_production_stack_is_the_fallback_after_promotion_and_503_when_nothing_serves(
    seeded, stacks, viewer_client, users
):
    registry_services.surface_promote_stack(
        surface=seeded["groups"], stack=seeded["unified"], actor=users["operator"], reason="promote"
    )
    registry_services.allocation_change(
        surface=seeded["groups"], actor=users["operator"], reason="populations", salt="after-promotion"
    )
    with stacks.faults({"interest-first@1": {"error": "down"}}):
        body = viewer_client.post(RANK.format("groups"), {"unit_id": "u3"}, format="json").json()
    assert body["stack"] == "unified-mtl@1" and body["fallback"] is None
    with stacks.faults({"unified-mtl@1": {"error": "down"}}):
        response = viewer_client.post(RANK.format("groups"), {"unit_id": "u3"}, format="json")
    assert response.status_code == 503 and response.json()["code"] == "stack_unavailable"
    assert LatencySample.objects.filter(surface=seeded["groups"], status="error").count() == 1


def test_exploration_logs_propensities(seeded, stacks, settings):
    from controlplane.serving.models import ServedImpression
    from controlplane.serving.services import rank_request

    settings.SERVING_EXPLORE_RATE = 1.0
    body = rank_request(surface_key="pages", unit_id="u21", request_id="explore-1")
    assert body["explored"] is True
    logged = list(ServedImpression.objects.filter(request_id="explore-1").order_by("position"))
    assert len(logged) == 50
    assert all(row.propensity == pytest.approx(0.1) for row in logged[:10])
    assert all(row.propensity == 1.0 for row in logged[10:])
    unexplored = rank_request(surface_key="pages", unit_id="u21", request_id="explore-2", explore_rate=0.0)
    top = [i["post_id"] for i in unexplored["items"][:10]]
    # Same ten posts, shuffled; below the explored block the order is untouched.
    assert sorted(top) == sorted(r.post_id for r in logged[:10]) and top != [r.post_id for r in logged[:10]]
    assert [i["post_id"] for i in unexplored["items"][10:]] == [r.post_id for r in logged[10:]]


def test_allocation_check_interval(seeded, stacks, settings):
    from controlplane.serving.routing import route_cache
    from controlplane.serving.services import rank_request

    settings.SERVING_CONFIG_TTL_S = 3600  # a serving process re-checks at most this often
    assert rank_request(surface_key="pages", unit_id="u1")["allocation_version"] == 1
    registry_services.allocation_change(
        surface=seeded["pages"],
        actor="system:test",
        reason="ramp",
        treatment_stack=seeded["unified"],
        treatment_bp=10_000,
    )
    assert rank_request(surface_key="pages", unit_id="u1")["allocation_version"] == 1  # cached
    route_cache.get("pages", fresh=True)
    body = rank_request(surface_key="pages", unit_id="u1")
    assert body["allocation_version"] == 2 and body["stack"] == "unified-mtl@1"
