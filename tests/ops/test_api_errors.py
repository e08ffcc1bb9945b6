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
