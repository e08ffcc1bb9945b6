"""Registry services and REST API: audit, idempotency, ETag config, errors, permissions matrix."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from controlplane.core import services
from controlplane.core.models import Allocation, AuditEvent, RankingStack

pytestmark = [pytest.mark.django_db, pytest.mark.sqlite_path]


def test_seed_demo_is_idempotent(seeded):
    before = (RankingStack.objects.count(), Allocation.objects.count(), AuditEvent.objects.count())
    call_command("seed_demo", "--no-users", verbosity=0)
    assert (RankingStack.objects.count(), Allocation.objects.count(), AuditEvent.objects.count()) == before
    groups = seeded["groups"]
    assert {p.population: p.share_bp for p in groups.populations.all()} == {
        "content_first": 6000,
        "interest_first": 4000,
    }
    assert {p.stack.kind for p in groups.populations.all()} == {"content_first", "interest_first"}
    assert [p.stack.kind for p in seeded["pages"].populations.all()] == ["content_first"]


def test_allocation_change_bumps_version_audits_and_is_idempotent(seeded, users):
    pages, unified = seeded["pages"], seeded["unified"]
    a2 = services.allocation_change(
        surface=pages, actor=users["operator"], reason="1% ramp", treatment_stack=unified, treatment_bp=100
    )
    assert a2.version == 2
    again = services.allocation_change(
        surface=pages, actor=users["operator"], reason="1% ramp", treatment_stack=unified, treatment_bp=100
    )
    assert again.pk == a2.pk
    event = AuditEvent.objects.filter(verb="allocation.change").get()
    assert event.actor_label == "otto" and event.reason == "1% ramp" and event.surface_key == "pages"
    assert event.before["treatment_bp"] == 0 and event.after["treatment_bp"] == 100
    with pytest.raises(PermissionError):
        event.reason = "edited"
        event.save()
    with pytest.raises(PermissionError):
        event.delete()


def test_allocation_change_refuses_bad_input_naming_the_field(seeded, users):
    from controlplane.core.errors import ApplicationError

    with pytest.raises(ApplicationError) as exc:
        services.allocation_change(
            surface=seeded["pages"], actor=users["operator"], reason="x", treatment_bp=100
        )
    assert exc.value.field == "treatment_stack"
    with pytest.raises(ApplicationError) as exc:
        services.allocation_change(
            surface=seeded["pages"], actor=users["operator"], reason=" ", treatment_bp=0
        )
    assert exc.value.field == "reason"
    assert Allocation.objects.filter(surface=seeded["pages"]).count() == 1


def test_published_config_etag_and_304(seeded, users, api_client_for):
    client = api_client_for(users["viewer"])
    first = client.get("/api/v1/config/allocations/")
    assert first.status_code == 200
    etag = first["ETag"]
    assert {s["surface"] for s in first.json()["surfaces"]} == {"pages", "groups"}
    repeat = client.get("/api/v1/config/allocations/", HTTP_IF_NONE_MATCH=etag)
    assert repeat.status_code == 304 and repeat["ETag"] == etag
    services.allocation_change(
        surface=seeded["groups"],
        actor=users["operator"],
        reason="5%",
        treatment_stack=seeded["unified"],
        treatment_bp=500,
    )
    changed = client.get("/api/v1/config/allocations/", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200 and changed["ETag"] != etag
    assert changed.json()["versions"]["groups"] == 2


def test_fleet_assigns_locally_like_the_router(seeded, users, api_client_for):
    from controlplane.core.assignment import AllocationConfig
    from controlplane.core.selectors import allocation_config, allocation_current

    services.allocation_change(
        surface=seeded["groups"],
        actor=users["operator"],
        reason="25%",
        treatment_stack=seeded["unified"],
        treatment_bp=2500,
    )
    body = api_client_for(users["viewer"]).get("/api/v1/config/allocations/").json()
    fleet = AllocationConfig.from_dict(next(s for s in body["surfaces"] if s["surface"] == "groups"))
    server = allocation_config(allocation_current(surface=seeded["groups"]))
    assert [fleet.assign(f"u{i}") for i in range(500)] == [server.assign(f"u{i}") for i in range(500)]


def test_api_errors_name_the_field(seeded, users, api_client_for):
    client = api_client_for(users["operator"])
    r = client.post(
        "/api/v1/surfaces/pages/allocation/", {"treatment_bp": 20000, "reason": "x"}, format="json"
    )
    assert r.status_code == 400 and "treatment_bp" in r.json()["errors"]
    r = client.post(
        "/api/v1/surfaces/pages/allocation/",
        {"treatment_stack": "nope@9", "treatment_bp": 10, "reason": "x"},
        format="json",
    )
    assert r.status_code == 400 and "treatment_stack" in r.json()["errors"]
    r = client.post("/api/v1/surfaces/pages/allocation/", {"treatment_bp": 10}, format="json")
    assert r.status_code == 400 and set(r.json()["errors"]) >= {"reason"}
    r = client.post(
        "/api/v1/surfaces/pages/allocation/",
        {"treatment_stack": "unified-mtl@1", "treatment_bp": 10, "reason": "x", "expected_version": 7},
        format="json",
    )
    assert r.status_code == 409 and "expected_version" in r.json()["errors"]
    r = client.post(
        "/api/v1/stacks/",
        {"key": "x", "version": "1", "kind": "quantum", "latency_slo_ms": 10},
        format="json",
    )
    assert r.status_code == 400 and "kind" in r.json()["errors"]


def test_stack_register_is_idempotent_and_audited(db, users, api_client_for):
    client = api_client_for(users["operator"])
    payload = {
        "key": "unified-mtl",
        "version": "2",
        "kind": "unified_mtl",
        "device": "gpu",
        "latency_slo_ms": 80,
        "throughput_per_replica": 850,
    }
    assert client.post("/api/v1/stacks/", payload, format="json").status_code == 201
    assert client.post("/api/v1/stacks/", payload, format="json").status_code == 200
    assert AuditEvent.objects.filter(verb__startswith="stack.").count() == 1
    payload["throughput_per_replica"] = 900
    client.post("/api/v1/stacks/", payload, format="json")
    assert AuditEvent.objects.filter(verb="stack.update").get().before["throughput_per_replica"] == 850


def test_audit_api_filters(seeded, users, api_client_for):
    services.allocation_change(
        surface=seeded["pages"],
        actor=users["operator"],
        reason="shadow",
        shadow_stack=seeded["unified"],
        shadow_bp=1000,
    )
    client = api_client_for(users["viewer"])
    rows = client.get("/api/v1/audit/", {"surface": "pages", "verb": "allocation"}).json()["results"]
    assert [r["verb"] for r in rows] == ["allocation.change"]
    assert client.get("/api/v1/audit/", {"actor": "nobody-else"}).json()["results"] == []
    assert client.get("/api/v1/audit/", {"since": "not-a-date"}).status_code == 400


def test_schema_and_docs_are_served(db, users, api_client_for):
    client = api_client_for(users["viewer"])
    assert client.get("/api/schema/").status_code == 200
    assert client.get("/api/docs/").status_code == 200


# -- permissions matrix -------------------------------------------------------------------------
READS = [
    "/api/v1/stacks/",
    "/api/v1/surfaces/",
    "/api/v1/surfaces/pages/",
    "/api/v1/surfaces/pages/allocation/",
    "/api/v1/surfaces/pages/allocations/",
    "/api/v1/config/allocations/",
    "/api/v1/audit/",
]
WRITES = [
    ("/api/v1/stacks/", {"key": "perm", "version": "1", "kind": "content_first", "latency_slo_ms": 50}),
    (
        "/api/v1/surfaces/pages/allocation/",
        {"shadow_stack": "unified-mtl@1", "shadow_bp": 500, "reason": "perm"},
    ),
]


@pytest.mark.parametrize(
    "role,can_read,can_write",
    [
        (None, False, False),
        ("norole", False, False),
        ("viewer", True, False),
        ("approver", True, False),
        ("operator", True, True),
    ],
)
def test_permissions_matrix(seeded, users, api_client_for, role, can_read, can_write):
    client = api_client_for(users[role] if role else None)
    for url in READS:
        status = client.get(url).status_code
        assert (status == 200) == can_read, (role, url, status)
        if not can_read:
            assert status in (401, 403)
    for url, payload in WRITES:
        status = client.post(url, payload, format="json").status_code
        assert (status in (200, 201)) == can_write, (role, url, status)
        if not can_write:
            assert status in (401, 403)


def test_session_auth_enforces_csrf(seeded, users):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(users["operator"])
    r = client.post(
        "/api/v1/surfaces/pages/allocation/", {"shadow_bp": 0, "reason": "x"}, content_type="application/json"
    )
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
