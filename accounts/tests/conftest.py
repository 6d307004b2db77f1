from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.throttling import SimpleRateThrottle

LOOSE = "1000/min"


@pytest.fixture
def rates(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Set throttle rates for one test.

    DRF binds `SimpleRateThrottle.THROTTLE_RATES = api_settings.DEFAULT_THROTTLE_RATES` once,
    at import: overriding `settings.REST_FRAMEWORK` reloads `api_settings` but not that class
    attribute, so the dict the throttles read is patched as well."""

    def set_rates(**overrides: str) -> None:
        defaults = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
        new = {**dict.fromkeys(defaults, LOOSE), **overrides}
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": new}
        monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", new)

    return set_rates
