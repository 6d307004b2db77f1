"""The admin's login page is throttled like the API's login: per client address, and per email
with failures only, in the same bucket as `POST /api/v1/auth/login`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from accounts.tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

LOGIN = "/admin/login/"


def admin_login(email: str, password: str = PASSWORD, *, ip: str = "10.0.0.1") -> Any:
    client = Client(REMOTE_ADDR=ip)
    response = client.post(LOGIN, {"username": email, "password": password, "next": "/admin/"})
    response.logged_in = "_auth_user_id" in client.session  # type: ignore[attr-defined]
    return response


def assert_refused(response: Any) -> None:
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert not response.logged_in
    assert "Too many failed login attempts. Try again in" in response.content.decode()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Moves the throttles' clock forward, so a window can pass without waiting for it."""
    offset = [0.0]
    monkeypatch.setattr(SimpleRateThrottle, "timer", lambda self: time.time() + offset[0])

    def advance(seconds: float) -> None:
        offset[0] += seconds

    return advance


def test_wrong_passwords_then_the_right_one_is_refused_until_the_window_passes(
    rates: Callable[..., None], clock: Callable[[float], None]
) -> None:
    rates(auth_email="5/min")
    UserFactory(email="ops@example.com", is_staff=True)
    UserFactory(email="other@example.com", is_staff=True)

    for n in range(5):
        response = admin_login("ops@example.com", "guess", ip=f"10.0.0.{n}")
        assert response.status_code == 200 and not response.logged_in

    assert_refused(admin_login("OPS@example.com", ip="10.0.9.9"))
    # Another account is unaffected.
    other = admin_login("other@example.com", ip="10.0.9.9")
    assert other.status_code == 302 and other.logged_in

    clock(61)
    response = admin_login("ops@example.com", ip="10.0.9.9")
    assert response.status_code == 302 and response.logged_in


def test_admin_and_api_failures_share_one_bucket_per_email(rates: Callable[..., None]) -> None:
    rates(auth_email="4/min")
    UserFactory(email="ops@example.com", is_staff=True)
    api = APIClient()

    for _ in range(2):
        bad = {"email": "ops@example.com", "password": "guess"}
        assert api.post("/api/v1/auth/login", bad, REMOTE_ADDR="10.0.1.1").status_code == 401
        assert admin_login("ops@example.com", "guess").status_code == 200

    assert_refused(admin_login("ops@example.com"))
    good = {"email": "ops@example.com", "password": PASSWORD}
    assert api.post("/api/v1/auth/login", good, REMOTE_ADDR="10.0.1.2").status_code == 429


def test_successful_admin_logins_do_not_spend_the_budget(rates: Callable[..., None]) -> None:
    rates(auth_email="2/min")
    UserFactory(email="ops@example.com", is_staff=True)
    UserFactory(email="dev@example.com", is_staff=False)

    for _ in range(5):
        assert admin_login("ops@example.com").logged_in
    # The right password of a user who may not use the admin is refused, but is no failure.
    for _ in range(5):
        response = admin_login("dev@example.com")
        assert response.status_code == 200 and not response.logged_in
    assert (
        APIClient()
        .post("/api/v1/auth/login", {"email": "dev@example.com", "password": PASSWORD})
        .status_code
        == 200
    )


def test_admin_login_is_limited_per_client_address(rates: Callable[..., None]) -> None:
    rates(auth_ip="3/min")
    UserFactory(email="ops@example.com", is_staff=True)

    for n in range(3):
        assert admin_login(f"user{n}@example.com", "guess", ip="10.0.2.1").status_code == 200

    assert_refused(admin_login("ops@example.com", ip="10.0.2.1"))
    assert admin_login("ops@example.com", ip="10.0.2.2").logged_in
