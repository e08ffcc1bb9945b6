"""model_update: only changed fields are written (one UPDATE naming them), updated_at follows."""

from __future__ import annotations

import datetime as dt

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from controlplane.core.models import Surface
from controlplane.core.updates import model_update
from migrations_runbooks.models import RunbookTemplate

pytestmark = [pytest.mark.django_db, pytest.mark.sqlite_path]


def test_writes_only_the_changed_fields_and_stamps_auto_now(seeded):
    surface = Surface.objects.get(key="pages")
    stamp = surface.updated_at
    with CaptureQueriesContext(connection) as queries:
        _, changed = model_update(instance=surface, data={"name": "Pages v2", "peak_qps": surface.peak_qps})
    assert changed == ["name"]
    [update] = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert '"name"' in update and '"updated_at"' in update and '"peak_qps"' not in update
    surface.refresh_from_db()
    assert surface.name == "Pages v2" and surface.updated_at > stamp


def test_nothing_changed_writes_nothing(seeded):
    surface = Surface.objects.get(key="pages")
    with CaptureQueriesContext(connection) as queries:
        _, changed = model_update(instance=surface, data={"name": surface.name})
    assert changed == [] and queries.captured_queries == []


def test_a_plain_updated_at_takes_now_and_is_required(db):
    template = RunbookTemplate.objects.create(
        key="t",
        name="t",
        description="",
        steps=[],
        created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        updated_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    )
    with pytest.raises(ValueError, match="needs now="):
        model_update(instance=template, data={"description": "x"})
    now = dt.datetime(2026, 2, 1, tzinfo=dt.UTC)
    model_update(instance=template, data={"description": "x"}, now=now)
    template.refresh_from_db()
    assert template.description == "x" and template.updated_at == now


def test_a_field_the_model_lacks_is_refused(seeded):
    with pytest.raises(ValueError, match="has no field 'colour'"):
        model_update(instance=Surface.objects.get(key="pages"), data={"colour": "red"})
