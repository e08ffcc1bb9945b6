"""Ingest a warehouse file of per-unit, per-day metric rows (CSV or JSON lines) as one batch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from django.core.management.base import BaseCommand, CommandError

from controlplane.core.errors import ApplicationError
from experiments.ingestion import ingest_metric_columns

COLUMNS = ("unit_id", "day", "metric", "value")


def print_result(command: BaseCommand, result: Any, seconds: float, max_errors: int) -> None:
    body = result.to_dict()
    command.stdout.write(
        f"batch {body['client_batch_id']} ({body['kind']}): {body['status']}"
        f"{' (replayed: already ingested)' if body['replayed'] else ''}; received {body['received']}, "
        f"accepted {body['accepted']}, rejected {body['rejected']}, rows written {body['rows_written']} "
        f"in {seconds:.2f} s"
    )
    for error in body["errors"][:max_errors]:
        command.stdout.write(f"  row {error['row']} {error['field']}: {error['message']}")
    if len(body["errors"]) > max_errors:
        command.stdout.write(f"  … {len(body['errors']) - max_errors} more errors (see the batch record)")


class Command(BaseCommand):
    help = (
        "Ingest per-unit, per-day metric rows from a CSV (header unit_id,day,metric,value) or JSON-lines file. "
        "Good rows are kept, bad rows reported by index (0-based, header excluded) and field; re-running with "
        "the same --batch-id changes nothing. PostgreSQL writes use COPY."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("path", help="CSV or .jsonl file")
        parser.add_argument("--surface", required=True)
        parser.add_argument("--batch-id", required=True, help="client batch id (idempotency key)")
        parser.add_argument("--actor", default="system:ingest_metric_rows")
        parser.add_argument("--max-errors", type=int, default=50, help="errors to print")

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        if not path.exists():
            raise CommandError(f"no such file: {path}")
        started = time.perf_counter()
        if path.suffix in {".jsonl", ".ndjson"}:
            frame = pd.read_json(path, lines=True, dtype={"unit_id": str, "day": str, "metric": str})
        else:
            # Strings stay strings (no date or number guessing) except the value column.
            frame = pd.read_csv(
                path, dtype={"unit_id": str, "day": str, "metric": str}, keep_default_na=False
            )
            frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise CommandError(f"missing columns: {', '.join(missing)}")
        try:
            result = ingest_metric_columns(
                surface=options["surface"],
                client_batch_id=options["batch_id"],
                unit_ids=frame["unit_id"],
                days=frame["day"],
                metrics=frame["metric"],
                values=frame["value"].astype(float),
                actor=options["actor"],
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        print_result(self, result, time.perf_counter() - started, options["max_errors"])
