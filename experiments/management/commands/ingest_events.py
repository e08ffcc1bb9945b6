"""Ingest a file of engagement events (JSON lines or CSV: unit_id,ts,type[,value]) as one batch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
from django.core.management.base import BaseCommand, CommandError

from controlplane.core.errors import ApplicationError
from experiments.ingestion import ingest_events
from experiments.management.commands.ingest_metric_rows import print_result


class Command(BaseCommand):
    help = (
        "Ingest engagement events and roll them up into per-unit-day metric rows. Bad events are reported by "
        "index and field, good ones kept; the same --batch-id is ingested once."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("path", help=".jsonl or CSV file")
        parser.add_argument("--surface", required=True)
        parser.add_argument("--batch-id", required=True)
        parser.add_argument("--actor", default="system:ingest_events")
        parser.add_argument("--max-errors", type=int, default=50)

    def handle(self, *args: Any, **options: Any) -> None:
        path = Path(options["path"])
        if not path.exists():
            raise CommandError(f"no such file: {path}")
        started = time.perf_counter()
        if path.suffix in {".jsonl", ".ndjson"}:
            frame = pd.read_json(path, lines=True, dtype={"unit_id": str, "ts": str, "type": str})
        else:
            frame = pd.read_csv(path, dtype={"unit_id": str, "ts": str, "type": str}, keep_default_na=False)
        if "value" in frame.columns:
            frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
        events = frame.to_dict("records")
        for event in events:  # a blank value means the default count of 1
            if "value" in event and pd.isna(event["value"]):
                del event["value"]
        try:
            result = ingest_events(
                surface=options["surface"],
                client_batch_id=options["batch_id"],
                events=events,
                actor=options["actor"],
            )
        except ApplicationError as exc:
            raise CommandError(exc.message) from exc
        print_result(self, result, time.perf_counter() - started, options["max_errors"])
