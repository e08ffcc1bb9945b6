"""Login, rate-limited per client address."""

from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

LOGIN_ATTEMPTS_PER_MINUTE = 10


def _client_key(request: HttpRequest) -> str:
    return f"login-attempts:{request.META.get('REMOTE_ADDR', '?')}"


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
