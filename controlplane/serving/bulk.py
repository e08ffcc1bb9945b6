"""Fast appends of many narrow rows: PostgreSQL COPY, or one ``executemany`` on SQLite.

The ORM's ``bulk_create`` prepares every value of every row through its field (tens of µs per
row); serving logs are append-only rows of plain values, so they skip that. Datetimes are adapted
with the backend's own adapter, so stored values are exactly what the ORM would have written.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from django.db import connection, models


def insert_objects(model: type[models.Model], objs: Sequence[models.Model]) -> int:
    """Append unsaved instances of ``model`` (every concrete non-primary-key field is written)."""
    if not objs:
        return 0
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    columns = [str(f.column) for f in fields]
    attnames = [f.attname for f in fields]
    rows = [tuple(getattr(obj, name) for name in attnames) for obj in objs]
    return insert_rows(model._meta.db_table, columns, rows)


def insert_rows(table: str, columns: Sequence[str], rows: Sequence[tuple[Any, ...]]) -> int:
    if not rows:
        return 0
    quoted = ", ".join(connection.ops.quote_name(c) for c in columns)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            with cursor.cursor.copy(f"COPY {connection.ops.quote_name(table)} ({quoted}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        else:
            adapt = connection.ops.adapt_datetimefield_value
            datetime_columns = [i for i, value in enumerate(rows[0]) if isinstance(value, dt.datetime)]
            if datetime_columns:
                converted = []
                for row in rows:
                    values = list(row)
                    for i in datetime_columns:
                        values[i] = adapt(values[i])
                    converted.append(tuple(values))
                rows = converted
            placeholders = ", ".join(["%s"] * len(columns))
            cursor.executemany(
                f"INSERT INTO {connection.ops.quote_name(table)} ({quoted}) VALUES ({placeholders})", rows
            )
    return len(rows)
