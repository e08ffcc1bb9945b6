"""An OpenFeature provider over the published allocation config — pure Python, no Django.

A Python serving fleet asks "which stack serves this unit on this surface" through the standard
OpenFeature API, and the answer is computed locally by :mod:`controlplane.core.assignment` from the
document ``GET /api/v1/config/allocations/`` publishes (no call per request)::

    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from controlplane.core.openfeature_provider import AllocationConfigProvider

    provider = AllocationConfigProvider(
        url="https://cp.example.com/api/v1/config/allocations/", token="…viewer API token…"
    )
    api.set_provider_and_wait(provider)
    flags = api.get_client()
    details = flags.get_string_details("pages", "content-first@1",
                                       EvaluationContext(targeting_key="u123"))
    details.value          # the stack label that serves u123 on pages, e.g. "unified-mtl@1"
    details.variant        # the arm: "treatment", "control" or "holdout"
    details.flag_metadata  # bucket, arm, population, allocation version, salt

* flag key = surface key; value = stack label; variant = arm; reason ``SPLIT``.
* ``targeting_key`` = the unit id (user id). An optional ``population`` attribute names the unit's
  legacy population when the fleet knows it; otherwise it is derived from the population salt
  exactly as the control plane's router does. Either way it comes back in ``flag_metadata``.
* ``get_boolean_details(surface)`` is "is this unit treated"; ``get_object_details(surface)`` gives
  the whole assignment as a mapping.
* The document is re-read at most every ``refresh_interval_s`` seconds with ``If-None-Match``; a
  304 keeps the current one. A failed refresh keeps serving the last good document (``error`` and
  ``last_refresh_error`` say why); with none yet, evaluations return the default with
  ``PROVIDER_NOT_READY``.

The document's JSON Schema is ``contracts/allocation-config.v1.schema.json``; the hash every port
must reproduce is pinned by ``contracts/assignment-vectors.v1.json``.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

from controlplane.core.assignment import AllocationConfig, Assignment, AssignmentError, unit_key

SUPPORTED_SCHEMA = 1


@dataclass(frozen=True, slots=True)
class FetchResult:
    """One poll: ``status`` 200 with a body, or 304 (unchanged); ``etag`` as the server sent it."""

    status: int
    body: Mapping[str, Any] | None
    etag: str | None


Fetcher = Callable[[str | None], FetchResult]


def http_fetcher(url: str, *, token: str | None = None, timeout_s: float = 5.0) -> Fetcher:
    """GET ``url`` with ``If-None-Match`` (stdlib only, so fleets need no HTTP library)."""

    def fetch(etag: str | None) -> FetchResult:
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        if token:
            request.add_header("Authorization", f"Token {token}")
        if etag:
            request.add_header("If-None-Match", etag)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return FetchResult(response.status, json.loads(response.read()), response.headers.get("ETag"))
        except urllib.error.HTTPError as exc:
            if exc.code == 304:
                return FetchResult(304, None, exc.headers.get("ETag") or etag)
            raise

    return fetch


def parse_document(document: Mapping[str, Any]) -> dict[str, AllocationConfig]:
    """Surface key → validated config; raises :class:`AssignmentError` on a malformed document."""
    if not isinstance(document, Mapping) or document.get("schema") != SUPPORTED_SCHEMA:
        found = document.get("schema") if isinstance(document, Mapping) else type(document).__name__
        raise AssignmentError(f"unsupported allocation config schema {found!r} (expected {SUPPORTED_SCHEMA})")
    surfaces = document.get("surfaces")
    if not isinstance(surfaces, list):
        raise AssignmentError("allocation config: 'surfaces' must be a list")
    configs = {}
    for entry in surfaces:
        config = AllocationConfig.from_dict(entry)
        configs[config.surface] = config
    return configs


class AllocationConfigProvider(AbstractProvider):
    """OpenFeature provider: surface key → the stack that serves a unit (see the module docstring)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        fetcher: Fetcher | None = None,
        document: Mapping[str, Any] | None = None,
        refresh_interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if fetcher is None and url is not None:
            fetcher = http_fetcher(url, token=token)
        self._fetcher = fetcher
        self._interval = refresh_interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._configs: dict[str, AllocationConfig] = {}
        self._loaded = False
        self._etag: str | None = None
        self._checked_at = float("-inf")
        self.last_refresh_error: str | None = None
        self.fetches = 0
        self.not_modified = 0
        if document is not None:
            self._configs = parse_document(document)
            self._loaded = True
            self._checked_at = clock()

    # -- lifecycle ------------------------------------------------------------------------------
    def get_metadata(self) -> Metadata:
        return Metadata(name="controlplane-allocation-config")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        if not self._loaded:
            self.refresh()
            if not self._loaded:
                raise RuntimeError(f"allocation config not loaded: {self.last_refresh_error}")

    @property
    def etag(self) -> str | None:
        return self._etag

    @property
    def versions(self) -> dict[str, int]:
        return {key: config.version for key, config in self._configs.items()}

    def refresh(self) -> bool:
        """Poll once (``If-None-Match``); True when a new document was loaded."""
        if self._fetcher is None:
            return False
        with self._lock:
            self._checked_at = self._clock()
            try:
                result = self._fetcher(self._etag)
                self.fetches += 1
                if result.status == 304:
                    self.not_modified += 1
                    self.last_refresh_error = None
                    return False
                if result.status != 200 or result.body is None:
                    raise AssignmentError(f"unexpected status {result.status}")
                configs = parse_document(result.body)
            except (OSError, ValueError, AssignmentError) as exc:
                # Keep serving the last good document; the next interval tries again.
                self.last_refresh_error = f"{type(exc).__name__}: {exc}"
                return False
            self._configs, self._etag, self._loaded = configs, result.etag, True
            self.last_refresh_error = None
            return True

    def _maybe_refresh(self) -> None:
        if self._fetcher is not None and self._clock() - self._checked_at >= self._interval:
            self.refresh()

    # -- evaluation -----------------------------------------------------------------------------
    def assignment(self, surface: str, context: EvaluationContext | None) -> Assignment:
        """The assignment of the context's unit on ``surface``; raises ``_Refusal`` with an error code."""
        self._maybe_refresh()
        if not self._loaded:
            raise _Refusal(
                ErrorCode.PROVIDER_NOT_READY, self.last_refresh_error or "allocation config not loaded"
            )
        config = self._configs.get(surface)
        if config is None:
            raise _Refusal(ErrorCode.FLAG_NOT_FOUND, f"no published allocation for surface {surface!r}")
        unit = context.targeting_key if context else None
        if not unit:
            raise _Refusal(ErrorCode.TARGETING_KEY_MISSING, "targeting_key (the unit id) is required")
        try:
            unit_key(unit)
            assigned = config.assign(unit)
        except AssignmentError as exc:
            raise _Refusal(ErrorCode.INVALID_CONTEXT, str(exc)) from None
        population = (context.attributes or {}).get("population") if context else None
        if population is not None and population != assigned.population:
            share = next((p for p in config.populations if p.population == population), None)
            if share is None:
                known = ", ".join(p.population for p in config.populations)
                raise _Refusal(
                    ErrorCode.INVALID_CONTEXT,
                    f"population {population!r} is not on surface {surface!r} (known: {known})",
                )
            # The fleet knows the unit's legacy population: non-treated units stay on its stack.
            stack = assigned.stack if assigned.arm == "treatment" else share.stack
            assigned = Assignment(assigned.arm, stack, share.population, assigned.bucket)
        return assigned

    def _details(self, surface: str, value: Any, assigned: Assignment) -> FlagResolutionDetails[Any]:
        config = self._configs[surface]
        return FlagResolutionDetails(
            value=value,
            reason=Reason.SPLIT,
            variant=assigned.arm,
            flag_metadata={
                "bucket": assigned.bucket,
                "arm": assigned.arm,
                "stack": assigned.stack,
                "population": assigned.population,
                "allocation_version": config.version,
                "salt": config.salt,
            },
        )

    def _resolve(
        self,
        flag_key: str,
        default: Any,
        context: EvaluationContext | None,
        value: Callable[[Assignment], Any],
    ) -> FlagResolutionDetails[Any]:
        try:
            assigned = self.assignment(flag_key, context)
        except _Refusal as refusal:
            return FlagResolutionDetails(
                value=default, reason=Reason.ERROR, error_code=refusal.code, error_message=refusal.message
            )
        return self._details(flag_key, value(assigned), assigned)

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, evaluation_context, lambda a: a.stack)

    def resolve_boolean_details(
        self, flag_key: str, default_value: bool, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, evaluation_context, lambda a: a.treated)

    def resolve_object_details(
        self, flag_key: str, default_value: Any, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[Any]:
        return self._resolve(
            flag_key,
            default_value,
            evaluation_context,
            lambda a: {"stack": a.stack, "arm": a.arm, "population": a.population, "bucket": a.bucket},
        )

    def _type_mismatch(self, default: Any, kind: str) -> FlagResolutionDetails[Any]:
        return FlagResolutionDetails(
            value=default,
            reason=Reason.ERROR,
            error_code=ErrorCode.TYPE_MISMATCH,
            error_message=f"allocation flags are strings (stack), booleans (treated) or objects, not {kind}",
        )

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        return self._type_mismatch(default_value, "integers")

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        return self._type_mismatch(default_value, "floats")


class _Refusal(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message
