"""Bulk, validated, idempotent ingestion of the evidence the analysis reads.

Four kinds of batch: per-unit, per-day **metric rows** (the warehouse hand-off), raw
**engagement events** (rolled up here into per-unit-day metric rows), **exposures** reported by
serving fleets that assign locally, and **latency samples** from those fleets.

What is atomic and what is partial
----------------------------------
* Per batch, the accepted rows and the batch's :class:`IngestBatch` record commit in one
  transaction: either both are stored or neither is.
* Within a batch, validation is per row: a bad row is rejected with an error naming its index
  (0-based) and field; the good rows are kept (status ``partial``). A batch whose every row is bad
  is recorded as ``rejected``.
* A ``client_batch_id`` makes a batch idempotent per (kind, surface): re-sending it returns the first result
  and writes nothing (a re-send with a different row count is refused with 409). Send corrected
  rows under a new batch id.

Validation (each gives a per-row error): an unknown unit (no exposure logged for it on the surface,
by the router or the exposures endpoint), an unknown or non-ingestible metric key, a negative or
non-finite value (every ingestible metric is a count, a sum of seconds or a duration), a value
beyond ``MAX_ABS_VALUE`` (1e15, see below), a day or
timestamp out of range (older than ``INGEST_MAX_AGE_DAYS``, default 400 days, for metric rows and
``INGEST_EVENT_MAX_AGE_DAYS``, default 35, for events and samples; later than now + 1 day for
days, now + 5 minutes for timestamps).

Engagement events are **rolled up, not stored raw**: each batch adds its per-(unit, day, metric)
sums as metric rows linked to the batch. The analysis reads unit-day sums, so a unit-day split
across batches adds up exactly, and a raw-event table would duplicate the warehouse while halving
ingest throughput. Post-level feedback for counterfactual evaluation goes to the serving
impression log instead (``controlplane.serving.services.impressions_record_rewards``).

Metric rows are written with PostgreSQL ``COPY … FROM STDIN`` (psycopg 3 ``cursor.copy``, text
format, streamed in chunks) on PostgreSQL and multi-row ``INSERT`` on SQLite, behind one function
(:func:`_write_metric_rows`). Checks run once per distinct value (unit, day, metric) and reach the
rows through numpy codes; the metric-row table has no database foreign keys (see
``MetricObservation``: this module creates the batch and resolves the surface in the rows'
transaction).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from controlplane.core import telemetry
from controlplane.core.assignment import bucket as assignment_bucket
from controlplane.core.errors import ApplicationError, ConflictError
from controlplane.core.models import Allocation, Population, RankingStack, Surface
from controlplane.core.updates import model_update
from controlplane.serving.models import Exposure, IngestBatch
from experiments.models import MetricDefinition, MetricObservation

MAX_ROWS_PER_BATCH = 2_000_000
# The documented bound on one ingested value (metric rows, event values, latency ms): |v| ≤ 1e15.
# Counts stay exact integers below 2**53 ≈ 9.0e15, and the analysis squares and cubes per-unit
# sums over windows of up to INGEST_MAX_AGE_DAYS days: (400 · 1e15)³ · 1e9 units ≈ 6e61, far from
# float64's 1.8e308, so no sum can overflow (1e308 used to be accepted and overflow the analysis).
MAX_ABS_VALUE = 1e15
ARMS = ("holdout", "control", "treatment")

# key: (name, kind, direction, numerator, denominator, quantile, ingestible, description)
STANDARD_METRICS: dict[str, tuple[str, str, str, str, str, float | None, bool, str]] = {
    "impressions": ("Impressions", "mean", "higher", "", "", None, True, "Posts shown per unit-day"),
    "sessions": ("Sessions", "mean", "higher", "", "", None, True, "Feed sessions without an error"),
    "time_spent": ("Time spent (s)", "mean", "higher", "", "", None, True, "Dwell seconds per unit-day"),
    "likes": ("Likes", "mean", "higher", "", "", None, True, ""),
    "comments": ("Comments", "mean", "higher", "", "", None, True, ""),
    "shares": ("Shares", "mean", "higher", "", "", None, True, ""),
    "hides": ("Hides", "mean", "lower", "", "", None, True, ""),
    "reports": ("Reports", "mean", "lower", "", "", None, True, ""),
    "integrity_impressions": (
        "Integrity-violating impressions", "mean", "lower", "", "", None, True, "Impressions of violating posts",
    ),
    "errors": ("Errors", "mean", "lower", "", "", None, True, "Feed requests that failed"),
    "requests": ("Requests", "mean", "higher", "", "", None, True, "Feed requests"),
    "meaningful_interactions": (
        "Meaningful interactions", "mean", "higher", "", "", None, True, "Comments + shares",
    ),
    "newcomer_impressions": (
        "Newcomer-creator impressions", "mean", "higher", "", "", None, True,
        "Impressions of posts by newcomer creators",
    ),
    "engagements": ("Engagements", "mean", "higher", "", "", None, True, "Likes + comments + shares"),
    "negative_feedback": ("Negative feedback", "mean", "lower", "", "", None, True, "Hides + reports"),
    # The ratio definitions match experiments.metrics (the experiments app's standard set): a
    # numerator or denominator may be a sum of ingested keys, "hides+reports".
    "engagement_rate": (
        "Engagement rate", "ratio", "higher", "likes+comments+shares", "impressions", None, False,
        "(likes + comments + shares) / impressions, delta method over users",
    ),
    "hide_report_rate": (
        "Hide + report rate", "ratio", "lower", "hides+reports", "impressions", None, False,
        "(hides + reports) / impressions",
    ),
    "integrity_rate": (
        "Integrity-violating impression rate", "ratio", "lower", "integrity_impressions", "impressions", None,
        False, "Violating impressions / impressions",
    ),
    "error_rate": ("Error rate", "ratio", "lower", "errors", "requests", None, False, "Failed feed loads / requests"),
    "newcomer_exposure": (
        "Newcomer-creator exposure", "ratio", "higher", "newcomer_impressions", "impressions", None, False,
        "Share of impressions from new creators",
    ),
    "latency_p99": (
        "p99 latency (ms)", "quantile", "lower", "", "", 0.99, False,
        "99th percentile of serving latency samples per arm",
    ),
    "latency_p50": (
        "p50 latency (ms)", "quantile", "lower", "", "", 0.5, False,
        "Median serving latency per arm",
    ),
}  # fmt: skip

# Engagement event type → the metric keys one event adds its value to.
EVENT_METRICS: dict[str, tuple[str, ...]] = {
    "impression": ("impressions",),
    "request": ("requests",),
    "session": ("sessions",),
    "dwell": ("time_spent",),
    "like": ("likes", "engagements"),
    "comment": ("comments", "meaningful_interactions", "engagements"),
    "share": ("shares", "meaningful_interactions", "engagements"),
    "hide": ("hides", "negative_feedback"),
    "report": ("reports", "negative_feedback"),
    "integrity_impression": ("integrity_impressions",),
    "newcomer_impression": ("newcomer_impressions",),
    "error": ("errors",),
}


def metric_definitions_ensure() -> int:
    """Create the standard metric definitions that are missing; returns how many were created.

    The experiments app's own standard set (``experiments.services.metric_definitions_ensure_standard``)
    goes first when it is installed, so each shared key has one definition whichever app seeds
    first; this adds the serving-side extras (``engagements``, ``negative_feedback``,
    ``latency_p50``). Existing rows are left as they are (an operator may have edited them).
    """
    created = 0
    try:
        from experiments.services import metric_definitions_ensure_standard
    except ImportError:  # ingestion works without the experiments services
        pass
    else:
        created += int(metric_definitions_ensure_standard())
    existing = set(
        MetricDefinition.objects.filter(key__in=list(STANDARD_METRICS)).values_list("key", flat=True)
    )
    missing = [
        MetricDefinition(
            key=key,
            name=name,
            kind=kind,
            direction=direction,
            numerator=numerator,
            denominator=denominator,
            quantile=quantile,
            ingestible=ingestible,
            description=description,
        )
        for key, (name, kind, direction, numerator, denominator, quantile, ingestible, description) in (
            STANDARD_METRICS.items()
        )
        if key not in existing
    ]
    MetricDefinition.objects.bulk_create(missing, ignore_conflicts=True)
    return created + len(missing)


@dataclass(frozen=True, slots=True)
class IngestResult:
    batch: IngestBatch
    replayed: bool
    written: int = 0  # rows written to the evidence table (events: rolled-up metric rows)

    def to_dict(self) -> dict[str, Any]:
        b = self.batch
        return {
            "client_batch_id": b.client_batch_id,
            "kind": b.kind,
            "surface": b.surface_key,
            "status": b.status,
            "received": b.received,
            "accepted": b.accepted,
            "rejected": b.rejected,
            "errors": b.errors,
            "replayed": self.replayed,
            "rows_written": self.written,
            "created_at": b.created_at.isoformat(),
        }


class _Errors:
    """Per-row errors, in row order, at most one per (row, field)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.bad: set[int] = set()

    def add_mask(self, mask: np.ndarray, field: str, message: str | Callable[[int], str]) -> None:
        # Messages are built only for the bad rows (a million-row batch is mostly good).
        for i in np.flatnonzero(mask):
            msg = message if isinstance(message, str) else message(int(i))
            self.items.append({"row": int(i), "field": field, "message": msg})
            self.bad.add(int(i))

    def sorted(self) -> list[dict[str, Any]]:
        return sorted(self.items, key=lambda e: (e["row"], e["field"]))


def _setting(name: str, default: int) -> int:
    from controlplane.serving.stacks import setting

    return int(setting(name, default))


def _column(rows: Sequence[Any], name: str) -> pd.Series:
    return _as_series([row.get(name) if isinstance(row, Mapping) else None for row in rows])


def _surface(surface: Surface | str) -> Surface:
    if isinstance(surface, Surface):
        return surface
    found = Surface.objects.filter(key=surface).first()
    if found is None:
        raise ApplicationError(
            f"unknown surface {surface!r}", field="surface", code="unknown_surface", http_status=404
        )
    return found


def _as_series(values: Sequence[Any] | np.ndarray | pd.Series) -> pd.Series:
    if isinstance(values, pd.Series):
        return values.reset_index(drop=True)
    if isinstance(values, np.ndarray):
        # Arrays come from files and code (the CLI, simulations), not from JSON: no nested objects.
        return pd.Series(values)
    # JSON may put lists or objects anywhere; only hashable scalars go on to the checks.
    return pd.Series(
        [v if isinstance(v, str | int | float | bool) or v is None else repr(v) for v in values], dtype=object
    )


@dataclass(frozen=True, slots=True)
class _Coded:
    """A column as codes into its distinct values (``pandas.factorize``).

    A batch repeats the same few units, days and metrics on many rows: each check runs once per
    distinct value and reaches the rows through the codes (numpy indexing, no per-row Python).
    """

    codes: np.ndarray  # per row, an index into uniques; -1 for a missing value (None, NaN)
    uniques: np.ndarray  # object array of the distinct values

    @classmethod
    def of(cls, column: pd.Series) -> _Coded:
        # Non-strings that compare equal (1, 1.0, True) share a code: every check rejects them
        # all alike, and error messages quote the row's own value, not the shared one.
        # On an object array: pandas 3 infers its ``str`` dtype for text, 4× slower to factorize.
        codes, uniques = pd.factorize(column.to_numpy(dtype=object))
        return cls(np.asarray(codes, dtype=np.intp), np.asarray(uniques, dtype=object))

    def rows(self, ok: np.ndarray) -> np.ndarray:
        """Per-value verdicts → per-row verdicts (a missing value is never ok)."""
        return np.append(np.asarray(ok, dtype=bool), False)[self.codes]

    def take(self, idx: np.ndarray | slice) -> _Coded:
        return _Coded(self.codes[idx], self.uniques)


def _check_unit_ids(units: _Coded, errors: _Errors, field: str = "unit_id") -> np.ndarray:
    """Per distinct value: whether it is a well-formed unit id; rows that are not get an error."""
    ok = np.array(
        [
            isinstance(u, str) and 0 < len(u) <= 128 and u.isprintable() and u == u.strip()
            for u in units.uniques
        ],
        dtype=bool,
    )
    errors.add_mask(~units.rows(ok), field, "must be 1..128 printable characters")
    return ok


def _known_units(surface: Surface, candidates: Sequence[str]) -> set[str]:
    """Units with an exposure on ``surface`` (any salt), among ``candidates``.

    Raw SQL: the ORM would resolve every one of tens of thousands of IN parameters in Python.
    """
    table = connection.ops.quote_name(Exposure._meta.db_table)
    items = sorted(candidates)
    known: set[str] = set()
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                f"SELECT DISTINCT unit_id FROM {table} WHERE surface_id = %s AND unit_id = ANY(%s)",
                [surface.pk, items],
            )
            known.update(row[0] for row in cursor.fetchall())
            return known
        for start in range(0, len(items), 5000):
            chunk = items[start : start + 5000]
            marks = ", ".join(["%s"] * len(chunk))
            cursor.execute(
                f"SELECT DISTINCT unit_id FROM {table} WHERE surface_id = %s AND unit_id IN ({marks})",
                [surface.pk, *chunk],
            )
            known.update(row[0] for row in cursor.fetchall())
    return known


def _check_known(surface: Surface, units: _Coded, valid: np.ndarray, errors: _Errors) -> np.ndarray:
    """Rows whose (well-formed, ``valid`` per distinct value) unit has an exposure on the surface."""
    known = _known_units(surface, units.uniques[valid].tolist())
    is_known = np.array([u in known for u in units.uniques], dtype=bool) & valid
    errors.add_mask(
        units.rows(valid & ~is_known), "unit_id", f"unknown unit: no exposure on surface {surface.key}"
    )
    return units.rows(is_known)


def _check_values(
    values: pd.Series, errors: _Errors, field: str = "value", default: float | None = None
) -> np.ndarray:
    if values.dtype.kind in "iuf":
        numeric = values.to_numpy(dtype=float)
        not_number = np.isnan(numeric) if default is None else np.zeros(len(numeric), dtype=bool)
        numeric = np.where(np.isnan(numeric), default if default is not None else np.nan, numeric)
    else:
        if default is not None:
            values = values.where(values.notna(), default)
        kinds = values.map(type)
        is_number = kinds.isin([int, float]).to_numpy(dtype=bool)
        not_number = ~is_number
        numeric = pd.to_numeric(values.where(is_number), errors="coerce").to_numpy(dtype=float)
    errors.add_mask(not_number, field, "must be a number")
    finite = np.isfinite(numeric)
    errors.add_mask(~not_number & ~finite, field, "must be finite")
    errors.add_mask(
        ~not_number & finite & (numeric < 0), field, "negative count: values must be zero or more"
    )
    errors.add_mask(
        ~not_number & finite & (np.abs(numeric) > MAX_ABS_VALUE),
        field,
        lambda i: f"{numeric[i]:g} is beyond the bound |value| <= {MAX_ABS_VALUE:g} (MAX_ABS_VALUE)",
    )
    return numeric


def _check_days(days: _Coded, now: dt.datetime, errors: _Errors) -> np.ndarray:
    """Rows with a valid day, a strict ``YYYY-MM-DD`` string in range (checked per distinct value)."""
    values = pd.Series(days.uniques, dtype=object)
    parsed = pd.to_datetime(values.where(values.map(type).isin([str])), format="%Y-%m-%d", errors="coerce")
    bad_format = ~days.rows(parsed.notna().to_numpy())
    errors.add_mask(bad_format, "day", "must be a date YYYY-MM-DD")
    today = now.astimezone(dt.UTC).date()
    earliest = pd.Timestamp(today - dt.timedelta(days=_setting("INGEST_MAX_AGE_DAYS", 400)))
    latest = pd.Timestamp(today + dt.timedelta(days=1))
    out_of_range = days.rows(((parsed < earliest) | (parsed > latest)).to_numpy())
    errors.add_mask(
        out_of_range, "day", f"timestamp out of range: day must lie in {earliest.date()}..{latest.date()}"
    )
    return ~bad_format & ~out_of_range


def _check_timestamps(values: pd.Series, now: dt.datetime, errors: _Errors, field: str = "ts") -> pd.Series:
    parsed = pd.to_datetime(
        values.where(values.map(type).isin([str])), format="ISO8601", utc=True, errors="coerce"
    )
    bad_format = parsed.isna().to_numpy()
    errors.add_mask(bad_format, field, "must be an ISO 8601 timestamp")
    earliest = pd.Timestamp(now - dt.timedelta(days=_setting("INGEST_EVENT_MAX_AGE_DAYS", 35)))
    latest = pd.Timestamp(now + dt.timedelta(minutes=5))
    out_of_range = ~bad_format & ((parsed < earliest) | (parsed > latest)).to_numpy()
    errors.add_mask(
        out_of_range,
        field,
        f"timestamp out of range: must lie in {earliest.isoformat()}..{latest.isoformat()}",
    )
    return parsed


def _check_choice(
    values: pd.Series,
    allowed: Sequence[str],
    errors: _Errors,
    field: str,
    what: str,
    coded: _Coded | None = None,
) -> np.ndarray:
    """Rows whose value is one of ``allowed`` (per distinct value when ``coded`` is given)."""
    if coded is None:
        ok = values.isin(list(allowed)).to_numpy(dtype=bool)
    else:
        allowed_set = set(allowed)
        ok = coded.rows(np.array([type(v) is str and v in allowed_set for v in coded.uniques], dtype=bool))
    errors.add_mask(~ok, field, lambda i: f"unknown {what} {values.iloc[i]!r}")
    return ok


# -- writing --------------------------------------------------------------------------------------
def _is_postgres() -> bool:
    return connection.vendor == "postgresql"


def _copy_text(value: Any) -> str:
    """A value as a field of PostgreSQL's COPY text format (backslash escapes)."""
    text = (
        value if isinstance(value, str) else value.isoformat() if isinstance(value, dt.date) else str(value)
    )
    if "\\" in text or "\t" in text or "\n" in text or "\r" in text:
        text = text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return text


COPY_CHUNK_ROWS = 50_000
_SMALL_WHOLE = 1 << 16  # whole values below this are formatted from one table


def _float_texts(values: np.ndarray) -> np.ndarray:
    """``repr`` of each value (an object array of str), without a Python call per row for the common
    case: counts are whole numbers, formatted once each from a table; the rest one by one."""
    small = (values >= 0) & (values < _SMALL_WHOLE) & ~np.signbit(values)
    whole = np.zeros(len(values), dtype=np.int64)
    whole[small] = values[small].astype(np.int64)
    small &= whole == values
    table = np.array([repr(float(i)) for i in range(int(whole.max(initial=0)) + 1)], dtype=object)
    texts = table[whole]
    rest = np.flatnonzero(~small)
    if len(rest):
        texts[rest] = [repr(v) for v in values[rest].tolist()]
    return texts


def copy_metric_rows(
    *, surface_id: int, batch_id: int, units: _Coded, days: _Coded, metrics: _Coded, values: np.ndarray
) -> int:
    """Write metric rows with PostgreSQL ``COPY … FROM STDIN``, inside the current transaction.

    The columns are coded (every code valid; day values are ``YYYY-MM-DD`` strings or dates). The
    text is assembled without Python code per row: the columns go in the order (unit_id, value,
    day, metric, surface_id, batch_id), so a row is three pieces, each picked by numpy indexing
    from strings made once: the escaped unit, the value (:func:`_float_texts`), and the rest of
    the line for its (day, metric) pair. Rows go in chunks through psycopg's queued writer: a
    worker thread streams each chunk while this thread assembles the next, so PostgreSQL parses
    and inserts in parallel (text format: no CSV quoting to do).
    """
    from psycopg.copy import QueuedLibpqWriter

    n = len(values)
    if n == 0:
        return 0
    heads = np.array([f"{_copy_text(u)}\t" for u in units.uniques.tolist()], dtype=object)
    n_metrics = max(len(metrics.uniques), 1)
    pair_codes, pairs = pd.factorize(days.codes.astype(np.int64) * n_metrics + metrics.codes)
    day_texts = [_copy_text(days.uniques[p // n_metrics]) for p in pairs.tolist()]
    metric_texts = [_copy_text(metrics.uniques[p % n_metrics]) for p in pairs.tolist()]
    tails = np.array(
        [
            f"\t{day}\t{metric}\t{int(surface_id)}\t{int(batch_id)}\n"
            for day, metric in zip(day_texts, metric_texts, strict=True)
        ],
        dtype=object,
    )
    # Rows in the order of the (surface, metric, day) index, each key's rows in batch order: the
    # index takes its inserts one key at a time (the same leaf pages, hot in cache), about 20%
    # less PostgreSQL time than rows whose metrics interleave, and each key's rows lie together
    # in the table for the readers' range scans.
    rank = np.empty(len(pairs), dtype=np.intp)
    rank[sorted(range(len(pairs)), key=lambda i: (metric_texts[i], day_texts[i]))] = np.arange(len(pairs))
    order = np.argsort(rank[pair_codes], kind="stable")
    unit_codes, pair_codes = units.codes[order], pair_codes[order]
    texts = _float_texts(np.asarray(values, dtype=float)[order])
    table = connection.ops.quote_name(MetricObservation._meta.db_table)
    columns = ", ".join(
        connection.ops.quote_name(c) for c in ("unit_id", "value", "day", "metric", "surface_id", "batch_id")
    )
    with connection.cursor() as cursor:
        raw = cursor.cursor
        with raw.copy(f"COPY {table} ({columns}) FROM STDIN", writer=QueuedLibpqWriter(raw)) as copy:
            for start in range(0, n, COPY_CHUNK_ROWS):
                stop = min(start + COPY_CHUNK_ROWS, n)
                pieces = np.empty(3 * (stop - start), dtype=object)
                pieces[0::3] = heads[unit_codes[start:stop]]
                pieces[1::3] = texts[start:stop]
                pieces[2::3] = tails[pair_codes[start:stop]]
                copy.write("".join(pieces.tolist()))
    return n


def _write_metric_rows(
    *, surface_id: int, batch_id: int, units: _Coded, days: _Coded, metrics: _Coded, values: np.ndarray
) -> int:
    """COPY on PostgreSQL, multi-row INSERTs elsewhere (SQLite). Arguments as :func:`copy_metric_rows`."""
    values = np.asarray(values, dtype=float)
    if _is_postgres():
        return copy_metric_rows(
            surface_id=surface_id, batch_id=batch_id, units=units, days=days, metrics=metrics, values=values
        )
    from controlplane.serving.bulk import insert_rows

    day_text = [d if isinstance(d, str) else d.isoformat() for d in days.uniques.tolist()]
    rows = [
        (int(surface_id), units.uniques[u], day_text[d], metrics.uniques[m], v, int(batch_id))
        for u, d, m, v in zip(
            units.codes.tolist(), days.codes.tolist(), metrics.codes.tolist(), values.tolist(), strict=True
        )
    ]
    columns = ["surface_id", "unit_id", "day", "metric", "value", "batch_id"]
    return insert_rows(MetricObservation._meta.db_table, columns, rows)


def _open_batch(
    *, kind: str, surface: Surface, client_batch_id: str, received: int, actor: Any, now: dt.datetime
) -> tuple[IngestBatch, bool]:
    """Claim ``client_batch_id`` for (kind, surface) inside the caller's transaction; (batch, replayed).

    Ids are unique per (kind, surface): two surfaces' warehouses may number their batches alike, and
    the same id on another surface is a different batch, not a replay (issue 17)."""
    if not isinstance(client_batch_id, str) or not client_batch_id.strip() or len(client_batch_id) > 128:
        raise ApplicationError("client_batch_id must be 1..128 characters", field="client_batch_id")
    if received > MAX_ROWS_PER_BATCH:
        raise ApplicationError(
            f"a batch holds at most {MAX_ROWS_PER_BATCH} rows (got {received}); split it",
            field="rows",
            code="batch_too_large",
            http_status=413,
        )
    existing = IngestBatch.objects.filter(
        kind=kind, surface_key=surface.key, client_batch_id=client_batch_id
    ).first()
    if existing is None:
        try:
            with transaction.atomic():
                label = actor if isinstance(actor, str) else getattr(actor, "username", str(actor))
                batch = IngestBatch.objects.create(
                    kind=kind,
                    surface_key=surface.key,
                    client_batch_id=client_batch_id,
                    status=IngestBatch.Status.REJECTED,
                    received=received,
                    accepted=0,
                    rejected=0,
                    errors=[],
                    created_by=label[:150],
                    created_at=now,
                )
            return batch, False
        except IntegrityError:
            # A concurrent request with the same id committed first: replay its result.
            existing = IngestBatch.objects.get(
                kind=kind, surface_key=surface.key, client_batch_id=client_batch_id
            )
    if existing.received != received:
        raise ConflictError(
            f"batch {client_batch_id!r} was already ingested with {existing.received} rows; this one has "
            f"{received}. Use a new client_batch_id for different rows.",
            field="client_batch_id",
        )
    return existing, True


def _close_batch(batch: IngestBatch, errors: _Errors, received: int) -> None:
    rejected = len(errors.bad)
    accepted = received - rejected
    if rejected == 0:
        status = IngestBatch.Status.ACCEPTED
    elif rejected == received:
        status = IngestBatch.Status.REJECTED
    else:
        status = IngestBatch.Status.PARTIAL
    model_update(
        instance=batch,
        data={"accepted": accepted, "rejected": rejected, "errors": errors.sorted(), "status": status},
    )
    telemetry.ingest_counted(
        kind=batch.kind,
        accepted=accepted,
        rejected=rejected,
        reasons=(str(e["field"]) for e in errors.items),
    )


def _ingestible_metrics() -> set[str]:
    return set(MetricDefinition.objects.filter(ingestible=True).values_list("key", flat=True))


# -- metric rows ----------------------------------------------------------------------------------
def ingest_metric_rows(
    *,
    surface: Surface | str,
    client_batch_id: str,
    rows: Sequence[Mapping[str, Any]],
    actor: Any,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Ingest per-unit, per-day metric rows ``{unit_id, day: "YYYY-MM-DD", metric, value}``."""
    return ingest_metric_columns(
        surface=surface,
        client_batch_id=client_batch_id,
        unit_ids=_column(rows, "unit_id"),
        days=_column(rows, "day"),
        metrics=_column(rows, "metric"),
        values=_column(rows, "value"),
        actor=actor,
        now=now,
    )


@transaction.atomic
def ingest_metric_columns(
    *,
    surface: Surface | str,
    client_batch_id: str,
    unit_ids: Sequence[Any] | np.ndarray | pd.Series,
    days: Sequence[Any] | np.ndarray | pd.Series,
    metrics: Sequence[Any] | np.ndarray | pd.Series,
    values: Sequence[Any] | np.ndarray | pd.Series,
    actor: Any,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Columnar form of :func:`ingest_metric_rows` (the CSV/COPY path of the management command)."""
    now = now or timezone.now()
    surface = _surface(surface)
    unit_ids, days, metrics, values = (_as_series(c) for c in (unit_ids, days, metrics, values))
    n = len(unit_ids)
    if not (len(days) == len(metrics) == len(values) == n):
        raise ApplicationError("columns must have the same length", field="rows")
    batch, replayed = _open_batch(
        surface=surface,
        kind=IngestBatch.Kind.METRIC_ROWS,
        client_batch_id=client_batch_id,
        received=n,
        actor=actor,
        now=now,
    )
    if replayed:
        return IngestResult(batch, True)
    errors = _Errors()
    units, day_codes, metric_codes = _Coded.of(unit_ids), _Coded.of(days), _Coded.of(metrics)
    valid_unit = _check_unit_ids(units, errors)
    _check_known(surface, units, valid_unit, errors)
    _check_days(day_codes, now, errors)
    allowed = sorted(_ingestible_metrics())
    _check_choice(metrics, allowed, errors, "metric", "metric", coded=metric_codes)
    numeric = _check_values(values, errors)
    # Every check records its bad rows in ``errors``: the rest are good.
    rows: np.ndarray | slice = slice(None)
    if errors.bad:
        good = np.ones(n, dtype=bool)
        good[list(errors.bad)] = False
        rows = np.flatnonzero(good)
    written = _write_metric_rows(
        surface_id=surface.pk,
        batch_id=batch.pk,
        units=units.take(rows),
        days=day_codes.take(rows),
        metrics=metric_codes.take(rows),
        values=numeric[rows],
    )
    _close_batch(batch, errors, n)
    return IngestResult(batch, False, written)


# -- engagement events ----------------------------------------------------------------------------
@transaction.atomic
def ingest_events(
    *,
    surface: Surface | str,
    client_batch_id: str,
    events: Sequence[Mapping[str, Any]],
    actor: Any,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Ingest engagement events ``{unit_id, ts (ISO 8601), type, value=1}`` and roll them up.

    ``type`` is one of :data:`EVENT_METRICS`; ``value`` is a count (seconds for ``dwell``). Each
    accepted event adds its value to the metric keys of its type for (unit, UTC day of ts).
    """
    now = now or timezone.now()
    surface = _surface(surface)
    n = len(events)
    batch, replayed = _open_batch(
        surface=surface,
        kind=IngestBatch.Kind.EVENTS,
        client_batch_id=client_batch_id,
        received=n,
        actor=actor,
        now=now,
    )
    if replayed:
        return IngestResult(batch, True)
    errors = _Errors()
    units = _column(events, "unit_id")
    unit_codes = _Coded.of(units)
    valid_unit = _check_unit_ids(unit_codes, errors)
    known = _check_known(surface, unit_codes, valid_unit, errors)
    stamps = _check_timestamps(_column(events, "ts"), now, errors)
    types = _column(events, "type")
    type_ok = _check_choice(types, list(EVENT_METRICS), errors, "type", "event type")
    numeric = _check_values(_column(events, "value"), errors, default=1)
    good = np.ones(n, dtype=bool)
    if errors.bad:
        good[list(errors.bad)] = False
    good &= known & type_ok
    idx = np.flatnonzero(good)
    frame = pd.DataFrame(
        {
            "unit_id": units.to_numpy(dtype=object)[idx],
            "day": stamps.iloc[idx].dt.date.to_numpy(),
            "type": types.to_numpy(dtype=object)[idx],
            "value": numeric[idx],
        }
    )
    # Roll up: one row per (unit, day, metric) for this batch, each event feeding its metric keys.
    mapping = pd.DataFrame(
        [(t, m) for t, keys in EVENT_METRICS.items() for m in keys], columns=["type", "metric"]
    )
    rolled = (
        frame.merge(mapping, on="type")
        .groupby(["unit_id", "day", "metric"], sort=True, as_index=False)["value"]
        .sum()
    )
    written = _write_metric_rows(
        surface_id=surface.pk,
        batch_id=batch.pk,
        units=_Coded.of(rolled["unit_id"]),
        days=_Coded.of(rolled["day"]),
        metrics=_Coded.of(rolled["metric"]),
        values=rolled["value"].to_numpy(dtype=float),
    )
    _close_batch(batch, errors, n)
    return IngestResult(batch, False, written)


# -- exposures ------------------------------------------------------------------------------------
@transaction.atomic
def ingest_exposures(
    *,
    surface: Surface | str,
    client_batch_id: str,
    rows: Sequence[Mapping[str, Any]],
    actor: Any,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Ingest exposures from fleets that assign locally:
    ``{unit_id, salt, arm, population, stack, allocation_version, first_exposed_at}``.

    The salt must be one of the surface's allocation salts. Inserted with ON CONFLICT DO NOTHING:
    a unit already exposed under the salt keeps its first exposure (the row still counts as
    accepted; ``rows_written`` counts the new ones).
    """
    now = now or timezone.now()
    surface = _surface(surface)
    n = len(rows)
    batch, replayed = _open_batch(
        surface=surface,
        kind=IngestBatch.Kind.EXPOSURES,
        client_batch_id=client_batch_id,
        received=n,
        actor=actor,
        now=now,
    )
    if replayed:
        return IngestResult(batch, True)
    errors = _Errors()
    units = _column(rows, "unit_id")
    _check_unit_ids(_Coded.of(units), errors)
    salts = _column(rows, "salt")
    versions = {a.salt: a.version for a in Allocation.objects.filter(surface=surface)}
    _check_choice(salts, list(versions), errors, "salt", f"allocation salt of {surface.key}:")
    _check_choice(_column(rows, "arm"), ARMS, errors, "arm", "arm")
    _check_choice(_column(rows, "population"), Population.values, errors, "population", "population")
    labels = {s.label for s in RankingStack.objects.all()}
    _check_choice(_column(rows, "stack"), sorted(labels), errors, "stack", "stack")
    raw_versions = [row.get("allocation_version") if isinstance(row, Mapping) else None for row in rows]
    bad_version = np.array(
        [not (isinstance(v, int) and not isinstance(v, bool) and v > 0) for v in raw_versions], dtype=bool
    )
    errors.add_mask(bad_version, "allocation_version", "must be a positive integer")
    stamps = _check_timestamps(_column(rows, "first_exposed_at"), now, errors, field="first_exposed_at")
    good = [i for i in range(n) if i not in errors.bad]
    objs = [
        Exposure(
            surface=surface,
            salt=rows[i]["salt"],
            unit_id=rows[i]["unit_id"],
            arm=rows[i]["arm"],
            population=rows[i]["population"],
            stack=rows[i]["stack"],
            allocation_version=rows[i]["allocation_version"],
            bucket=assignment_bucket(rows[i]["salt"], rows[i]["unit_id"]),
            first_exposed_at=stamps.iloc[i].to_pydatetime(),
        )
        for i in good
    ]
    before = Exposure.objects.filter(surface=surface).count()
    Exposure.objects.bulk_create(objs, ignore_conflicts=True, batch_size=2000)
    written = Exposure.objects.filter(surface=surface).count() - before
    _close_batch(batch, errors, n)
    return IngestResult(batch, False, written)


# -- latency samples ------------------------------------------------------------------------------
@transaction.atomic
def ingest_latency(
    *,
    surface: Surface | str,
    client_batch_id: str,
    rows: Sequence[Mapping[str, Any]],
    actor: Any,
    now: dt.datetime | None = None,
) -> IngestResult:
    """Ingest fleet latency samples ``{unit_id, stack, arm, ts, ms, salt?, request_id?}``."""
    from controlplane.serving.models import LatencySample

    now = now or timezone.now()
    surface = _surface(surface)
    n = len(rows)
    batch, replayed = _open_batch(
        surface=surface,
        kind=IngestBatch.Kind.LATENCY,
        client_batch_id=client_batch_id,
        received=n,
        actor=actor,
        now=now,
    )
    if replayed:
        return IngestResult(batch, True)
    errors = _Errors()
    unit_codes = _Coded.of(_column(rows, "unit_id"))
    _check_known(surface, unit_codes, _check_unit_ids(unit_codes, errors), errors)
    labels = sorted(s.label for s in RankingStack.objects.all())
    _check_choice(_column(rows, "stack"), labels, errors, "stack", "stack")
    _check_choice(_column(rows, "arm"), ARMS, errors, "arm", "arm")
    stamps = _check_timestamps(_column(rows, "ts"), now, errors)
    ms = _check_values(_column(rows, "ms"), errors, field="ms")
    good = [i for i in range(n) if i not in errors.bad]
    objs = [
        LatencySample(
            surface=surface,
            request_id=str(rows[i].get("request_id") or "")[:64],
            unit_id=rows[i]["unit_id"],
            arm=rows[i]["arm"],
            stack=rows[i]["stack"],
            salt=str(rows[i].get("salt") or "")[:64],
            ts=stamps.iloc[i].to_pydatetime(),
            ms=float(ms[i]),
            source=LatencySample.Source.INGESTED,
            batch=batch,
        )
        for i in good
    ]
    LatencySample.objects.bulk_create(objs, batch_size=2000)
    _close_batch(batch, errors, n)
    return IngestResult(batch, False, len(objs))
