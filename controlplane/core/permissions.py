"""Roles are Django groups: viewer reads, operator changes, approver approves. Superusers hold all."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, BasePermission

VIEWER, OPERATOR, APPROVER = "viewer", "operator", "approver"
ROLES = (VIEWER, OPERATOR, APPROVER)


def user_roles(user: Any) -> set[str]:
    if not getattr(user, "is_authenticated", False) or not user.is_active:
        return set()
    if user.is_superuser:
        return set(ROLES)
    cached = getattr(user, "_controlplane_roles", None)
    if cached is None:
        cached = set(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        # Operators and approvers can read everything a viewer can.
        if cached:
            cached.add(VIEWER)
        user._controlplane_roles = cached
    return set(cached)


def has_role(user: Any, role: str) -> bool:
    return role in user_roles(user)


class IsViewer(BasePermission):
    """Any user holding a role may read; writes need the stricter classes below."""

    message = "You need the viewer role (or higher) to read this."

    def has_permission(self, request: Any, view: Any) -> bool:
        if request.method not in SAFE_METHODS:
            return has_role(request.user, OPERATOR)
        return has_role(request.user, VIEWER)


class IsOperator(BasePermission):
    message = "You need the operator role to change this."

    def has_permission(self, request: Any, view: Any) -> bool:
        if request.method in SAFE_METHODS:
            return has_role(request.user, VIEWER)
        return has_role(request.user, OPERATOR)


class IsApprover(BasePermission):
    message = "You need the approver role to approve."

    def has_permission(self, request: Any, view: Any) -> bool:
        if request.method in SAFE_METHODS:
            return has_role(request.user, VIEWER)
        return has_role(request.user, APPROVER)
