"""The operator console's files: read-only rows with a download link, scoped for staff as the
API is (another project's file is not found, a viewer cannot delete), delete through the
service (audited, bytes on commit)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.tests.factories import UserFactory
from conftest import Cast
from policies.models import AuditEvent
from projects import files
from projects.models import File, Role
from projects.tests.factories import MembershipFactory

ADMIN = "/admin/projects/file"
PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + b"\0" * 16


def login(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def staff(cast: Cast, role: str) -> Client:
    user = UserFactory(is_staff=True)
    MembershipFactory(project=cast.project, user=user, role=role)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="projects"))
    return login(user)


@pytest.mark.django_db
def test_rows_are_read_only_and_download(cast: Cast) -> None:
    file = files.file_save(
        project=cast.project, name="pic.png", content=PNG, uploaded_by=cast.owner
    )
    operator = login(UserFactory(is_staff=True, is_superuser=True))
    listing = operator.get(f"{ADMIN}/")
    assert listing.status_code == 200
    html = listing.content.decode()
    assert "pic.png" in html and f"{ADMIN}/{file.pk}/download/" in html
    assert operator.get(f"{ADMIN}/?q=pic").status_code == 200
    page = operator.get(f"{ADMIN}/{file.pk}/change/")
    assert page.status_code == 200
    body = page.content.decode()
    assert 'name="_save"' not in body and file.checksum in body
    assert operator.get(f"{ADMIN}/add/").status_code == 403
    download = operator.get(f"{ADMIN}/{file.pk}/download/")
    assert download.status_code == 200
    assert b"".join(download.streaming_content) == PNG
    assert download["Content-Type"] == "image/png"
    assert download["Content-Disposition"].startswith('attachment; filename="pic.png"')
    assert download["X-Content-Type-Options"] == "nosniff"


@pytest.mark.django_db
def test_staff_see_only_their_projects_files(cast: Cast) -> None:
    mine = files.file_save(project=cast.project, name="mine.txt", content=b"x")
    theirs = files.file_save(project=cast.other_project, name="theirs.txt", content=b"y")
    viewer = staff(cast, Role.VIEWER)
    rows = list(viewer.get(f"{ADMIN}/").context["cl"].queryset)
    assert rows == [mine]
    assert viewer.get(f"{ADMIN}/{theirs.pk}/download/").status_code == 404
    assert viewer.get(f"{ADMIN}/{theirs.pk}/change/").status_code == 302  # "doesn't exist"
    assert viewer.get(f"{ADMIN}/{mine.pk}/download/").status_code == 200
    # A viewer cannot delete; a developer can (through the service: audited).
    assert viewer.post(f"{ADMIN}/{mine.pk}/delete/", {"post": "yes"}).status_code == 403
    assert File.objects.filter(pk=mine.pk).exists()
    developer = staff(cast, Role.DEVELOPER)
    response = developer.post(f"{ADMIN}/{mine.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not File.objects.filter(pk=mine.pk).exists()
    assert AuditEvent.objects.filter(action="file.delete", object_id=str(mine.pk)).exists()


@pytest.mark.django_db(transaction=True)
def test_a_bulk_delete_removes_the_bytes(cast: Cast, settings: Any, tmp_path: Any) -> None:
    settings.STORAGES = {
        **settings.STORAGES,
        "files": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path)},
        },
    }
    made = [files.file_save(project=cast.project, name=f"{i}.txt", content=b"x") for i in range(2)]
    operator = login(UserFactory(is_staff=True, is_superuser=True))
    response = operator.post(
        f"{ADMIN}/",
        {"action": "delete_selected", "_selected_action": [str(f.pk) for f in made], "post": "yes"},
    )
    assert response.status_code == 302
    assert not File.objects.exists()
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
