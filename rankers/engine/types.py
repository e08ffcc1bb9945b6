"""The one request/response interface every ranking stack implements.

The router, the shadowing and the analysis treat all stacks alike through these types:
``stack.rank(RankRequest(...)) -> RankResult``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

SURFACES: tuple[str, ...] = ("pages", "groups")
STACK_KINDS: tuple[str, ...] = ("content_first", "interest_first", "unified_mtl")


@dataclass(frozen=True, slots=True)
class RankRequest:
    """One feed request: the user identity *is* the query (no explicit intent)."""

    user_id: int
    surface: str = "pages"
    num_items: int = 50
    context: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.surface not in SURFACES:
            raise ValueError(f"surface must be one of {SURFACES}, got {self.surface!r}")
        if self.num_items <= 0:
            raise ValueError(f"num_items must be positive, got {self.num_items}")


@dataclass(frozen=True, slots=True)
class RankedItem:
    """One post in the ranked list. ``position`` is 0-based; ``propensity`` is the probability the
    policy would show this item at this slot (None for deterministic policies)."""

    post_id: int
    score: float
    position: int
    propensity: float | None = None


@dataclass(slots=True)
class LoggedFeatures:
    """Features exactly as computed at serving time, logged for train-serve parity checks.

    ``matrix[i]`` are the dense features of ``post_ids[i]``; ``scores[i]`` the model output the
    stack ranked on (before list-aware pass 2 adjustments); ``request_time`` the world clock used.
    """

    names: list[str]
    post_ids: np.ndarray
    matrix: np.ndarray
    scores: np.ndarray
    user_id: int
    surface: str
    sparse: np.ndarray | None = None


@dataclass(slots=True)
class RankResult:
    """A ranked list plus per-stage timings (milliseconds) and the stack that produced it."""

    items: list[RankedItem]
    stage_timings_ms: dict[str, float]
    stack_key: str
    features: LoggedFeatures | None = None

    @property
    def post_ids(self) -> list[int]:
        return [item.post_id for item in self.items]

    @property
    def total_ms(self) -> float:
        return float(self.stage_timings_ms.get("total", sum(self.stage_timings_ms.values())))


@runtime_checkable
class RankingStack(Protocol):
    """What the router needs from a stack."""

    kind: str
    stack_key: str

    def rank(self, request: RankRequest) -> RankResult: ...
