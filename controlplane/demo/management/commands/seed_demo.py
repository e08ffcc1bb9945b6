"""Idempotent demo seed: roles, demo users, the three stacks and the pages/groups surfaces."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from controlplane.core import services
from controlplane.core.models import Population, RankingStack
from controlplane.core.permissions import ROLES

SYSTEM = "system:seed_demo"
# Demo users: username → roles. The password is DEMO_PASSWORD (default printed by `make run`).
DEMO_USERS: dict[str, tuple[str, ...]] = {
    "pm": ("viewer", "operator"),
    "approver": ("viewer", "approver"),
    "viewer": ("viewer",),
}
DEFAULT_DEMO_PASSWORD = "unify-demo-2026"


def seed_stacks() -> dict[str, RankingStack]:
    specs: list[dict[str, Any]] = [
        {
            "key": "content-first",
            "version": "1",
            "kind": "content_first",
            "device": "cpu",
            "latency_slo_ms": 60.0,
            "throughput_per_replica": 220.0,
            "description": "Legacy: candidates from connections, per-action logistic models.",
        },
        {
            "key": "interest-first",
            "version": "1",
            "kind": "interest_first",
            "device": "cpu",
            "latency_slo_ms": 60.0,
            "throughput_per_replica": 180.0,
            "description": "Legacy: two-tower retrieval over the corpus, one engagement model.",
        },
        {
            "key": "unified-mtl",
            "version": "1",
            "kind": "unified_mtl",
            "device": "gpu",
            "latency_slo_ms": 80.0,
            "throughput_per_replica": 900.0,
            "host_cpu_ms_per_request": 3.0,
            "status": "candidate",
            "description": "Unified: multi-source retrieval, integrity, pass 0/1/2, MTL + value model.",
        },
    ]
    stacks = {}
    for spec in specs:
        existing = RankingStack.objects.filter(key=spec["key"], version=spec["version"]).first()
        if existing is not None:
            stacks[spec["kind"]] = existing  # keep measured figures a later training run recorded
            continue
        stacks[spec["kind"]] = services.stack_register(actor=SYSTEM, reason="demo seed", **spec)
    return stacks


class Command(BaseCommand):
    help = "Create roles, demo users, the three ranking stacks and the pages/groups surfaces (idempotent)."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--no-users", action="store_true", help="Only the registry, no demo users.")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        for role in ROLES:
            Group.objects.get_or_create(name=role)
        if not options["no_users"]:
            if not (settings.DEMO_MODE or settings.DEBUG or os.environ.get("DEMO_PASSWORD")):
                raise CommandError(
                    "refusing to create demo users with a known password outside demo mode; "
                    "set DEMO_PASSWORD or pass --no-users"
                )
            password = os.environ.get("DEMO_PASSWORD", DEFAULT_DEMO_PASSWORD)
            user_model = get_user_model()
            for username, roles in DEMO_USERS.items():
                user, created = user_model.objects.get_or_create(username=username)
                if created:
                    user.set_password(password)  # stored only as a Django password hash
                    user.is_staff = "operator" in roles
                    user.save()
                user.groups.set(Group.objects.filter(name__in=roles))
            admin, created = user_model.objects.get_or_create(
                username="admin", defaults={"is_staff": True, "is_superuser": True}
            )
            if created:
                admin.set_password(password)
                admin.save()
        stacks = seed_stacks()
        services.surface_upsert(
            key="pages",
            name="Pages feed",
            peak_qps=1200.0,
            populations={Population.CONTENT_FIRST: (stacks["content_first"], 10000)},
            actor=SYSTEM,
            reason="demo seed",
        )
        services.surface_upsert(
            key="groups",
            name="Groups feed",
            peak_qps=800.0,
            populations={
                Population.CONTENT_FIRST: (stacks["content_first"], 6000),
                Population.INTEREST_FIRST: (stacks["interest_first"], 4000),
            },
            actor=SYSTEM,
            reason="demo seed",
        )
        self.stdout.write(
            self.style.SUCCESS("seeded: 3 stacks, surfaces pages and groups, roles viewer/operator/approver")
        )
