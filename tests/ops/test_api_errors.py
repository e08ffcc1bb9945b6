"""Every error under /api/ has the documented JSON shape, including Django's own 400/404."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db

SHAPE = {"detail", "code", "errors"}


def test_nul_characters_in_the_url_are_a_400_not_a_database_error(client, users):
    client.force_login(users["operator"])
    for url in ("/api/v1/stacks/?kind=%00", "/api/v1/runbooks/?st%00atus=x"):
        response = client.get(url)
        assert response.status_code == 400 and response.json()["code"] == "invalid", url


def test_unknown_api_urls_and_missing_objects_answer_json(client, users):
    client.force_login(users["operator"])
    unknown = client.get("/api/v1/no-such-thing/")
    assert unknown.status_code == 404 and unknown.json() == {
        "detail": "Not found.",
        "code": "not_found",
        "errors": {},
    }
    missing = client.get("/api/v1/experiments/no-such-experiment/")  # get_object_or_404 inside DRF
    assert (
        missing.status_code == 404 and set(missing.json()) == SHAPE and missing.json()["code"] == "not_found"
    )
    page = client.get("/no-such-page/")
    assert page.status_code == 404 and page["Content-Type"].startswith("text/html")


def test_nul_characters_in_json_bodies_are_a_400_not_a_database_error(users, api_client_for):
    op = api_client_for(users["operator"])
    body = (
        '{"key": "s1", "version": "1", "kind": "unified_mtl", "latency_slo_ms": 50,'
        ' "offline_metrics": {"auc\\u0000": 0.7}}'
    )
    response = op.post("/api/v1/stacks/", body, content_type="application/json")
    assert response.status_code == 400, response.content
    assert response.json()["code"] == "parse_error" and "NUL" in response.json()["detail"]
    # An escaped backslash before "u0000" is ordinary text, not a NUL.
    escaped = body.replace("\\u0000", "\\\\u0000")
    created = op.post("/api/v1/stacks/", escaped, content_type="application/json")
    assert created.status_code == 201, created.content
    form = op.post("/api/v1/stacks/", {"key": "s2"})  # multipart: only JSON bodies are accepted
    assert form.status_code == 415
