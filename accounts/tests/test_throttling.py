"""Rate limits: login and registration per client address and per target email, and the API
per user (JWT) or per API key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from rest_framework.test import APIClient

from accounts import services
from accounts.tests.factories import PASSWORD, UserFactory
from conftest import client_for

pytestmark = pytest.mark.django_db

PROJECTS = "/api/v1/projects/"


def assert_throttled(response: Any) -> None:
    assert response.status_code == 429, response.content
    body = response.json()
    assert body["type"] == "throttled"
    assert isinstance(body["detail"], str)
    assert int(response.headers["Retry-After"]) > 0


def login(email: str, *, ip: str = "10.0.0.1", password: str = PASSWORD, **extra: Any) -> Any:
    return APIClient().post(
        "/api/v1/auth/login", {"email": email, "password": password}, REMOTE_ADDR=ip, **extra
    )


def test_rates_fixture_reaches_the_throttles(rates: Callable[..., None]) -> None:
    rates(auth_ip="7/min")

    from accounts.throttles import AuthIPThrottle

    assert AuthIPThrottle().num_requests == 7


# --- login and registration -----------------------------------------------------------------


def test_login_is_limited_per_client_address(rates: Callable[..., None]) -> None:
    rates(auth_ip="3/min")
    UserFactory(email="ada@example.com")

    # Different target emails, so only the address bucket fills up.
    for n in range(3):
        assert login(f"user{n}@example.com", ip="10.0.0.1").status_code == 401

    assert_throttled(login("ada@example.com", ip="10.0.0.1"))
    assert login("ada@example.com", ip="10.0.0.2").status_code == 200


def test_forwarded_for_header_does_not_evade_the_address_limit(
    rates: Callable[..., None],
) -> None:
    # NUM_PROXIES=0: the app is reached directly, so X-Forwarded-For is the client's to forge.
    rates(auth_ip="2/min")

    for n in range(2):
        login(f"user{n}@example.com", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")

    assert_throttled(login("other@example.com", HTTP_X_FORWARDED_FOR="192.0.2.99"))


def test_login_is_limited_per_email_across_addresses(rates: Callable[..., None]) -> None:
    rates(auth_email="3/min")
    UserFactory(email="ada@example.com")

    for n, email in enumerate(["ada@example.com", "ADA@example.com", " Ada@Example.com"]):
        assert login(email, ip=f"10.0.1.{n}", password="guess").status_code == 401

    # Even the right password from a fresh address waits: the account is under attack.
    assert_throttled(login("ada@example.com", ip="10.0.1.200"))
    assert login("bob@example.com", ip="10.0.1.200").status_code == 401


def test_successful_logins_do_not_spend_the_email_budget(rates: Callable[..., None]) -> None:
    rates(auth_email="3/min")
    UserFactory(email="ada@example.com")

    for n in range(10):
        assert login("ada@example.com", ip=f"10.0.2.{n}").status_code == 200


def test_only_failures_count_and_a_success_does_not_reset_them(
    rates: Callable[..., None],
) -> None:
    # Documented choice: a success neither spends the budget nor gives the failures back.
    rates(auth_email="3/min")
    UserFactory(email="ada@example.com")

    assert login("ada@example.com", password="guess").status_code == 401
    assert login("ada@example.com").status_code == 200
    assert login("ada@example.com", password="guess").status_code == 401
    assert login("ada@example.com").status_code == 200
    assert login("ada@example.com", password="guess").status_code == 401

    assert_throttled(login("ada@example.com"))


def test_a_registration_does_not_spend_the_new_accounts_login_budget(
    rates: Callable[..., None],
) -> None:
    rates(auth_email="1/min")
    response = APIClient().post(
        "/api/v1/auth/register", {"email": "new@example.com", "password": PASSWORD}
    )
    assert response.status_code == 201

    assert login("new@example.com").status_code == 200


def test_register_is_limited_per_client_address(rates: Callable[..., None]) -> None:
    rates(auth_ip="2/min")
    client = APIClient()

    for n in range(2):
        response = client.post(
            "/api/v1/auth/register", {"email": f"new{n}@example.com", "password": PASSWORD}
        )
        assert response.status_code == 201

    assert_throttled(
        client.post("/api/v1/auth/register", {"email": "new9@example.com", "password": PASSWORD})
    )


def test_refresh_is_limited_per_client_address(rates: Callable[..., None]) -> None:
    rates(auth_ip="2/min")
    client = APIClient()

    for _ in range(2):
        assert client.post("/api/v1/auth/refresh", {"refresh": "garbage"}).status_code == 401

    assert_throttled(client.post("/api/v1/auth/refresh", {"refresh": "garbage"}))


# --- the API: per user, per key -------------------------------------------------------------


def test_api_is_limited_per_user(rates: Callable[..., None]) -> None:
    rates(user_or_key="3/min")
    user = UserFactory()

    for _ in range(3):
        assert client_for(user).get(PROJECTS).status_code == 200

    # A fresh access token is the same user, so the same bucket.
    assert_throttled(client_for(user).get(PROJECTS))
    assert client_for(UserFactory()).get(PROJECTS).status_code == 200


def test_api_key_bucket_is_separate_from_the_users_jwt_bucket(
    rates: Callable[..., None],
) -> None:
    rates(user_or_key="2/min")
    user = UserFactory()
    _, first_key = services.api_key_create(user=user, name="first")
    _, second_key = services.api_key_create(user=user, name="second")
    jwt_client = client_for(user)
    first = APIClient()
    first.credentials(HTTP_AUTHORIZATION=f"Api-Key {first_key}")
    second = APIClient()
    second.credentials(HTTP_X_API_KEY=second_key)

    for _ in range(2):
        assert jwt_client.get(PROJECTS).status_code == 200
    assert_throttled(jwt_client.get(PROJECTS))

    for _ in range(2):
        assert first.get(PROJECTS).status_code == 200
    assert_throttled(first.get(PROJECTS))

    assert second.get(PROJECTS).status_code == 200
