"""Who may see and do what on the pages. The same role checks as the API (controlplane.core.permissions):
a page may hide a button, but every action view checks the role again on the server."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from controlplane.core.permissions import OPERATOR, VIEWER, has_role

View = Callable[..., HttpResponse]

ROLE_MESSAGES = {
    VIEWER: "Your account has no role yet; ask an administrator for the viewer role.",
    OPERATOR: "You need the operator role to change this.",
    "approver": "You need the approver role to approve.",
}


def role_required(role: str) -> Callable[[View], View]:
    """Login first (redirect), then the role (403 with the reason)."""

    def decorator(view: View) -> View:
        @wraps(view)
        @login_required
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if not has_role(request.user, role):
                raise PermissionDenied(ROLE_MESSAGES.get(role, f"You need the {role} role."))
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


viewer_required = role_required(VIEWER)
operator_required = role_required(OPERATOR)


def require_role(request: HttpRequest, role: str) -> None:
    """For views that read for viewers but write for a stricter role (checked on POST)."""
    if not has_role(request.user, role):
        raise PermissionDenied(ROLE_MESSAGES.get(role, f"You need the {role} role."))
