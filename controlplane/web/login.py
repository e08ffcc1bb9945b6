"""Login: locked out per (username, client address) by django-axes after repeated failures, and
rate-limited per client address; both use the proxy-aware client address (``edge.client_ip``)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

LOGIN_ATTEMPTS_PER_MINUTE = 10


def _client_key(request: HttpRequest) -> str:
    from controlplane.edge import client_ip

    return f"login-attempts:{client_ip(request) or '?'}"


def login_locked_out(
    request: HttpRequest, credentials: object = None, *args: object, **kwargs: object
) -> HttpResponse:
    """django-axes' lockout response (AXES_LOCKOUT_CALLABLE): the login page again, 429."""
    from django.contrib.auth.forms import AuthenticationForm

    response = render(
        request,
        "registration/login.html",
        {"form": AuthenticationForm(request), "locked_out": True},
        status=429,
    )
    response["Retry-After"] = str(int(float(getattr(settings, "AXES_COOLOFF_TIME", 0.25)) * 3600))
    return response


class RateLimitedLoginView(auth_views.LoginView):
    """Django's login view with a per-client budget of POSTs per minute (429 beyond it)."""

    template_name = "registration/login.html"

    def post(self, request: HttpRequest, *args: object, **kwargs: object) -> HttpResponse:
        key = _client_key(request)
        cache.add(key, 0, timeout=60)
        try:
            attempts = cache.incr(key)
        except ValueError:
            cache.set(key, 1, timeout=60)
            attempts = 1
        if attempts > LOGIN_ATTEMPTS_PER_MINUTE:
            response = render(
                request,
                "registration/login.html",
                {"form": self.get_form(), "rate_limited": True},
                status=429,
            )
            response["Retry-After"] = "60"
            return response
        return super().post(request, *args, **kwargs)
