"""Request id, log context and request latency for every request."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from django.http import HttpRequest, HttpResponse, JsonResponse

from controlplane.core import telemetry
from controlplane.ops import logs

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept (so a trace spans the proxy, us and the worker) only when it is harmless.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# URL kwargs that name what a request is about; bound into every log line of the request.
_CONTEXT_KWARGS = {
    "surface_key": "surface_key",
    "runbook_id": "runbook_id",
    "key": "experiment_key",
    "experiment_key": "experiment_key",
    "stack_id": "stack_id",
    "template_id": "template_id",
}


class RequestContextMiddleware:
    """Binds ``request_id`` (and, once known, the URL's ids) to structlog's context; times the request.

    Place it first: the latency then covers every other middleware, and the request id is bound
    before anything logs.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        given = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        request.request_id = request_id  # type: ignore[attr-defined]
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        token = logs.bind_request(request)
        try:
            response = self.get_response(request)
        finally:
            logs.unbind_request(token)
            structlog.contextvars.clear_contextvars()
        response[REQUEST_ID_HEADER] = request_id
        match = getattr(request, "resolver_match", None)
        view = (match.view_name or match.route) if match else "<unresolved>"
        telemetry.HTTP_REQUEST_DURATION.labels(
            view=view, method=request.method or "", status=str(response.status_code)
        ).observe(time.perf_counter() - started)
        return response

    def process_view(
        self, request: HttpRequest, view_func: Any, view_args: Any, view_kwargs: dict[str, Any]
    ) -> None:
        context = {name: view_kwargs[kw] for kw, name in _CONTEXT_KWARGS.items() if kw in view_kwargs}
        if context:
            structlog.contextvars.bind_contextvars(**context)
        return None


class NulCharacterGuardMiddleware:
    """A NUL character anywhere in the URL gets a 400 before any view runs.

    PostgreSQL text cannot hold NUL, so a filter like ``?kind=%00`` would otherwise reach the
    database and fail there as a 500. (JSON bodies are covered by DRF's CharField validator.)
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        params = request.GET.lists()
        if "\x00" in request.path or any(
            "\x00" in key or any("\x00" in v for v in values) for key, values in params
        ):
            return JsonResponse(
                {"detail": "the URL must not contain NUL characters", "code": "invalid", "errors": {}},
                status=400,
            )
        return self.get_response(request)
