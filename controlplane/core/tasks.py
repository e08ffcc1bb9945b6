"""Thin Celery entry points of the core app."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone


@shared_task(acks_late=True, ignore_result=False)
def heartbeat() -> str:
    """Proves the worker (and beat) are alive and can reach the database; returns the UTC time."""
    from controlplane.core.models import Surface

    Surface.objects.exists()
    return timezone.now().isoformat()
