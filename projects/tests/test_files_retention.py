"""The retention job deletes expired files (rows and bytes, in batches), and deleting a project
deletes its files' bytes once the delete commits."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from conftest import Cast
from projects import files, services, tasks
from projects.models import File, Project


@pytest.fixture
def folder(local_files: Any) -> Any:
    return local_files


def on_disk(folder: Any) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.django_db(transaction=True)
def test_the_retention_job_deletes_expired_files_in_batches(
    cast: Cast, folder: Any, settings: Any
) -> None:
    now = timezone.now()
    expired = [
        files.file_save(
            project=cast.project, name=f"old{i}.txt", content=b"x", expires_at=now - timedelta(1)
        )
        for i in range(5)
    ]
    future = files.file_save(
        project=cast.project, name="later.txt", content=b"x", expires_at=now + timedelta(1)
    )
    kept = files.file_save(project=cast.other_project, name="kept.txt", content=b"x")
    assert len(on_disk(folder)) == 7
    settings.SPARKOPS_FILE_RETENTION_BATCH = 2  # three batches: 2, 2, 1
    assert tasks.files_purge_expired() == 5  # the beat task, run in this process
    assert set(File.objects.values_list("pk", flat=True)) == {future.pk, kept.pk}
    assert on_disk(folder) == {future.path, kept.path}
    assert not any(File.objects.filter(pk=f.pk).exists() for f in expired)
    assert files.files_purge_expired() == 0
    # Once its time comes, the other one goes too.
    assert files.files_purge_expired(now=now + timedelta(days=2)) == 1
    assert on_disk(folder) == {kept.path}


@pytest.mark.django_db(transaction=True)
def test_a_failed_batch_keeps_its_bytes(cast: Cast, folder: Any) -> None:
    old = files.file_save(
        project=cast.project,
        name="old.txt",
        content=b"x",
        expires_at=timezone.now() - timedelta(1),
    )

    class Stop(Exception):
        pass

    with pytest.raises(Stop), transaction.atomic():
        assert files.files_purge_expired() == 1
        raise Stop
    # Rolled back: the row is back, and the bytes were never deleted (on_commit never ran).
    assert File.objects.filter(pk=old.pk).exists()
    assert on_disk(folder) == {old.path}


def test_the_retention_job_is_on_the_beat_schedule(settings: Any) -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["files-retention"]
    assert entry["task"] == tasks.files_purge_expired.name == "projects.files_purge_expired"
    assert settings.CELERY_TASK_ROUTES[entry["task"]] == {"queue": "orchestration"}


@pytest.mark.django_db(transaction=True)
def test_deleting_a_project_deletes_its_files(cast: Cast, folder: Any) -> None:
    mine = [files.file_save(project=cast.project, name=f"{i}.txt", content=b"x") for i in range(3)]
    other = files.file_save(project=cast.other_project, name="other.txt", content=b"x")
    # Files are content: without ?cascade=true the project is not deleted.
    refused = cast.client("owner").delete(f"/api/v1/projects/{cast.project.pk}/")
    assert refused.status_code == 409
    assert refused.json()["counts"]["files"] == 3
    assert on_disk(folder) == {f.path for f in [*mine, other]}
    response = cast.client("owner").delete(f"/api/v1/projects/{cast.project.pk}/?cascade=true")
    assert response.status_code == 204, response.content
    assert not Project.objects.filter(pk=cast.project.pk).exists()
    assert list(File.objects.values_list("pk", flat=True)) == [other.pk]
    assert on_disk(folder) == {other.path}


@pytest.mark.django_db(transaction=True)
def test_a_project_delete_that_rolls_back_keeps_the_bytes(cast: Cast, folder: Any) -> None:
    file = files.file_save(project=cast.project, name="a.txt", content=b"x")

    class Stop(Exception):
        pass

    with pytest.raises(Stop), transaction.atomic():
        services.project_delete(project=cast.project, actor=cast.owner, cascade=True)
        raise Stop
    assert File.objects.filter(pk=file.pk).exists()
    assert on_disk(folder) == {file.path}


@pytest.mark.django_db(transaction=True)
def test_a_project_deleted_in_the_console_takes_its_files_bytes(cast: Cast, folder: Any) -> None:
    from django.test import Client

    from accounts.tests.factories import UserFactory

    file = files.file_save(project=cast.project, name="a.txt", content=b"x")
    operator = Client()
    operator.force_login(UserFactory(is_staff=True, is_superuser=True))
    response = operator.post(f"/admin/projects/project/{cast.project.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not File.objects.filter(pk=file.pk).exists()
    assert on_disk(folder) == set()


@pytest.mark.django_db(transaction=True)
def test_files_runs_write_expire_after_the_run_file_retention(
    cast: Cast, folder: Any, settings: Any
) -> None:
    """SPARKOPS_RUN_FILE_RETENTION_DAYS dates a run's files (not uploads); the retention job
    then removes them like any expired file. 0, the default, keeps them."""
    kept = files.file_save(project=cast.project, name="a.txt", content=b"x", source="run")
    assert kept.expires_at is None
    settings.SPARKOPS_RUN_FILE_RETENTION_DAYS = 7
    before = timezone.now()
    written = files.file_save(project=cast.project, name="b.txt", content=b"x", source="run")
    upload = files.file_save(project=cast.project, name="c.txt", content=b"x")
    assert upload.expires_at is None
    assert written.expires_at is not None
    assert before + timedelta(days=7) <= written.expires_at <= timezone.now() + timedelta(days=7)
    assert files.files_purge_expired(now=before + timedelta(days=8)) == 1
    assert set(File.objects.values_list("pk", flat=True)) == {kept.pk, upload.pk}
    assert on_disk(folder) == {kept.path, upload.path}
