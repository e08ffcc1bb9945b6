"""Write assignment-vectors.v1.json: the buckets and arms any port of the assignment hash must reproduce.

    python contracts/generate_assignment_vectors.py > contracts/assignment-vectors.v1.json

Regenerating may only ever add vectors: tests/contracts pins the file's SHA-256, so a change to
the hash (which would silently reassign every unit) fails the suite until someone edits the pin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controlplane.core.assignment import BUCKETS, AllocationConfig, bucket

SALTS = ["pages-exp-1", "groups-exp-1", "population:pages", "s", "ünïcødé-salt"]
UNITS: list[str | int] = [
    0,
    1,
    2,
    7,
    42,
    12345,
    999999,
    2**32,
    2**53 - 1,
    "0",
    "42",
    "00042",  # decimal text is the integer: same bucket as 42
    "9999999999999999999",  # 19 digits: the longest text read as an integer
    "18446744073709551615",  # 2**64 - 1 as text has 20 digits: hashed as text
    2**64 - 1,  # the largest integer id
    "u1",
    "u123",
    "user-42",
    "User-42",
    "a",
    "ü-ñ",
    "用户-7",
    "🙂",
    "x" * 128,
    *range(1000, 1040),  # enough units that every arm of both configs appears
]
CONFIGS: list[dict[str, Any]] = [
    {
        "surface": "pages",
        "version": 7,
        "buckets": BUCKETS,
        "salt": "pages-exp-1",
        "population_salt": "population:pages",
        "holdout_bp": 1000,
        "treatment": {"stack": "unified-mtl@1", "bp": 2500},
        "shadow": {"stack": None, "bp": 0},
        "populations": [{"population": "content_first", "stack": "content-first@1", "bp": 10000}],
    },
    {
        "surface": "groups",
        "version": 3,
        "buckets": BUCKETS,
        "salt": "groups-exp-1",
        "population_salt": "population:groups",
        "holdout_bp": 0,
        "treatment": {"stack": "unified-mtl@1", "bp": 5000},
        "shadow": {"stack": "unified-mtl@2", "bp": 1000},
        "populations": [
            {"population": "content_first", "stack": "content-first@1", "bp": 6000},
            {"population": "interest_first", "stack": "interest-first@1", "bp": 4000},
        ],
    },
]


def vectors() -> dict[str, Any]:
    assignments = []
    for doc in CONFIGS:
        config = AllocationConfig.from_dict(doc)
        for unit in UNITS:
            a = config.assign(unit)
            assignments.append(
                {
                    "surface": config.surface,
                    "salt": config.salt,
                    "unit_id": unit,
                    "bucket": a.bucket,
                    "population_bucket": bucket(config.population_salt, unit),
                    "arm": a.arm,
                    "stack": a.stack,
                    "population": a.population,
                }
            )
    return {
        "version": 1,
        "description": (
            "Golden vectors of controlplane/assignment.py. unit_key: an integer id in 0..2**64-1, or text "
            "of 1 to 19 ASCII digits (leading zeros allowed), is that integer; other text (1..128 printable "
            "characters, no surrounding spaces) is BLAKE2b with an 8-byte digest (digest_size=8, not a "
            "truncated BLAKE2b-512) of its UTF-8, read as a little-endian integer; salt_key likewise from "
            "the salt. mix = SplitMix64 finaliser (z ^= z>>30; z *= 0xBF58476D1CE4E5B9; z ^= z>>27; "
            "z *= 0x94D049BB133111EB; z ^= z>>31, modulo 2**64). bucket = mix(mix(unit_key) XOR "
            "salt_key) mod 10000. Arm: bucket < holdout_bp -> holdout (legacy stack); < holdout_bp + "
            "treatment.bp -> treatment (treatment.stack); else control (legacy stack). Population: the "
            "first population whose cumulative bp exceeds population_bucket = bucket(population_salt, "
            "unit). Integer unit ids are JSON numbers, text ids JSON strings."
        ),
        "buckets": [{"salt": s, "unit_id": u, "bucket": bucket(s, u)} for s in SALTS for u in UNITS],
        "configs": {
            "schema": 1,
            "surfaces": CONFIGS,
            "versions": {c["surface"]: c["version"] for c in CONFIGS},
        },
        "assignments": assignments,
    }


def render() -> str:
    return json.dumps(vectors(), indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
