"""API keys: issued once, stored only as a hash, usable through either header, refused once
expired or revoked, and scoped to their owner."""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import services
from accounts.models import APIKey
from accounts.tests.factories import UserFactory
from conftest import client_for

pytestmark = pytest.mark.django_db

PROJECTS = "/api/v1/projects/"


def assert_error(response: Any, status: int, error_type: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) >= {"type", "detail"}, body
    if error_type is not None:
        assert body["type"] == error_type
    return body


def with_key(raw_key: str, *, header: str = "authorization") -> APIClient:
    client = APIClient()
    if header == "authorization":
        client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw_key}")
    else:
        client.credentials(HTTP_X_API_KEY=raw_key)
    return client


def create_key(user: Any, **data: Any) -> dict[str, Any]:
    response = client_for(user).post("/api/v1/auth/api-keys", {"name": "ci", **data})
    assert response.status_code == 201, response.content
    return response.json()


# --- issuing and listing --------------------------------------------------------------------


def test_create_returns_the_raw_key_once() -> None:
    user = UserFactory()

    body = create_key(user, name="deploy bot")

    assert body["name"] == "deploy bot"
    assert body["key"].startswith(services.API_KEY_PREFIX)
    assert body["key"].startswith(body["prefix"] + "_")
    assert body["is_active"] is True
    assert body["expires_at"] is None
    assert body["last_used_at"] is None
    assert "hashed_key" not in body
    stored = APIKey.objects.get(pk=body["id"])
    assert stored.user == user
    assert stored.hashed_key == services.hash_api_key(body["key"])
    assert stored.hashed_key != body["key"]


def test_list_and_retrieve_never_show_the_key_or_its_hash() -> None:
    user = UserFactory()
    created = create_key(user)
    client = client_for(user)

    listed = client.get("/api/v1/auth/api-keys/")
    retrieved = client.get(f"/api/v1/auth/api-keys/{created['id']}")

    assert listed.status_code == 200
    assert [item["id"] for item in listed.json()] == [created["id"]]
    for item in (*listed.json(), retrieved.json()):
        assert "key" not in item
        assert "hashed_key" not in item
        assert item["prefix"] == created["prefix"]
    stored = APIKey.objects.get()
    for response in (listed, retrieved):
        assert created["key"].encode() not in response.content
        assert stored.hashed_key.encode() not in response.content


def test_list_shows_only_the_callers_keys() -> None:
    user = UserFactory()
    mine = create_key(user)
    create_key(UserFactory())

    ids = [item["id"] for item in client_for(user).get("/api/v1/auth/api-keys").json()]

    assert ids == [mine["id"]]


def test_create_with_expiry_in_the_past_is_refused() -> None:
    user = UserFactory()
    past = (timezone.now() - timedelta(minutes=1)).isoformat()

    response = client_for(user).post("/api/v1/auth/api-keys", {"name": "old", "expires_at": past})

    assert "expires_at" in assert_error(response, 400, "validation_error")["errors"]
    assert not APIKey.objects.exists()


def test_create_requires_a_name() -> None:
    response = client_for(UserFactory()).post("/api/v1/auth/api-keys", {})

    assert "name" in assert_error(response, 400, "validation_error")["errors"]


def test_api_keys_require_authentication(api: APIClient) -> None:
    assert_error(api.get("/api/v1/auth/api-keys"), 401, "not_authenticated")
    assert_error(api.post("/api/v1/auth/api-keys", {"name": "x"}), 401, "not_authenticated")


def test_no_plaintext_key_anywhere_in_the_database() -> None:
    user = UserFactory()
    issued = [create_key(user, name=f"key {n}") for n in range(2)]
    issued.append(client_for(user).post("/api/v1/auth/api-key").json())
    # Using a key writes `last_used_at`; it must not write the key along with it.
    assert with_key(issued[0]["key"]).get(PROJECTS).status_code == 200

    out = io.StringIO()
    call_command("dumpdata", stdout=out)
    dump = out.getvalue()

    assert str(user.pk) in dump  # the dump really covers the accounts tables
    for body in issued:
        raw_key = body["key"]
        secret = raw_key.removeprefix(body["prefix"] + "_")
        assert len(secret) >= 40
        assert raw_key not in dump
        assert secret not in dump
        assert services.hash_api_key(raw_key) in dump


# --- authenticating with a key --------------------------------------------------------------


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_key_authenticates_through_either_header(header: str) -> None:
    user = UserFactory()
    raw_key = create_key(user)["key"]

    response = with_key(raw_key, header=header).get(PROJECTS)

    assert response.status_code == 200, response.content
    me = with_key(raw_key, header=header).get("/api/v1/auth/me")
    assert me.json()["id"] == str(user.pk)


def test_authorization_keyword_is_case_insensitive() -> None:
    raw_key = create_key(UserFactory())["key"]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"api-key {raw_key}")

    assert client.get(PROJECTS).status_code == 200


def test_wrong_key_is_refused() -> None:
    raw_key = create_key(UserFactory())["key"]
    prefix, _, secret = raw_key.rpartition("_")
    wrong = f"{prefix}_{'A' if secret[0] != 'A' else 'B'}{secret[1:]}"

    for header in ("authorization", "x-api-key"):
        assert_error(with_key(wrong, header=header).get(PROJECTS), 401, "authentication_failed")
        assert_error(with_key("spk_nothing", header=header).get(PROJECTS), 401)


def test_malformed_api_key_header_is_refused() -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Api-Key one two")

    assert_error(client.get(PROJECTS), 401, "authentication_failed")


def test_expired_key_is_refused() -> None:
    user = UserFactory()
    soon = (timezone.now() + timedelta(hours=1)).isoformat()
    body = create_key(user, expires_at=soon)
    assert with_key(body["key"]).get(PROJECTS).status_code == 200

    APIKey.objects.filter(pk=body["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))

    assert_error(with_key(body["key"]).get(PROJECTS), 401, "authentication_failed")
    listed = client_for(user).get("/api/v1/auth/api-keys").json()
    assert listed[0]["is_active"] is False


def test_revoked_key_is_refused() -> None:
    user = UserFactory()
    body = create_key(user)
    assert with_key(body["key"]).get(PROJECTS).status_code == 200

    response = client_for(user).delete(f"/api/v1/auth/api-keys/{body['id']}")

    assert response.status_code == 204
    assert_error(with_key(body["key"]).get(PROJECTS), 401, "authentication_failed")
    assert_error(with_key(body["key"], header="x-api-key").get(PROJECTS), 401)
    key = APIKey.objects.get(pk=body["id"])
    assert key.revoked_at is not None  # revoked, not deleted: the row stays for the audit trail


def test_key_of_inactive_user_is_refused() -> None:
    user = UserFactory()
    raw_key = create_key(user)["key"]
    type(user).objects.filter(pk=user.pk).update(is_active=False)

    assert_error(with_key(raw_key).get(PROJECTS), 401, "authentication_failed")


def test_user_cannot_revoke_another_users_key() -> None:
    victim = UserFactory()
    body = create_key(victim)

    response = client_for(UserFactory()).delete(f"/api/v1/auth/api-keys/{body['id']}")

    assert_error(response, 404, "not_found")
    assert APIKey.objects.get(pk=body["id"]).revoked_at is None
    assert with_key(body["key"]).get(PROJECTS).status_code == 200


def test_user_cannot_see_another_users_key() -> None:
    body = create_key(UserFactory())

    response = client_for(UserFactory()).get(f"/api/v1/auth/api-keys/{body['id']}")

    assert_error(response, 404, "not_found")


def test_last_used_at_is_touched_at_most_once_a_minute() -> None:
    raw_key = create_key(UserFactory())["key"]
    key = APIKey.objects.get()
    assert key.last_used_at is None

    with_key(raw_key).get(PROJECTS)
    key.refresh_from_db()
    first = key.last_used_at
    assert first is not None

    with_key(raw_key).get(PROJECTS)
    key.refresh_from_db()
    assert key.last_used_at == first

    two_minutes_ago = timezone.now() - timedelta(minutes=2)
    APIKey.objects.filter(pk=key.pk).update(last_used_at=two_minutes_ago)
    with_key(raw_key).get(PROJECTS)
    key.refresh_from_db()
    assert key.last_used_at > first


def test_key_authentication_query_count(django_assert_num_queries: Any) -> None:
    raw_key = create_key(UserFactory())["key"]

    # key joined to its user, then the conditional UPDATE of `last_used_at`
    with django_assert_num_queries(2):
        assert with_key(raw_key).get("/api/v1/auth/me").status_code == 200
    # within the resolution window: the key lookup only
    with django_assert_num_queries(1):
        assert with_key(raw_key).get("/api/v1/auth/me").status_code == 200


# --- the seed route: one key named "default" ------------------------------------------------


def test_seed_route_issues_a_default_key() -> None:
    user = UserFactory()

    response = client_for(user).post("/api/v1/auth/api-key")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "default"
    assert body["key"].startswith(services.API_KEY_PREFIX)
    assert with_key(body["key"]).get(PROJECTS).status_code == 200


def test_seed_route_second_post_revokes_the_first() -> None:
    user = UserFactory()
    client = client_for(user)
    first = client.post("/api/v1/auth/api-key").json()

    second = client.post("/api/v1/auth/api-key/").json()

    assert second["key"] != first["key"]
    assert_error(with_key(first["key"]).get(PROJECTS), 401, "authentication_failed")
    assert with_key(second["key"]).get(PROJECTS).status_code == 200
    assert APIKey.objects.active().filter(user=user, name="default").count() == 1


def test_seed_route_delete_revokes_the_default_key_only() -> None:
    user = UserFactory()
    client = client_for(user)
    default = client.post("/api/v1/auth/api-key").json()
    other = create_key(user, name="ci")

    response = client.delete("/api/v1/auth/api-key")

    assert response.status_code == 204
    assert_error(with_key(default["key"]).get(PROJECTS), 401)
    assert with_key(other["key"]).get(PROJECTS).status_code == 200


def test_seed_route_leaves_other_users_default_key_alone() -> None:
    neighbour = UserFactory()
    theirs = client_for(neighbour).post("/api/v1/auth/api-key").json()

    client_for(UserFactory()).post("/api/v1/auth/api-key")

    assert with_key(theirs["key"]).get(PROJECTS).status_code == 200


def test_seed_route_requires_authentication(api: APIClient) -> None:
    assert_error(api.post("/api/v1/auth/api-key"), 401, "not_authenticated")
