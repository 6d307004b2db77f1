"""Registration, login, JWT refresh/rotation/logout, profile and password change, and the
forged or misused tokens every authenticated endpoint must refuse."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any

import jwt
import pytest
from django.contrib.auth.hashers import MD5PasswordHasher
from rest_framework.test import APIClient
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken

from accounts.models import User
from accounts.tests.factories import PASSWORD, UserFactory
from conftest import client_for

pytestmark = pytest.mark.django_db

NEW_PASSWORD = "another-long-passphrase-42"
PROJECTS = "/api/v1/projects/"


def assert_error(response: Any, status: int, error_type: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) >= {"type", "detail"}, body
    assert isinstance(body["type"], str)
    assert isinstance(body["detail"], str), body
    if error_type is not None:
        assert body["type"] == error_type
    return body


def login(api: APIClient, email: str, password: str = PASSWORD) -> Any:
    return api.post("/api/v1/auth/login", {"email": email, "password": password})


def bearer(token: Any) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def jti_of(token: str) -> str:
    return RefreshToken(token, verify=False)["jti"]


# --- register -------------------------------------------------------------------------------


def test_register_returns_user_and_token_pair(api: APIClient) -> None:
    response = api.post(
        "/api/v1/auth/register",
        {"email": "Ada@Example.com", "password": PASSWORD, "name": "Ada"},
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"access", "refresh", "user"}
    assert body["user"]["email"] == "ada@example.com"
    assert body["user"]["name"] == "Ada"
    assert "password" not in body["user"]
    assert bearer(body["access"]).get("/api/v1/auth/me").json()["email"] == "ada@example.com"
    assert api.post("/api/v1/auth/refresh", {"refresh": body["refresh"]}).status_code == 200


def test_register_stores_email_lowercase(api: APIClient) -> None:
    api.post("/api/v1/auth/register/", {"email": "MiXeD@Example.COM", "password": PASSWORD})

    assert User.objects.get().email == "mixed@example.com"


def test_register_duplicate_email_is_case_insensitive(api: APIClient) -> None:
    UserFactory(email="foo@example.com")

    response = api.post("/api/v1/auth/register", {"email": "Foo@Example.com", "password": PASSWORD})

    body = assert_error(response, 400, "validation_error")
    assert "email" in body["errors"]
    assert User.objects.filter(email__iexact="foo@example.com").count() == 1


def test_register_does_not_say_that_an_address_has_an_account(api: APIClient) -> None:
    """A taken address gets one generic refusal, and only after the password checks, so a
    weak password answers the same for a taken address and a free one."""
    UserFactory(email="taken@example.com")

    taken = assert_error(
        api.post("/api/v1/auth/register", {"email": "taken@example.com", "password": PASSWORD}),
        400,
        "validation_error",
    )
    assert "exist" not in json.dumps(taken).lower()
    assert "account" not in taken["errors"]["email"][0].split(".")[0].lower()
    weak = [
        api.post("/api/v1/auth/register", {"email": email, "password": "short1"}).json()
        for email in ("taken@example.com", "free@example.com")
    ]
    assert list(weak[0]["errors"]) == list(weak[1]["errors"]) == ["password"]


class CountingHasher(MD5PasswordHasher):
    calls = 0

    def encode(self, password: str, salt: str) -> str:
        type(self).calls += 1
        return super().encode(password, salt)


def test_the_refusal_hashes_the_password_as_a_registration_does(api: APIClient, settings) -> None:
    # So a taken address is not told apart by a quicker answer.
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingHasher"]
    UserFactory(email="taken@example.com")
    for email, status in (("taken@example.com", 400), ("free@example.com", 201)):
        CountingHasher.calls = 0
        response = api.post("/api/v1/auth/register", {"email": email, "password": PASSWORD})
        assert response.status_code == status
        assert CountingHasher.calls == 1, email


@pytest.mark.parametrize(
    "password",
    ["short1", "password123", "12345678901234", "weak-user@example.com"],
    ids=["too-short", "common", "numeric", "similar-to-email"],
)
def test_register_weak_password_is_refused(api: APIClient, password: str) -> None:
    response = api.post(
        "/api/v1/auth/register", {"email": "weak-user@example.com", "password": password}
    )

    body = assert_error(response, 400, "validation_error")
    assert list(body["errors"]) == ["password"]
    assert not User.objects.exists()


def test_register_invalid_email_is_a_field_error(api: APIClient) -> None:
    response = api.post("/api/v1/auth/register", {"email": "not-an-email", "password": PASSWORD})

    assert "email" in assert_error(response, 400, "validation_error")["errors"]


def test_production_hasher_is_argon2(api: APIClient, settings: Any) -> None:
    # conftest swaps in MD5 for speed; put the production setting back for this one test.
    settings.PASSWORD_HASHERS = [
        "django.contrib.auth.hashers.Argon2PasswordHasher",
        "django.contrib.auth.hashers.PBKDF2PasswordHasher",
    ]

    api.post("/api/v1/auth/register", {"email": "argon@example.com", "password": PASSWORD})

    user = User.objects.get()
    assert user.password.startswith("argon2")
    assert login(api, "argon@example.com").status_code == 200


# --- login ----------------------------------------------------------------------------------


def test_login_returns_token_pair_and_user(api: APIClient) -> None:
    user = UserFactory(email="ada@example.com")

    response = login(api, "ada@example.com")

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"access", "refresh", "user"}
    assert body["user"]["id"] == str(user.pk)
    assert AccessToken(body["access"])["user_id"] == str(user.pk)
    assert RefreshToken(body["refresh"])["user_id"] == str(user.pk)
    user.refresh_from_db()
    assert user.last_login is not None


def test_login_is_case_insensitive_on_email(api: APIClient) -> None:
    UserFactory(email="ada@example.com")

    assert login(api, "ADA@Example.com").status_code == 200


def test_wrong_password_and_unknown_email_get_the_same_401(api: APIClient) -> None:
    UserFactory(email="ada@example.com")

    wrong_password = login(api, "ada@example.com", "not-the-password")
    unknown_email = login(api, "nobody@example.com")

    assert_error(wrong_password, 401, "authentication_failed")
    assert_error(unknown_email, 401, "authentication_failed")
    assert wrong_password.json() == unknown_email.json()
    assert "WWW-Authenticate" in wrong_password.headers


def test_inactive_user_cannot_log_in(api: APIClient) -> None:
    UserFactory(email="gone@example.com", is_active=False)

    assert_error(login(api, "gone@example.com"), 401, "authentication_failed")


def test_login_without_password_is_a_field_error(api: APIClient) -> None:
    response = api.post("/api/v1/auth/login", {"email": "ada@example.com"})

    assert "password" in assert_error(response, 400, "validation_error")["errors"]


# --- refresh & logout -----------------------------------------------------------------------


def test_refresh_rotates_and_blacklists_the_old_refresh(api: APIClient) -> None:
    UserFactory(email="ada@example.com")
    old = login(api, "ada@example.com").json()["refresh"]

    response = api.post("/api/v1/auth/refresh", {"refresh": old})

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"access", "refresh"}
    assert body["refresh"] != old
    assert bearer(body["access"]).get("/api/v1/auth/me").status_code == 200
    assert BlacklistedToken.objects.filter(token__jti=jti_of(old)).exists()
    # The rotated token works once more, the old one never again.
    assert_error(api.post("/api/v1/auth/refresh/", {"refresh": old}), 401, "token_not_valid")
    assert api.post("/api/v1/auth/refresh/", {"refresh": body["refresh"]}).status_code == 200


def test_refresh_for_inactive_user_is_refused(api: APIClient) -> None:
    user = UserFactory(email="ada@example.com")
    refresh = login(api, "ada@example.com").json()["refresh"]
    User.objects.filter(pk=user.pk).update(is_active=False)

    assert_error(api.post("/api/v1/auth/refresh", {"refresh": refresh}), 401)


def test_refresh_for_deleted_user_is_refused(api: APIClient) -> None:
    user = UserFactory(email="ada@example.com")
    refresh = login(api, "ada@example.com").json()["refresh"]
    user.delete()

    assert_error(api.post("/api/v1/auth/refresh", {"refresh": refresh}), 401)


def test_refresh_without_token_is_a_field_error(api: APIClient) -> None:
    response = api.post("/api/v1/auth/refresh", {})

    assert "refresh" in assert_error(response, 400, "validation_error")["errors"]


def test_logout_blacklists_the_refresh(api: APIClient) -> None:
    UserFactory(email="ada@example.com")
    refresh = login(api, "ada@example.com").json()["refresh"]

    response = api.post("/api/v1/auth/logout", {"refresh": refresh})

    assert response.status_code == 204
    assert BlacklistedToken.objects.filter(token__jti=jti_of(refresh)).exists()
    assert_error(api.post("/api/v1/auth/refresh", {"refresh": refresh}), 401, "token_not_valid")
    assert_error(api.post("/api/v1/auth/logout", {"refresh": refresh}), 401, "token_not_valid")


def test_logout_with_garbage_is_refused(api: APIClient) -> None:
    assert_error(api.post("/api/v1/auth/logout", {"refresh": "garbage"}), 401, "token_not_valid")


# --- me -------------------------------------------------------------------------------------


def test_me_returns_the_caller() -> None:
    user = UserFactory(email="ada@example.com", name="Ada")

    response = client_for(user).get("/api/v1/auth/me")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(user.pk)
    assert body["email"] == "ada@example.com"
    assert body["name"] == "Ada"
    assert body["settings"] == {}
    assert "password" not in body


def test_me_requires_authentication(api: APIClient) -> None:
    assert_error(api.get("/api/v1/auth/me"), 401, "not_authenticated")


def test_me_patch_updates_name_and_settings() -> None:
    user = UserFactory(email="ada@example.com", name="Ada")

    response = client_for(user).patch(
        "/api/v1/auth/me/", {"name": "Ada L.", "settings": {"theme": "dark"}}
    )

    assert response.status_code == 200, response.content
    assert response.json()["name"] == "Ada L."
    assert response.json()["settings"] == {"theme": "dark"}
    user.refresh_from_db()
    assert (user.name, user.settings) == ("Ada L.", {"theme": "dark"})


def test_me_patch_cannot_change_email_or_staff() -> None:
    user = UserFactory(email="ada@example.com")

    client_for(user).patch("/api/v1/auth/me", {"email": "evil@example.com", "is_staff": True})

    user.refresh_from_db()
    assert (user.email, user.is_staff) == ("ada@example.com", False)


@pytest.mark.parametrize("value", [["a"], "dark", 3, None], ids=["list", "str", "int", "null"])
def test_me_patch_settings_must_be_an_object(value: Any) -> None:
    user = UserFactory(settings={"theme": "light"})

    response = client_for(user).patch("/api/v1/auth/me", {"settings": value})

    assert "settings" in assert_error(response, 400, "validation_error")["errors"]
    user.refresh_from_db()
    assert user.settings == {"theme": "light"}


# --- password change ------------------------------------------------------------------------


def test_password_change_requires_the_old_password() -> None:
    user = UserFactory()

    response = client_for(user).post(
        "/api/v1/auth/password", {"old_password": "wrong", "new_password": NEW_PASSWORD}
    )

    assert "old_password" in assert_error(response, 400, "validation_error")["errors"]
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


def test_password_change_applies_validators() -> None:
    user = UserFactory()

    response = client_for(user).post(
        "/api/v1/auth/password", {"old_password": PASSWORD, "new_password": "123"}
    )

    assert "new_password" in assert_error(response, 400, "validation_error")["errors"]
    user.refresh_from_db()
    assert user.check_password(PASSWORD)


def test_password_change_revokes_every_refresh_token(api: APIClient) -> None:
    user = UserFactory(email="ada@example.com")
    laptop = login(api, "ada@example.com").json()
    phone = login(api, "ada@example.com").json()
    rotated = api.post("/api/v1/auth/refresh", {"refresh": phone["refresh"]}).json()["refresh"]
    other = UserFactory(email="bob@example.com")
    others_refresh = login(api, "bob@example.com").json()["refresh"]

    response = bearer(laptop["access"]).post(
        "/api/v1/auth/password", {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
    )

    assert response.status_code == 204, response.content
    for refresh in (laptop["refresh"], rotated):
        assert_error(api.post("/api/v1/auth/refresh", {"refresh": refresh}), 401)
    assert api.post("/api/v1/auth/refresh", {"refresh": others_refresh}).status_code == 200
    assert_error(login(api, "ada@example.com"), 401)
    assert login(api, "ada@example.com", NEW_PASSWORD).status_code == 200
    user.refresh_from_db()
    other.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)
    assert other.check_password(PASSWORD)


def test_password_change_also_ends_access_tokens(api: APIClient) -> None:
    UserFactory(email="ada@example.com")
    laptop = login(api, "ada@example.com").json()
    phone = login(api, "ada@example.com").json()
    assert bearer(phone["access"]).get("/api/v1/auth/me").status_code == 200

    response = bearer(laptop["access"]).post(
        "/api/v1/auth/password", {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
    )

    assert response.status_code == 204
    # Access tokens carry a hash of the password hash (simplejwt CHECK_REVOKE_TOKEN).
    assert_error(bearer(phone["access"]).get("/api/v1/auth/me"), 401)
    fresh = login(api, "ada@example.com", NEW_PASSWORD).json()
    assert bearer(fresh["access"]).get("/api/v1/auth/me").status_code == 200


def test_password_change_requires_authentication(api: APIClient) -> None:
    response = api.post(
        "/api/v1/auth/password", {"old_password": PASSWORD, "new_password": NEW_PASSWORD}
    )

    assert_error(response, 401, "not_authenticated")


# --- forged and misused tokens ----------------------------------------------------------------


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _claims_for(user: User) -> dict[str, Any]:
    return dict(AccessToken.for_user(user).payload)


def test_valid_access_token_is_accepted() -> None:
    user = UserFactory()

    assert bearer(AccessToken.for_user(user)).get(PROJECTS).status_code == 200


def test_alg_none_token_is_refused() -> None:
    claims = _claims_for(UserFactory())
    pyjwt_token = jwt.encode(claims, None, algorithm="none")
    handmade = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(claims)}."

    for token in (pyjwt_token, handmade):
        assert_error(bearer(token).get(PROJECTS), 401, "token_not_valid")


def test_token_signed_with_another_key_is_refused() -> None:
    claims = _claims_for(UserFactory())
    token = jwt.encode(claims, "not-our-signing-key-" + "x" * 32, algorithm="HS256")

    assert_error(bearer(token).get(PROJECTS), 401, "token_not_valid")


def test_token_with_tampered_claims_is_refused() -> None:
    victim = UserFactory()
    header, _, signature = str(AccessToken.for_user(UserFactory())).split(".")
    payload = _b64(_claims_for(victim))

    assert_error(bearer(f"{header}.{payload}.{signature}").get(PROJECTS), 401, "token_not_valid")


def test_expired_access_token_is_refused() -> None:
    token = AccessToken.for_user(UserFactory())
    token.set_exp(lifetime=-timedelta(minutes=1))

    assert_error(bearer(token).get(PROJECTS), 401, "token_not_valid")


def test_access_token_is_not_a_refresh_token(api: APIClient) -> None:
    access = AccessToken.for_user(UserFactory())

    response = api.post("/api/v1/auth/refresh", {"refresh": str(access)})

    assert_error(response, 401, "token_not_valid")


def test_refresh_token_is_not_an_access_token() -> None:
    refresh = RefreshToken.for_user(UserFactory())

    assert_error(bearer(refresh).get(PROJECTS), 401, "token_not_valid")


def test_access_token_of_inactive_user_is_refused() -> None:
    user = UserFactory(is_active=False)

    assert_error(bearer(AccessToken.for_user(user)).get(PROJECTS), 401)


def test_access_token_of_deleted_user_is_refused() -> None:
    user = UserFactory()
    token = AccessToken.for_user(user)
    user.delete()

    assert_error(bearer(token).get(PROJECTS), 401)


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer garbage", "Token abc"])
def test_malformed_authorization_header_is_refused(header: str) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)

    assert_error(client.get(PROJECTS), 401)
