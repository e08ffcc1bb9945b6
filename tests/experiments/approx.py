"""Recursive approximate equality for result documents (floating-point summation order)."""

from __future__ import annotations

import math
from typing import Any


def assert_close(a: Any, b: Any, *, rel: float = 1e-9, path: str = "") -> None:
    """Equal structure and strings; numbers equal to ``rel`` relative (or 1e-12 absolute).

    Sums of the same values in another order (a parallel aggregate, another plan) differ in the
    last bits; everything else must match exactly.
    """
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(a)} != {sorted(b)}"
        for key in a:
            assert_close(a[key], b[key], rel=rel, path=f"{path}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{path}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_close(x, y, rel=rel, path=f"{path}[{i}]")
    elif isinstance(a, float) or isinstance(b, float):
        assert isinstance(a, int | float) and isinstance(b, int | float), f"{path}: {a!r} vs {b!r}"
        assert math.isclose(a, b, rel_tol=rel, abs_tol=1e-12), f"{path}: {a!r} vs {b!r}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"
