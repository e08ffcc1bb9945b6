"""One application error type, and the API's JSON error shape.

Every API error body is ``{"detail": str, "code": str, "errors": {field: [messages]}}`` so a client
(or a PM reading a failed request) always sees which field was at fault.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import DataError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler, set_rollback


class ApplicationError(Exception):
    """A refused state change. ``field`` names the input at fault, when one is."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str = "invalid",
        http_status: int = status.HTTP_400_BAD_REQUEST,
        errors: dict[str, list[str]] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code
        self.http_status = http_status
        self.errors = errors or ({field: [message]} if field else {})


class ConflictError(ApplicationError):
    def __init__(self, message: str, *, field: str | None = None, code: str = "conflict") -> None:
        super().__init__(message, field=field, code=code, http_status=status.HTTP_409_CONFLICT)


def _flatten(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            for k, v in _flatten(value, name).items():
                out.setdefault(k, []).extend(v)
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            out[prefix or "non_field_errors"] = [str(item) for item in detail]
        else:
            for index, item in enumerate(detail):
                for k, v in _flatten(item, f"{prefix}[{index}]" if prefix else f"[{index}]").items():
                    out.setdefault(k, []).extend(v)
    else:
        out[prefix or "non_field_errors"] = [str(detail)]
    return out


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, ApplicationError):
        return Response(
            {"detail": exc.message, "code": exc.code, "errors": exc.errors}, status=exc.http_status
        )
    if isinstance(exc, DataError):
        # Last resort behind the edge guard (controlplane/edge.py): a value PostgreSQL cannot store
        # (out of range, malformed) is the client's input, not a server error. DRF rolls back the
        # request's atomic block for a handled exception, as for any other 4xx.
        set_rollback()
        return Response(
            {
                "detail": "a value is out of range or malformed for the database",
                "code": "invalid_value",
                "errors": {},
            },
            status=status.HTTP_400_BAD_REQUEST,
        )
    # DRF answers Django's Http404 and PermissionDenied too, but hands them on unconverted: convert
    # them here so their bodies get the same {"detail", "code", "errors"} shape.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        errors = _flatten(exc.detail)
        first = next(iter(errors.items()), ("", [""]))
        detail = f"{first[0]}: {first[1][0]}" if first[0] != "non_field_errors" else first[1][0]
        response.data = {"detail": detail, "code": "invalid", "errors": errors}
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        response.data = {
            "detail": str(exc.detail),
            "code": codes if isinstance(codes, str) else "error",
            "errors": dict(getattr(exc, "errors", None) or {}),
        }
    return response


# Django's own error pages for /api/ paths (an unknown URL, a malformed request, a crash) answer in
# the same JSON shape, so a client never has to parse HTML; pages keep Django's HTML templates.
def _api_error(detail: str, code: str, status_code: int) -> JsonResponse:
    return JsonResponse({"detail": detail, "code": code, "errors": {}}, status=status_code)


def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return _api_error("Not found.", "not_found", 404)
    return defaults.page_not_found(request, exception)  # type: ignore[arg-type]


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if request.path.startswith("/api/"):
        return _api_error("Bad request.", "bad_request", 400)
    return defaults.bad_request(request, exception)  # type: ignore[arg-type]


def server_error(request: HttpRequest) -> HttpResponse:
    if request.path.startswith("/api/"):
        return _api_error("Server error.", "server_error", 500)
    return defaults.server_error(request)
