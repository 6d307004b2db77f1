"""The admin's login form, throttled like the API's login."""

from __future__ import annotations

import math
from typing import Any

from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm

from .throttles import AuthEmailThrottle, AuthIPThrottle


class ThrottledAdminAuthenticationForm(AdminAuthenticationForm):
    """Checks the API login's throttles before the password: per client address (every
    attempt) and per email (failures only, the same bucket as `POST /auth/login`). A refused
    attempt never reaches the password check; `retry_after` tells the site to answer 429."""

    retry_after: int | None = None

    def clean(self) -> dict[str, Any]:
        email = self.cleaned_data.get("username")
        waits = [
            throttle.wait()
            for throttle in (AuthIPThrottle(), AuthEmailThrottle(email=email))
            if not throttle.allow_request(self.request, None)
        ]
        if waits:
            self.retry_after = max(1, math.ceil(max(w or 1 for w in waits)))
            raise forms.ValidationError(
                "Too many failed login attempts. Try again in %(seconds)s seconds.",
                code="throttled",
                params={"seconds": self.retry_after},
            )
        try:
            cleaned = super().clean()
        except forms.ValidationError:
            if self.user_cache is not None:  # right password, but not staff or inactive
                AuthEmailThrottle.refund(email)
            raise
        AuthEmailThrottle.refund(email)
        return cleaned
