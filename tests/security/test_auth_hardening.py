"""Issue 17, auth: login lockout per (username, client address) behind trusted proxies, hashed
expiring revocable API tokens, a serving-fleet token command, and the serving role."""

from __future__ import annotations

import datetime as dt
import hashlib
from io import StringIO

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.test import Client, RequestFactory
from django.utils import timezone
from knox.models import AuthToken
from rest_framework.test import APIClient

from controlplane.edge import client_ip

pytestmark = pytest.mark.django_db


def _post_login(client: Client, username: str, password: str, ip: str, forwarded: str = "") -> int:
    extra = {"REMOTE_ADDR": ip}
    if forwarded:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return client.post("/accounts/login/", {"username": username, "password": password}, **extra).status_code


def test_client_ip_honours_forwarded_headers_only_from_trusted_proxies(settings):
    rf = RequestFactory()
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    via_proxy = rf.get("/", REMOTE_ADDR="10.1.1.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7, 10.2.2.2")
    assert client_ip(via_proxy) == "203.0.113.7"  # right-most hop that is not a trusted proxy
    spoofed = rf.get("/", REMOTE_ADDR="198.51.100.9", HTTP_X_FORWARDED_FOR="1.2.3.4")
    assert client_ip(spoofed) == "198.51.100.9"  # a direct client cannot choose its address
    settings.TRUSTED_PROXIES = []
    assert client_ip(via_proxy) == "10.1.1.1"


def test_login_locks_out_a_username_per_client_address_behind_a_proxy(make_user, settings):
    from tests.conftest import PASSWORD

    cache.clear()
    settings.TRUSTED_PROXIES = ["10.0.0.1"]
    make_user("target", "viewer")
    make_user("colleague", "viewer")
    client = Client()
    proxy = "10.0.0.1"
    attacker, office = "203.0.113.5", "198.51.100.20"
    limit = settings.AXES_FAILURE_LIMIT
    statuses = [_post_login(client, "target", "wrong", proxy, forwarded=attacker) for _ in range(limit)]
    assert statuses == [200] * (limit - 1) + [429]  # the form again with an error, then the lockout
    # Locked out: that username from that client address, even with the right password.
    locked = client.post(
        "/accounts/login/",
        {"username": "target", "password": PASSWORD},
        REMOTE_ADDR=proxy,
        HTTP_X_FORWARDED_FOR=attacker,
    )
    assert locked.status_code == 429 and "Too many failed logins" in locked.content.decode()
    # Everyone else behind the same proxy logs in: the key is the forwarded client, not the proxy.
    assert _post_login(Client(), "target", PASSWORD, proxy, forwarded=office) == 302
    assert _post_login(Client(), "colleague", PASSWORD, proxy, forwarded=attacker) == 302


def test_api_tokens_are_hashed_expire_and_can_be_revoked(make_user, seeded):
    user = make_user("reader", "viewer")
    instance, token = AuthToken.objects.create(user=user, expiry=dt.timedelta(hours=1))
    assert token not in {instance.digest, instance.token_key} and len(instance.digest) == 128
    assert instance.digest != hashlib.sha256(token.encode()).hexdigest()  # stored as a digest, not the token
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert client.get("/api/v1/surfaces/").status_code == 200
    AuthToken.objects.filter(pk=instance.pk).update(expiry=timezone.now() - dt.timedelta(seconds=1))
    assert client.get("/api/v1/surfaces/").status_code == 401  # expired
    _, token2 = AuthToken.objects.create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token2}")
    assert client.get("/api/v1/surfaces/").status_code == 200
    AuthToken.objects.filter(user=user).delete()  # revoked
    assert client.get("/api/v1/surfaces/").status_code == 401


def test_the_serving_token_command_issues_a_fleet_token_that_ranks_and_ingests_but_reads_nothing(seeded):
    from controlplane.core.models import AuditEvent

    out = StringIO()
    call_command("serving_token", "eu-west", "--ttl-days", "7", stdout=out)
    token = out.getvalue().strip().splitlines()[-1]
    [stored] = AuthToken.objects.filter(user__username="serving-eu-west")
    assert stored.expiry is not None and stored.expiry < timezone.now() + dt.timedelta(days=8)
    assert token not in str(list(AuditEvent.objects.values()))  # audited, never with the token
    assert AuditEvent.objects.filter(verb="token.issue").exists()
    fleet = APIClient()
    fleet.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    # (rank requests with a fleet identity: tests/serving/test_router.py, serving_client)
    batch = {"client_batch_id": "fleet-1", "surface": "pages", "rows": []}
    assert fleet.post("/api/v1/ingest/exposures/", batch, format="json").status_code in (201, 422)
    assert fleet.get("/api/v1/surfaces/").status_code == 403  # reads nothing
    assert fleet.post("/api/v1/surfaces/pages/allocation/", {}, format="json").status_code == 403
    call_command("serving_token", "eu-west", "--revoke", stdout=StringIO())
    assert fleet.post("/api/v1/ingest/exposures/", batch, format="json").status_code == 401
