from __future__ import annotations

from typing import Any

from django.core.cache import cache as shared_cache
from django.core.cache.backends.locmem import LocMemCache
from rest_framework.throttling import SimpleRateThrottle

from accounts.models import APIKey
from sparkops import cache as cache_state


class OutageFallbackCache:
    """The shared cache (Redis), or this process's memory while Redis is unreachable.

    Throttles fail open with the cache; for login, register and refresh that would remove
    brute-force protection for as long as Redis is down, so the auth throttles count in
    memory meanwhile: the limit then holds per process (a deployment with N web processes
    admits up to N times the rate), which is far better than none."""

    def __init__(self) -> None:
        self.local = LocMemCache("sparkops-auth-throttle-fallback", {"MAX_ENTRIES": 10000})

    def get(self, key: str, default: Any = None) -> Any:
        value = shared_cache.get(key, default)
        return self.local.get(key, default) if cache_state.outage() else value

    def set(self, key: str, value: Any, timeout: Any = None) -> None:
        shared_cache.set(key, value, timeout)
        if cache_state.outage():
            self.local.set(key, value, timeout)


auth_fallback = OutageFallbackCache()


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
    cache = auth_fallback

    def get_cache_key(self, request: Any, view: Any) -> str:
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


def normalized_email(value: Any) -> str | None:
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip().lower()


class AuthEmailThrottle(SimpleRateThrottle):
    """Login and register: per target email, so one account cannot be brute-forced from many
    addresses. The API's login and the admin's login share this one bucket per email.

    Only failed attempts spend the budget: every attempt is counted up front (so parallel
    guesses cannot all slip past one check), and a success takes its own entry back with
    `refund()`. A success does not reset the bucket: the owner logging in during an attack
    must not hand the attacker a fresh budget."""

    scope = "auth_email"
    cache = auth_fallback

    def __init__(self, email: str | None = None) -> None:
        super().__init__()
        self.email = email

    def get_cache_key(self, request: Any, view: Any) -> str | None:
        email = self.email
        if email is None:
            email = request.data.get("email") if hasattr(request.data, "get") else None
        return self.key_for(email)

    @classmethod
    def key_for(cls, email: Any) -> str | None:
        ident = normalized_email(email)
        if ident is None:
            return None
        return cls.cache_format % {"scope": cls.scope, "ident": ident}

    @classmethod
    def refund(cls, email: Any) -> None:
        """Give back the attempt a successful login (or registration) was counted for."""
        key = cls.key_for(email)
        if key is None:
            return
        throttle = cls()
        if throttle.rate is None:
            return
        history = throttle.cache.get(key, [])
        if history:
            history.pop(0)
            throttle.cache.set(key, history, throttle.duration)
