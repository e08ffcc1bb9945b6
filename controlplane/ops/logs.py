"""Logging: one stdlib configuration whose formatter is structlog's, in console or JSON form.

``LOG_FORMAT=json`` writes one JSON object per line (for a log shipper); the default ``console``
stays human-readable for ``make run``. Both carry the request id, the user and the runbook /
experiment / surface ids bound by ``RequestContextMiddleware`` (or by the Celery task signals),
for records from structlog loggers and from plain ``logging.getLogger`` ones alike.

Only structlog and the standard library here: settings import it before Django is set up.
"""

from __future__ import annotations

import contextvars
from typing import Any

import structlog

# The request being served by this thread/task, so log lines can name its user lazily.
current_request: contextvars.ContextVar[Any] = contextvars.ContextVar("current_request", default=None)


def add_request_user(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """Add ``user`` (the username) when the current request's user is already known.

    Never triggers the session lookup itself: a lazy user not evaluated yet is left out.
    """
    request = current_request.get()
    if request is None or "user" in event:
        return event
    user = request.__dict__.get("user")
    if user is None:
        return event
    wrapped = getattr(user, "_wrapped", user)
    if wrapped is None or type(wrapped).__name__ == "object":  # django.utils.functional.empty
        return event
    if getattr(wrapped, "is_authenticated", False):
        event["user"] = wrapped.get_username()
    return event


def _shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        add_request_user,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def formatter(fmt: str) -> structlog.stdlib.ProcessorFormatter:
    """The formatter for ``fmt`` (``json``; anything else is ``console``)."""
    renderer: Any
    if fmt.strip().lower() == "json":
        renderer = structlog.processors.JSONRenderer()
        final = [structlog.processors.format_exc_info, renderer]
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
        final = [renderer]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_shared_processors(), structlog.stdlib.ExtraAdder()],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )


def configure_structlog() -> None:
    """structlog loggers hand their event dicts to the stdlib handlers configured above."""
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def bind_request(request: Any) -> contextvars.Token[Any]:
    return current_request.set(request)


def unbind_request(token: contextvars.Token[Any]) -> None:
    current_request.reset(token)
