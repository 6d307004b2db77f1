from __future__ import annotations

import io
import logging

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command

from conftest import client_for
from projects import crypto, services
from projects.models import Secret
from projects.secrets import SecretBag

pytestmark = pytest.mark.django_db

URL = "/api/v1/secrets/"
VALUE = "sk-live-very-secret-value-123"


def create(cast, who="admin", name="OPENAI_KEY", value=VALUE):
    return cast.client(who).post(
        URL, {"project": str(cast.project.pk), "name": name, "value": value}, format="json"
    )


def test_admin_creates_and_lists_without_value(cast):
    response = create(cast)
    assert response.status_code == 201, response.json()
    assert "value" not in response.json()
    listing = cast.client("admin").get(URL, {"project": str(cast.project.pk)})
    assert listing.status_code == 200
    row = listing.json()["results"][0]
    assert row["name"] == "OPENAI_KEY"
    assert set(row) >= {"id", "name", "created_at", "updated_at", "last_used_at"}
    assert VALUE not in listing.content.decode()


def test_value_is_encrypted_at_rest(cast):
    create(cast)
    secret = Secret.objects.get()
    assert VALUE not in secret.value_encrypted
    assert crypto.decrypt(secret.value_encrypted) == VALUE
    dump = io.StringIO()
    call_command("dumpdata", "projects.secret", stdout=dump)
    assert VALUE not in dump.getvalue()


def test_developer_can_see_names_but_not_manage(cast):
    create(cast)
    assert cast.client("developer").get(URL).status_code == 200
    assert create(cast, who="developer", name="OTHER").status_code == 403
    secret = Secret.objects.get()
    assert cast.client("developer").delete(f"{URL}{secret.pk}/").status_code == 403


def test_viewer_cannot_read_secret_names(cast):
    create(cast)
    assert cast.client("viewer").get(URL).json()["count"] == 0
    secret = Secret.objects.get()
    assert cast.client("viewer").get(f"{URL}{secret.pk}/").status_code == 404


def test_duplicate_name_is_409_and_replace_changes_value(cast):
    create(cast)
    assert create(cast).status_code == 409
    secret = Secret.objects.get()
    response = cast.client("admin").put(
        f"{URL}{secret.pk}/value", {"value": "new-value-456"}, format="json"
    )
    assert response.status_code == 200
    assert "value" not in response.json()
    secret.refresh_from_db()
    assert crypto.decrypt(secret.value_encrypted) == "new-value-456"


def test_invalid_name_is_field_error(cast):
    response = create(cast, name="has space")
    assert response.status_code == 400
    assert "name" in response.json()["errors"]


def test_secret_in_project_of_outsider_is_not_creatable(cast):
    response = cast.client("outsider").post(
        URL, {"project": str(cast.project.pk), "name": "X", "value": "y"}, format="json"
    )
    assert response.status_code == 400
    assert "project" in response.json()["errors"]


def test_bag_decrypts_lazily_records_use_and_redacts(cast):
    create(cast)
    bag = SecretBag(cast.project)
    assert "OPENAI_KEY" in bag
    assert bag.used == {}
    assert bag["OPENAI_KEY"] == VALUE
    assert Secret.objects.get().last_used_at is not None
    assert bag.redact({"h": [f"Bearer {VALUE}"]}) == {"h": ["Bearer ***"]}
    with pytest.raises(Exception, match="MISSING"):
        bag["MISSING"]


# Transactional: the command locks every secret row, which needs a transaction of its own.
@pytest.mark.django_db(transaction=True)
def test_rotate_secrets_re_encrypts_with_the_new_primary_key(cast, settings):
    create(cast)
    old_key = Fernet.generate_key().decode()
    settings.SPARKOPS_SECRET_KEYS = [old_key]
    services.secret_set(project=cast.project, actor=cast.admin, name="OPENAI_KEY", value=VALUE)
    before = Secret.objects.get().value_encrypted
    new_key = Fernet.generate_key().decode()
    settings.SPARKOPS_SECRET_KEYS = [new_key, old_key]
    out = io.StringIO()
    call_command("rotate_secrets", stdout=out)
    assert "1" in out.getvalue()
    after = Secret.objects.get().value_encrypted
    assert after != before
    settings.SPARKOPS_SECRET_KEYS = [new_key]  # the old key is gone: still readable
    assert crypto.decrypt(after) == VALUE


def test_secret_value_never_logged(cast, caplog):
    caplog.set_level(logging.DEBUG)
    create(cast)
    assert VALUE not in caplog.text


def test_admin_pages_never_show_values(cast, client):
    from accounts.tests.factories import UserFactory

    create(cast)
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    secret = Secret.objects.get()
    for url in (
        "/admin/projects/secret/",
        f"/admin/projects/secret/{secret.pk}/change/",
        "/admin/projects/secret/add/",
    ):
        page = client.get(url)
        assert page.status_code == 200, url
        assert VALUE not in page.content.decode()
        assert secret.value_encrypted not in page.content.decode()
    response = client.post(
        "/admin/projects/secret/add/",
        {"project": str(cast.project.pk), "name": "FROM_ADMIN", "new_value": "admin-value-789"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    created = Secret.objects.get(name="FROM_ADMIN")
    assert crypto.decrypt(created.value_encrypted) == "admin-value-789"


def test_secret_list_query_count(cast, django_assert_num_queries):
    client = client_for(cast.admin)
    create(cast)
    # auth user, count, page of secrets
    with django_assert_num_queries(3):
        client.get(URL)
    for i in range(5):
        create(cast, name=f"S{i}")
    with django_assert_num_queries(3):
        assert client.get(URL).json()["count"] == 6
