"""The edge guard: input no view can store or parse is refused here, once, with a 400 that names it.

Two places see every input before a view does:

* :class:`EdgeGuardMiddleware` checks the URL path, query string and form fields of every request.
* :class:`GuardedJSONParser` (DRF's JSON parser for the whole API) checks every JSON body.

Refused with 400, naming the parameter (``errors: {name: [message]}``):

* a NUL character (``%00``, ``\\u0000``): PostgreSQL text and jsonb cannot hold it (psycopg raises
  ``DataError`` and the request used to end in a 500);
* an unpaired UTF-16 surrogate (``\\ud800`` alone): not a Unicode scalar value, so it cannot be
  encoded as UTF-8 for the database or a response;
* JSON nested deeper than :data:`MAX_JSON_DEPTH` (32) arrays/objects: no request of this API needs
  more than 4, and CPython's parser raises ``RecursionError`` at about 1,000.

Numbers are bounded where they mean something: ingested metric values beyond
``experiments.ingestion.MAX_ABS_VALUE`` (1e15) are a per-row error (``experiments.ingestion``). Anything that still
reaches PostgreSQL out of range (``DataError``) is mapped to 400 by the API's exception handler
(``controlplane.errors``) and, for pages, by this middleware, as a last resort.

The ingestion endpoints get a larger body limit (``INGEST_MAX_BODY_BYTES``) than Django's default
``DATA_UPLOAD_MAX_MEMORY_SIZE``: a batch may hold ``MAX_ROWS_PER_BATCH`` rows; a larger body gets a
JSON 413 that names the limit.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from django.conf import settings
from django.db import DataError
from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

MAX_JSON_DEPTH = 32

# An escape for NUL or for any surrogate, preceded by an even number of backslashes (so ``\\u0000``,
# an escaped backslash followed by "u0000", is not a hit). Only a hit pays for the full walk.
_SUSPECT_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")
_LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
INGEST_PATH_PREFIX = "/api/v1/ingest/"


class InputRefused(ValueError):
    """Input that no view may see; ``name`` is the parameter (or JSON path) at fault."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def client_ip(request: HttpRequest) -> str:
    """The client's address: ``REMOTE_ADDR``, or, when that peer is a configured trusted proxy
    (``settings.TRUSTED_PROXIES``), the right-most ``X-Forwarded-For`` hop that is not one. A client
    cannot pick its address by sending the header itself: only a trusted proxy's header is read."""
    import ipaddress

    def trusted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address.strip())
        except ValueError:
            return False
        for entry in getattr(settings, "TRUSTED_PROXIES", ()) or ():
            try:
                if ip in ipaddress.ip_network(str(entry).strip(), strict=False):
                    return True
            except ValueError:
                continue
        return False

    peer = str(request.META.get("REMOTE_ADDR") or "")
    if not trusted(peer):
        return peer
    hops = [h.strip() for h in str(request.META.get("HTTP_X_FORWARDED_FOR", "")).split(",") if h.strip()]
    for hop in reversed(hops):
        if not trusted(hop):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # a malformed hop: fall back to the proxy itself
    return peer


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored, or None when it can."""
    if "\x00" in value:
        return "contains a NUL character, which cannot be stored"
    if _LONE_SURROGATE.search(value):
        return "contains an unpaired UTF-16 surrogate, which is not valid Unicode"
    return None


def check_text(name: str, value: str) -> None:
    problem = text_problem(value)
    if problem:
        raise InputRefused(name, problem)


def _items(container: Any) -> Iterator[tuple[str | int, Any]]:
    return iter(container.items()) if isinstance(container, dict) else enumerate(container)


def check_json(data: Any, *, strings: bool = True, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Walk parsed JSON without recursion: depth ≤ ``max_depth``; with ``strings``, every key and
    string value free of NUL and unpaired surrogates. Raises :class:`InputRefused` naming the path."""
    if not isinstance(data, dict | list):
        if strings and isinstance(data, str):
            check_text("body", data)
        return
    stack: list[tuple[str, int, Iterator[tuple[str | int, Any]]]] = [("", 1, _items(data))]
    while stack:
        path, depth, items = stack[-1]
        for key, value in items:
            if isinstance(value, dict | list):
                child = f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)
                if depth + 1 > max_depth:
                    raise InputRefused(child or "body", f"JSON nested deeper than {max_depth} levels")
                stack.append((child, depth + 1, _items(value)))
                break
            if strings:
                if isinstance(key, str):
                    problem = text_problem(key)
                    if problem:
                        raise InputRefused(f"{path}.{key}" if path else key, "key " + problem)
                if isinstance(value, str):
                    problem = text_problem(value)
                    if problem:
                        name = (
                            f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)
                        )
                        raise InputRefused(name, problem)
        else:
            stack.pop()


def refusal_body(name: str, message: str) -> dict[str, Any]:
    return {"detail": f"{name}: {message}", "code": "invalid", "errors": {name: [message]}}


class GuardedJSONParser(JSONParser):
    """DRF's JSON parser behind the edge checks (see the module docstring)."""

    def parse(
        self, stream: Any, media_type: str | None = None, parser_context: Mapping[str, Any] | None = None
    ) -> Any:
        parser_context = parser_context or {}
        encoding = parser_context.get("encoding", settings.DEFAULT_CHARSET)
        raw = stream.read() if stream is not None else b""
        try:
            data = json.loads(raw.decode(encoding))
        except RecursionError:
            raise ParseError(f"JSON parse error - nested deeper than {MAX_JSON_DEPTH} levels") from None
        except ValueError as exc:
            raise ParseError(f"JSON parse error - {exc}") from None
        # The string walk runs only when the raw body holds a NUL or surrogate escape: the depth walk
        # alone visits containers, not every string of a large batch.
        try:
            check_json(data, strings=_SUSPECT_ESCAPE.search(raw) is not None)
        except InputRefused as exc:
            raise _Refused(exc) from None
        return data


class _Refused(ParseError):
    def __init__(self, exc: InputRefused) -> None:
        super().__init__(detail=str(exc), code="parse_error")
        # Read by controlplane.errors.api_exception_handler: the error names the parameter.
        self.errors = {exc.name: [exc.message]}


def _too_large(limit: int) -> JsonResponse:
    return JsonResponse(
        {
            "detail": f"request body larger than the ingestion limit of {limit} bytes "
            f"(INGEST_MAX_BODY_BYTES); split the batch",
            "code": "body_too_large",
            "errors": {"body": [f"larger than {limit} bytes"]},
            "limit_bytes": limit,
        },
        status=413,
    )


class EdgeGuardMiddleware:
    """Refuses NUL bytes and unpaired surrogates in the path, query string and form fields with a
    400 naming the parameter; reads ingestion bodies under their own limit; maps a leftover
    ``DataError`` on a page to 400."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            self._check(request)
        except InputRefused as exc:
            return self._refuse(request, exc.name, exc.message)
        if request.path.startswith(INGEST_PATH_PREFIX) and request.method == "POST":
            refused = self._read_ingest_body(request)
            if refused is not None:
                return refused
        return self.get_response(request)

    @staticmethod
    def _check(request: HttpRequest) -> None:
        check_text("path", request.path)
        for name, values in request.GET.lists():
            check_text("query parameter", name)
            for value in values:
                check_text(name, value)
        content_type = request.content_type or ""
        # Form fields: the pages' forms (the API takes JSON only and DRF answers a form body with
        # 415; reading it here would consume the stream DRF needs for that answer).
        if (
            not request.path.startswith("/api/")
            and request.method in {"POST", "PUT", "PATCH"}
            and content_type
            in {
                "application/x-www-form-urlencoded",
                "multipart/form-data",
            }
        ):
            for name, values in request.POST.lists():
                check_text("form field", name)
                for value in values:
                    check_text(name, value)

    @staticmethod
    def _read_ingest_body(request: HttpRequest) -> HttpResponse | None:
        limit = int(getattr(settings, "INGEST_MAX_BODY_BYTES", 0))
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit:
            return _too_large(limit)
        # Read under our limit and store it where HttpRequest.body keeps it, so Django's smaller
        # DATA_UPLOAD_MAX_MEMORY_SIZE (for every other endpoint) is not applied a second time.
        body = request.read(limit + 1)
        if len(body) > limit:
            return _too_large(limit)
        request._body = body  # type: ignore[attr-defined]
        request._stream = io.BytesIO(body)  # type: ignore[attr-defined]
        request._read_started = False  # type: ignore[attr-defined]
        return None

    @staticmethod
    def _refuse(request: HttpRequest, name: str, message: str) -> HttpResponse:
        if request.path.startswith("/api/"):
            return JsonResponse(refusal_body(name, message), status=400)
        return HttpResponse(f"Bad request: {name}: {message}\n", status=400, content_type="text/plain")

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if isinstance(exception, DataError):
            message = "a value is out of range or malformed for the database"
            return self._refuse(request, "request", message)
        return None
