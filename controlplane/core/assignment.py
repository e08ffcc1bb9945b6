"""Deterministic, sticky, monotone traffic assignment — pure Python + numpy, no Django.

The same module runs inside the control plane's router and inside serving fleets, which poll the
published allocation config and assign every request locally (no API call per request).

Hashing
-------
``bucket = mix(mix(unit_key) XOR salt_key) mod 10000`` where

* ``unit_key`` is the unit id itself for integer ids (and strings of 1 to 19 ASCII digits),
  otherwise BLAKE2b with an 8-byte digest (``digest_size=8``, not a truncated BLAKE2b-512) of
  its UTF-8 text, read little-endian;
* ``salt_key`` is the same 8-byte BLAKE2b of the salt;
* ``mix`` is the SplitMix64 finaliser (Steele, Lea & Flood, "Fast splittable pseudorandom number
  generators", OOPSLA 2014), a bijection on 64-bit words with full avalanche.

Mixing the unit key *before* XOR-ing the salt makes buckets for two salts behave as independent
(checked by a χ² test of the joint bucket table), which keeps experiments on different salts from
sharing their treated users. The scalar path uses Python ints and the bulk path uint64 numpy
arrays; both give identical buckets (tested).

Arms
----
Buckets ``[0, holdout_bp)`` are the long-term holdout (served like control, never treated);
``[holdout_bp, holdout_bp + treatment_bp)`` are treatment; the rest are control. Raising
``treatment_bp`` therefore only adds units to treatment (monotone ramps), and rollback to 0 is
instant. The legacy population of a unit uses its own per-surface salt, so it never changes when
the experiment salt or the ramp does.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

BUCKETS = 10_000
MASK64 = (1 << 64) - 1
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB
_DIGITS = re.compile(r"^[0-9]{1,19}$")
MAX_UNIT_ID_LENGTH = 128

ARM_HOLDOUT, ARM_CONTROL, ARM_TREATMENT = 0, 1, 2
ARM_NAMES = ("holdout", "control", "treatment")


class AssignmentError(ValueError):
    """A unit id or allocation config that cannot be assigned."""


def _blake64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _mix(z: int) -> int:
    # SplitMix64 finaliser on Python ints (masked to 64 bits).
    z = ((z ^ (z >> 30)) * _C1) & MASK64
    z = ((z ^ (z >> 27)) * _C2) & MASK64
    return z ^ (z >> 31)


def _mix_array(z: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    # The same finaliser on uint64 arrays; numpy multiplication wraps modulo 2**64. In place.
    z ^= z >> np.uint64(30)
    z *= np.uint64(_C1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_C2)
    z ^= z >> np.uint64(31)
    return z


def unit_key(unit_id: str | int) -> int:
    """Map a unit id to a 64-bit key: integers as themselves, other text through BLAKE2b."""
    if isinstance(unit_id, bool):
        raise AssignmentError("unit_id must be a string or an integer, not a boolean")
    if isinstance(unit_id, int):
        if unit_id < 0 or unit_id > MASK64:
            raise AssignmentError(f"unit_id {unit_id} is outside 0..2**64-1")
        return unit_id
    if not isinstance(unit_id, str):
        raise AssignmentError(f"unit_id must be a string or an integer, got {type(unit_id).__name__}")
    if (
        not unit_id
        or len(unit_id) > MAX_UNIT_ID_LENGTH
        or not unit_id.isprintable()
        or unit_id != unit_id.strip()
    ):
        raise AssignmentError(
            f"unit_id must be 1..{MAX_UNIT_ID_LENGTH} printable characters without surrounding spaces"
        )
    if _DIGITS.match(unit_id):
        value = int(unit_id)
        if value <= MASK64:
            return value
    return _blake64(unit_id)


def salt_key(salt: str) -> int:
    if not isinstance(salt, str) or not salt:
        raise AssignmentError("salt must be a non-empty string")
    return _blake64(salt)


def bucket(salt: str, unit_id: str | int) -> int:
    """The unit's bucket in ``[0, 10000)`` under ``salt``."""
    return _mix(_mix(unit_key(unit_id)) ^ salt_key(salt)) % BUCKETS


def buckets(salt: str, unit_ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Vectorised :func:`bucket` for an array of non-negative integer unit ids."""
    ids = np.asarray(unit_ids)
    if ids.dtype.kind not in "iu":
        raise AssignmentError("bulk assignment takes integer unit ids; hash text ids with unit_key() first")
    if ids.dtype.kind == "i" and ids.size and int(ids.min()) < 0:
        raise AssignmentError("unit ids must be non-negative")
    z = ids.astype(np.uint64, copy=True)
    _mix_array(z)
    z ^= np.uint64(salt_key(salt))
    _mix_array(z)
    z %= np.uint64(BUCKETS)
    return z.astype(np.int64, copy=False)


@dataclass(frozen=True, slots=True)
class PopulationShare:
    """A legacy population on a surface and the legacy stack that serves it today."""

    population: str
    stack: str
    bp: int


@dataclass(frozen=True, slots=True)
class Assignment:
    arm: str
    stack: str
    population: str
    bucket: int

    @property
    def treated(self) -> bool:
        return self.arm == "treatment"


@dataclass(frozen=True, slots=True)
class AllocationConfig:
    """One surface's published allocation (the JSON serving fleets poll), validated."""

    surface: str
    version: int
    salt: str
    populations: tuple[PopulationShare, ...]
    holdout_bp: int = 0
    treatment_bp: int = 0
    treatment_stack: str | None = None
    shadow_bp: int = 0
    shadow_stack: str | None = None
    population_salt: str = ""
    _thresholds: tuple[int, ...] = field(default=(), repr=False, compare=False)
    _salt_key: int = field(default=0, repr=False, compare=False)
    _population_salt_key: int = field(default=0, repr=False, compare=False)

    def __post_init__(self) -> None:
        errors = validate_allocation(
            holdout_bp=self.holdout_bp,
            treatment_bp=self.treatment_bp,
            treatment_stack=self.treatment_stack,
            shadow_bp=self.shadow_bp,
            shadow_stack=self.shadow_stack,
            populations=[(p.population, p.stack, p.bp) for p in self.populations],
            salt=self.salt,
        )
        if errors:
            raise AssignmentError("; ".join(f"{k}: {v}" for k, v in errors.items()))
        population_salt = self.population_salt or f"population:{self.surface}"
        object.__setattr__(self, "population_salt", population_salt)
        cumulative, total = [], 0
        for share in self.populations:
            total += share.bp
            cumulative.append(total)
        object.__setattr__(self, "_thresholds", tuple(cumulative))
        object.__setattr__(self, "_salt_key", salt_key(self.salt))
        object.__setattr__(self, "_population_salt_key", salt_key(population_salt))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AllocationConfig:
        """Build from the published JSON (see ``to_dict``)."""
        try:
            treatment = data.get("treatment") or {}
            shadow = data.get("shadow") or {}
            return cls(
                surface=str(data["surface"]),
                version=int(data["version"]),
                salt=str(data["salt"]),
                population_salt=str(data.get("population_salt", "")),
                holdout_bp=int(data.get("holdout_bp", 0)),
                treatment_bp=int(treatment.get("bp", 0)),
                treatment_stack=treatment.get("stack"),
                shadow_bp=int(shadow.get("bp", 0)),
                shadow_stack=shadow.get("stack"),
                populations=tuple(
                    PopulationShare(str(p["population"]), str(p["stack"]), int(p["bp"]))
                    for p in data["populations"]
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise AssignmentError(f"malformed allocation config: {exc!r}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "surface": self.surface,
            "version": self.version,
            "buckets": BUCKETS,
            "salt": self.salt,
            "population_salt": self.population_salt,
            "holdout_bp": self.holdout_bp,
            "treatment": {"stack": self.treatment_stack, "bp": self.treatment_bp},
            "shadow": {"stack": self.shadow_stack, "bp": self.shadow_bp},
            "populations": [
                {"population": p.population, "stack": p.stack, "bp": p.bp} for p in self.populations
            ],
        }

    # -- scalar path (hot: one decision per request) --------------------------------------------
    def population_of(self, unit_id: str | int) -> PopulationShare:
        b = _mix(_mix(unit_key(unit_id)) ^ self._population_salt_key) % BUCKETS
        for share, threshold in zip(self.populations, self._thresholds, strict=True):
            if b < threshold:
                return share
        return self.populations[-1]

    def assign(self, unit_id: str | int) -> Assignment:
        key = _mix(unit_key(unit_id))
        b = (_mix(key ^ self._salt_key)) % BUCKETS
        pb = (_mix(key ^ self._population_salt_key)) % BUCKETS
        share = self.populations[-1]
        for candidate, threshold in zip(self.populations, self._thresholds, strict=True):
            if pb < threshold:
                share = candidate
                break
        if b < self.holdout_bp:
            return Assignment("holdout", share.stack, share.population, b)
        if b < self.holdout_bp + self.treatment_bp and self.treatment_stack:
            return Assignment("treatment", self.treatment_stack, share.population, b)
        return Assignment("control", share.stack, share.population, b)

    def should_shadow(self, request_id: str | int) -> bool:
        """Whether a request is also sent to the shadow stack (sampled per request, not per unit)."""
        if not self.shadow_stack or self.shadow_bp <= 0:
            return False
        return bucket(f"shadow:{self.salt}", request_id) < self.shadow_bp

    # -- bulk path ------------------------------------------------------------------------------
    def assign_many(self, unit_ids: npt.ArrayLike) -> tuple[npt.NDArray[np.int8], npt.NDArray[np.int8]]:
        """Arm codes (0 holdout, 1 control, 2 treatment) and population indexes for integer ids."""
        ids = np.asarray(unit_ids)
        if ids.dtype.kind not in "iu":
            raise AssignmentError("bulk assignment takes integer unit ids")
        key = ids.astype(np.uint64, copy=True)
        _mix_array(key)
        b = key ^ np.uint64(self._salt_key)
        _mix_array(b)
        b %= np.uint64(BUCKETS)
        arms = np.full(ids.shape, ARM_CONTROL, dtype=np.int8)
        if self.treatment_stack and self.treatment_bp:
            arms[(b >= np.uint64(self.holdout_bp)) & (b < np.uint64(self.holdout_bp + self.treatment_bp))] = (
                ARM_TREATMENT
            )
        if self.holdout_bp:
            arms[b < np.uint64(self.holdout_bp)] = ARM_HOLDOUT
        key ^= np.uint64(self._population_salt_key)
        _mix_array(key)
        key %= np.uint64(BUCKETS)
        populations = np.searchsorted(np.asarray(self._thresholds, dtype=np.uint64), key, side="right")
        np.minimum(populations, len(self.populations) - 1, out=populations)
        return arms, populations.astype(np.int8)

    # -- shares ---------------------------------------------------------------------------------
    def live_shares(self) -> dict[str, float]:
        """Share of units each stack serves live (holdout users stay on their legacy stack)."""
        shares: dict[str, float] = {}
        treated = self.treatment_bp / BUCKETS if self.treatment_stack else 0.0
        for p in self.populations:
            shares[p.stack] = shares.get(p.stack, 0.0) + (1.0 - treated) * p.bp / BUCKETS
        if self.treatment_stack:
            shares[self.treatment_stack] = shares.get(self.treatment_stack, 0.0) + treated
        return shares


def validate_allocation(
    *,
    holdout_bp: int,
    treatment_bp: int,
    treatment_stack: str | None,
    shadow_bp: int,
    shadow_stack: str | None,
    populations: Sequence[tuple[str, str, int]] | Iterable[tuple[str, str, int]],
    salt: str,
) -> dict[str, str]:
    """Field → message for every problem in an allocation (empty when valid)."""
    errors: dict[str, str] = {}
    if not isinstance(salt, str) or not salt.strip():
        errors["salt"] = "must be a non-empty string"
    for name, value in (("holdout_bp", holdout_bp), ("treatment_bp", treatment_bp), ("shadow_bp", shadow_bp)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= BUCKETS:
            errors[name] = f"must be an integer number of basis points in 0..{BUCKETS}"
    if "holdout_bp" not in errors and "treatment_bp" not in errors and holdout_bp + treatment_bp > BUCKETS:
        errors["treatment_bp"] = (
            f"holdout_bp + treatment_bp must not exceed {BUCKETS} (got {holdout_bp + treatment_bp})"
        )
    if treatment_bp and not treatment_stack and "treatment_bp" not in errors:
        errors["treatment_stack"] = "required when treatment_bp > 0"
    if shadow_bp and not shadow_stack and "shadow_bp" not in errors:
        errors["shadow_stack"] = "required when shadow_bp > 0"
    pops = list(populations)
    if not pops:
        errors["populations"] = "at least one legacy population is required"
    else:
        names = [p[0] for p in pops]
        if len(set(names)) != len(names):
            errors["populations"] = "population names must be unique"
        elif any(not isinstance(p[2], int) or p[2] < 0 for p in pops):
            errors["populations"] = "population shares must be non-negative integers (basis points)"
        elif sum(p[2] for p in pops) != BUCKETS:
            errors["populations"] = (
                f"population shares must add up to {BUCKETS} basis points (got {sum(p[2] for p in pops)})"
            )
    return errors
