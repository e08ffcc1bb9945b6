"""Issue (or revoke) the API token a serving fleet uses for the rank and ingestion endpoints.

    python manage.py serving_token eu-west --ttl-days 30      # prints the token once
    python manage.py serving_token eu-west --revoke           # every token of that fleet stops working

The fleet's identity is a user ``serving-<fleet>`` holding only the ``serving`` role (rank requests
and ingestion batches; it reads nothing). Tokens are django-rest-knox tokens: stored as a SHA-512
digest (the token itself is shown once, here), with an expiry, revocable. Both actions are audited.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone
from knox.models import AuthToken

from controlplane.core.permissions import SERVING
from controlplane.core.services import audit_record


class Command(BaseCommand):
    help = "Issue (or --revoke) an expiring, hashed API token for a serving fleet (role: serving)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("fleet", help="fleet name: letters, digits, - and _ (user serving-<fleet>)")
        parser.add_argument("--ttl-days", type=int, default=30, help="days until the token expires (1-365)")
        parser.add_argument("--revoke", action="store_true", help="delete every token of this fleet instead")

    def handle(self, *args: Any, **options: Any) -> None:
        fleet = options["fleet"]
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,60}", fleet):
            raise CommandError("fleet: use 1-60 letters, digits, '-' or '_'")
        ttl = options["ttl_days"]
        if not 1 <= ttl <= 365:
            raise CommandError("--ttl-days: between 1 and 365")
        username = f"serving-{fleet}"
        with transaction.atomic():
            user, created = get_user_model().objects.get_or_create(username=username)
            if created:
                user.set_unusable_password()  # a machine identity: no web login
                user.save(update_fields=["password"])
            user.groups.add(Group.objects.get_or_create(name=SERVING)[0])
            now = timezone.now()
            if options["revoke"]:
                count, _ = AuthToken.objects.filter(user=user).delete()
                audit_record(
                    actor="system:serving_token",
                    verb="token.revoke",
                    target=user,
                    after={"revoked": count},
                    now=now,
                )
                self.stdout.write(self.style.SUCCESS(f"revoked {count} token(s) of {username}"))
                return
            instance, token = AuthToken.objects.create(user=user, expiry=dt.timedelta(days=ttl))
            audit_record(
                actor="system:serving_token",
                verb="token.issue",
                target=user,
                after={
                    "token_key": instance.token_key,
                    "expires": instance.expiry.isoformat(),
                },  # never the token
                now=now,
            )
        self.stdout.write(f"user: {username} (role: {SERVING})")
        self.stdout.write(f"expires: {instance.expiry.isoformat()}")
        self.stdout.write("token (shown once; send it as 'Authorization: Token <token>'):")
        self.stdout.write(token)
