"""Logout ends the session at once: the refresh token is blacklisted and the access token that
made the request is denied (by its jti, in the database) until it expires."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from accounts import services
from accounts.models import DeniedAccessToken
from accounts.tests.factories import PASSWORD, UserFactory

ME = "/api/v1/auth/me"


def session(email: str) -> tuple[APIClient, str]:
    """A logged-in client (a fresh login: its own access and refresh token) and its refresh."""
    client = APIClient()
    tokens = client.post("/api/v1/auth/login", {"email": email, "password": PASSWORD}).json()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    return client, tokens["refresh"]


def logout_ends_only_that_session() -> None:
    UserFactory(email="ada@example.com")
    laptop, laptop_refresh = session("ada@example.com")
    phone, _ = session("ada@example.com")
    assert laptop.get(ME).status_code == 200

    assert laptop.post("/api/v1/auth/logout", {"refresh": laptop_refresh}).status_code == 204

    response = laptop.get(ME)
    assert response.status_code == 401
    assert response.json()["detail"] == "Token has been revoked."
    # Denied in the database: the cache (Redis) going away changes nothing.
    cache.clear()
    assert laptop.get(ME).status_code == 401
    assert phone.get(ME).status_code == 200


@pytest.mark.django_db
def test_logout_denies_the_access_token_until_it_expires() -> None:
    logout_ends_only_that_session()


@pytest.mark.django_db(transaction=True)
def test_logout_denies_the_access_token_under_real_transactions() -> None:
    logout_ends_only_that_session()


@pytest.mark.django_db
def test_logout_with_only_a_refresh_token_still_blacklists_it() -> None:
    UserFactory(email="ada@example.com")
    client, refresh = session("ada@example.com")

    assert APIClient().post("/api/v1/auth/logout", {"refresh": refresh}).status_code == 204

    assert client.get(ME).status_code == 200  # no access token was presented to deny
    refreshed = APIClient().post("/api/v1/auth/refresh", {"refresh": refresh})
    assert refreshed.status_code == 401


@pytest.mark.django_db
def test_a_failed_logout_denies_nothing() -> None:
    UserFactory(email="ada@example.com")
    client, _ = session("ada@example.com")

    assert client.post("/api/v1/auth/logout", {"refresh": "garbage"}).status_code == 401

    assert client.get(ME).status_code == 200
    assert not DeniedAccessToken.objects.exists()


@pytest.mark.django_db
def test_denying_purges_rows_of_expired_tokens() -> None:
    user = UserFactory()
    old = AccessToken.for_user(user)
    old.set_exp(lifetime=timedelta(seconds=-1))
    DeniedAccessToken.objects.create(jti=old["jti"], expires_at=timezone.now() - timedelta(1))
    live = AccessToken.for_user(user)

    services.access_token_deny(token=live)

    assert list(DeniedAccessToken.objects.values_list("jti", flat=True)) == [live["jti"]]


@pytest.mark.django_db
def test_the_denial_check_adds_no_query(django_assert_num_queries: Any) -> None:
    UserFactory(email="ada@example.com")
    client, _ = session("ada@example.com")
    # One query: the user, with an EXISTS on the denied jti (its primary key) in the same row.
    with django_assert_num_queries(1):
        assert client.get(ME).status_code == 200
