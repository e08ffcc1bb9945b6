"""``model_update``: the one way services change fields of an existing row.

After the HackSoft Django styleguide's helper of the same name: set the given fields from ``data``,
save only those that changed (one UPDATE naming them), and say which changed, so the caller audits
exactly that. ``updated_at`` follows: an ``auto_now`` field is stamped by Django; a plain one (the
models that run on a simulated clock) takes ``now``. Validation stays in the services, before the
call: a field that is not on the model is a programming error and raises.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from django.core.exceptions import FieldDoesNotExist
from django.db import models

M = TypeVar("M", bound=models.Model)


def model_update(
    *,
    instance: M,
    data: Mapping[str, Any],
    fields: Iterable[str] | None = None,
    now: dt.datetime | None = None,
    force: Iterable[str] = (),
) -> tuple[M, list[str]]:
    """Update ``fields`` (default: every key of ``data``) of ``instance`` from ``data``.

    Returns the instance and the names of the fields that changed; nothing is written when none
    did. ``force`` names fields to write even when unchanged (a counter bumped elsewhere).
    """
    names = list(data if fields is None else fields)
    meta = instance._meta
    for name in [*names, *force]:
        try:
            meta.get_field(name)
        except FieldDoesNotExist as exc:
            raise ValueError(f"{type(instance).__name__} has no field {name!r}") from exc
    changed = [name for name in names if getattr(instance, name) != data[name]]
    to_write = list(dict.fromkeys([*changed, *force]))
    if not to_write:
        return instance, []
    try:
        stamp = meta.get_field("updated_at")
    except FieldDoesNotExist:
        stamp = None
    manual_stamp = stamp is not None and not getattr(stamp, "auto_now", False)
    if manual_stamp and now is None:  # refused before the instance is touched
        raise ValueError(f"{type(instance).__name__}.updated_at needs now= (it is not auto_now)")
    for name in changed:
        setattr(instance, name, data[name])
    if stamp is not None:
        if manual_stamp:
            setattr(instance, "updated_at", now)  # noqa: B010  (the stamp's name, checked above)
        if "updated_at" not in to_write:
            to_write.append("updated_at")
    instance.save(update_fields=to_write)
    return instance, changed
