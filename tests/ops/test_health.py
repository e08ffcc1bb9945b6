"""/healthz and /readyz: anonymous, cheap, and they say nothing about hosts or errors."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_healthz_is_anonymous_and_touches_nothing(client, django_assert_num_queries):
    with django_assert_num_queries(0):
        response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert response["X-Request-ID"]


def test_readyz_checks_database_broker_cache_and_migrations(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "cache": "ok", "broker": "ok", "migrations": "ok"},
    }
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


def test_readyz_on_redis_broker_and_cache(client, settings, redis_url):
    from controlplane.celery import app

    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": redis_url}
    }
    old = app.conf.broker_url, app.conf.broker_transport_options
    app.conf.broker_url, app.conf.broker_transport_options = redis_url, {}
    try:
        response = client.get("/readyz")
    finally:
        app.conf.broker_url, app.conf.broker_transport_options = old
    assert response.status_code == 200, response.content


def test_readyz_reports_an_unreachable_broker_without_details(client, settings):
    # A closed local port: the connection is refused at once.
    settings.CELERY_BROKER_URL, settings.CELERY_BROKER_TRANSPORT_OPTIONS = "redis://127.0.0.1:1/0", {}
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.content.decode()
    assert response.json() == {
        "status": "unavailable",
        "checks": {"database": "ok", "cache": "ok", "broker": "unavailable", "migrations": "ok"},
    }
    for leak in ("127.0.0.1", "redis://", "Traceback", "Error"):
        assert leak not in body
