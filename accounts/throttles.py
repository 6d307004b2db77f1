from __future__ import annotations

from typing import Any

from rest_framework.throttling import SimpleRateThrottle

from accounts.models import APIKey


class UserOrKeyRateThrottle(SimpleRateThrottle):
    """The whole API: one bucket per API key, per user for JWT/session, per IP otherwise."""

    scope = "user_or_key"

    def get_cache_key(self, request: Any, view: Any) -> str:
        if isinstance(request.auth, APIKey):
            ident = f"key:{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"ip:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


class AuthIPThrottle(SimpleRateThrottle):
    """Login, register and refresh: per client address."""

    scope = "auth_ip"

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class AuthEmailThrottle(SimpleRateThrottle):
    """Login and register: per target email, so one account cannot be brute-forced from many
    addresses."""

    scope = "auth_email"

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        email = request.data.get("email") if hasattr(request.data, "get") else None
        if not isinstance(email, str) or not email:
            return None
        return self.cache_format % {"scope": self.scope, "ident": email.strip().lower()}
