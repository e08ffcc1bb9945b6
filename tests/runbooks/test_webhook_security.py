"""Webhooks (issue 17): no request to an internal address, no redirect followed, no response body
stored, deliveries for operators only, and Standard Webhooks signatures a stock library verifies."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from migrations_runbooks import notifications, services, webhook_guard
from migrations_runbooks.models import Notification, WebhookEndpoint
from tests.runbooks.conftest import DAY, T0, Receiver, fast_steps

pytestmark = pytest.mark.django_db

# Every form the issue names: loopback, private, link-local (metadata), shared, multicast, reserved,
# IPv6, IPv4-mapped, decimal, octal, hex, short, and the metadata host names.
REFUSED_URLS = [
    "http://127.0.0.1/hook",
    "http://127.0.0.2:8080/hook",
    "http://localhost/hook",
    "http://LOCALHOST./hook",
    "http://0.0.0.0/hook",
    "http://10.0.0.1/hook",
    "http://172.16.5.4/hook",
    "http://192.168.1.1/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/hook",
    "http://224.0.0.1/hook",
    "http://240.0.0.1/hook",
    "http://255.255.255.255/hook",
    "http://198.18.0.1/hook",
    "http://192.0.2.1/hook",
    "http://2130706433/hook",
    "http://017700000001/hook",
    "http://0177.0.0.1/hook",
    "http://0x7f000001/hook",
    "http://0x7f.1/hook",
    "http://127.1/hook",
    "http://[::1]/hook",
    "http://[::]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:a9fe:a9fe]/hook",
    "http://[::127.0.0.1]/hook",
    "http://[64:ff9b::a00:1]/hook",
    "http://[2002:7f00:1::1]/hook",
    "http://[fe80::1]/hook",
    "http://[fc00::1]/hook",
    "http://[fd12:3456::1]/hook",
    "http://[ff02::1]/hook",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/hook",
    "http://instance-data/latest/",
    "ftp://example.com/hook",
    "file:///etc/passwd",
    "http:///no-host",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_registration_refuses_internal_addresses_in_every_form(seeded, users, api_client_for, url, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    response = api_client_for(users["operator"]).post(
        "/api/v1/runbook-webhooks/", {"name": "evil", "url": url, "secret": "s" * 20}, format="json"
    )
    assert response.status_code == 400, (url, response.json())
    assert "url" in response.json()["errors"]
    assert not WebhookEndpoint.objects.exists()


def test_a_public_address_registers_and_the_allowlist_admits_an_internal_receiver(seeded, users, settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    # A literal public address needs no DNS (and registration sends nothing).
    services.webhook_endpoint_upsert(
        name="public", url="https://93.184.215.14/hook", secret="s" * 20, actor=users["operator"], now=T0
    )
    with pytest.raises(Exception, match="WEBHOOK_ALLOWED_HOSTS"):
        services.webhook_endpoint_upsert(
            name="internal", url="http://10.1.2.3/hook", secret="s" * 20, actor=users["operator"], now=T0
        )
    settings.WEBHOOK_ALLOWED_HOSTS = ["10.1.0.0/16", "hooks.internal.example"]
    services.webhook_endpoint_upsert(
        name="internal", url="http://10.1.2.3/hook", secret="s" * 20, actor=users["operator"], now=T0
    )
    assert WebhookEndpoint.objects.count() == 2


def test_every_refused_form_is_named_by_the_guard(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = []
    for url in REFUSED_URLS:
        with pytest.raises(webhook_guard.AddressRefused):
            webhook_guard.check_url(url)
    assert webhook_guard.check_url("http://93.184.215.14/") == [
        webhook_guard.ipaddress.ip_address("93.184.215.14")
    ]
    assert webhook_guard.check_url("http://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/")


def _runbook_with_rollback(seeded, users):
    rb = services.runbook_create(
        surface=seeded["pages"],
        target_stack=seeded["unified"],
        actor=users["operator"],
        now=T0,
        steps=fast_steps(),
    )
    services.runbook_start(runbook=rb, actor=users["operator"], reason="go", now=T0)
    services.runbook_rollback(runbook=rb, actor=users["operator"], reason="manual", now=T0 + DAY)
    return rb


def test_delivery_rechecks_the_address_and_sends_nothing_inside(seeded, users, settings):
    """An endpoint stored before the guard (or whose DNS changed) is refused at delivery."""
    receiver = Receiver(secret="s" * 20)
    try:
        settings.WEBHOOK_ALLOWED_HOSTS = []
        WebhookEndpoint.objects.create(name="old", url=receiver.url, secret=receiver.secret, created_at=T0)
        _runbook_with_rollback(seeded, users)
        [n] = Notification.objects.all()
        n = notifications.notification_deliver(notification_id=n.pk, now=T0 + DAY)
        assert (n.last_error, n.last_status_code, n.status) == ("AddressRefused", None, "pending")
        assert receiver.requests == []
    finally:
        receiver.close()


def test_the_connection_itself_is_checked_against_dns_rebinding(seeded, users, settings, monkeypatch):
    """The name passed the check, then resolved to loopback at connect time: the socket's peer is
    checked before a byte is sent."""
    receiver = Receiver(secret="s" * 20)
    try:
        settings.WEBHOOK_ALLOWED_HOSTS = []
        WebhookEndpoint.objects.create(name="rebind", url=receiver.url, secret=receiver.secret, created_at=T0)
        monkeypatch.setattr(webhook_guard, "check_url", lambda url: [])  # the lookup said "public"
        _runbook_with_rollback(seeded, users)
        [n] = Notification.objects.all()
        n = notifications.notification_deliver(notification_id=n.pk, now=T0 + DAY)
        assert n.last_error == "AddressRefused" and receiver.requests == []
    finally:
        receiver.close()


def test_redirects_are_not_followed(seeded, users, receiver, webhook):
    other = Receiver(secret=receiver.secret)
    try:
        receiver.redirect_to = other.url
        _runbook_with_rollback(seeded, users)
        [n] = Notification.objects.all()
        n = notifications.notification_deliver(notification_id=n.pk, now=T0 + DAY)
        assert (n.last_status_code, n.last_error, n.status) == (302, "RedirectRefused", "pending")
        assert len(receiver.requests) == 1 and other.requests == []
    finally:
        other.close()


def test_the_response_body_is_never_stored_or_shown(seeded, users, receiver, webhook, api_client_for):
    receiver.reply = b"secret-from-an-internal-service-42"
    receiver.fail_next = 1
    _runbook_with_rollback(seeded, users)
    [n] = Notification.objects.all()
    n = notifications.notification_deliver(notification_id=n.pk, now=T0 + DAY)
    assert (n.last_status_code, n.last_error) == (503, "HTTPStatus")
    listed = api_client_for(users["operator"]).get("/api/v1/runbook-notifications/")
    assert listed.status_code == 200 and "secret-from" not in listed.content.decode()
    assert "secret-from" not in str(Notification.objects.values().get())


def test_only_operators_list_deliveries(seeded, users, api_client_for):
    assert api_client_for(users["viewer"]).get("/api/v1/runbook-notifications/").status_code == 403
    assert api_client_for(users["approver"]).get("/api/v1/runbook-notifications/").status_code == 403
    assert api_client_for(None).get("/api/v1/runbook-notifications/").status_code in (401, 403)
    assert api_client_for(users["operator"]).get("/api/v1/runbook-notifications/").status_code == 200


@pytest.mark.parametrize(
    "secret", ["plain-shared-secret-0123456789", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
)
def test_a_receiver_verifies_a_delivery_with_the_standardwebhooks_library(seeded, users, settings, secret):
    settings.WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    receiver = Receiver(secret=secret)
    try:
        WebhookEndpoint.objects.create(name="std", url=receiver.url, secret=secret, created_at=T0)
        _runbook_with_rollback(seeded, users)
        [n] = Notification.objects.all()
        now = timezone.now()  # the library checks the timestamp against the real clock
        assert notifications.notification_deliver(notification_id=n.pk, now=now).status == "delivered"
        [request] = receiver.requests
        key = secret if secret.startswith("whsec_") else secret.encode()
        payload = Webhook(key).verify(request["raw"], request["headers"])
        assert payload["event"] == "rollback" and payload["delivery_id"] == n.pk
        assert request["headers"]["webhook-id"] == f"runbook-notification-{n.pk}"
        # A stale timestamp (a replay an hour later) is refused by the same library.
        stale = {
            **request["headers"],
            "webhook-timestamp": str(int((now - dt.timedelta(hours=1)).timestamp())),
        }
        with pytest.raises(Exception, match=r"too old|signature"):
            Webhook(key).verify(request["raw"], stale)
        assert notifications.verify_signature(secret=secret, headers=request["headers"], body=request["raw"])
    finally:
        receiver.close()
