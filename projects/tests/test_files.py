"""The file store runs and uploads share: bytes in STORAGES["files"], a row per file, the
content type told by the bytes, the client's name never a path."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from projects import files
from projects.models import File
from sparkops.errors import InvalidInput

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + b"\0" * 32


@pytest.fixture(autouse=True)
def _local(local_files: Any) -> Any:
    return local_files


@pytest.mark.django_db(transaction=True)
def test_a_saved_file_reads_back_and_is_deleted_on_commit(cast: Any, local_files: Any) -> None:
    stored = files.file_save(
        project=cast.project, name="../../etc/pic.png", content=PNG, uploaded_by=cast.owner
    )
    assert (stored.name, stored.content_type, stored.size) == ("pic.png", "image/png", len(PNG))
    assert stored.path == f"files/{cast.project.pk}/{stored.pk}"
    assert files.file_read(stored) == PNG
    assert files.file_read(stored, limit=8) == PNG[:8]
    assert files.file_ref(stored) == {
        "file": str(stored.pk),
        "name": "pic.png",
        "content_type": "image/png",
        "size": len(PNG),
    }
    on_disk = local_files / stored.path
    assert on_disk.read_bytes() == PNG
    with transaction.atomic():
        files.file_delete(stored)
        assert on_disk.exists()  # the bytes go once the row's delete is committed
    assert not on_disk.exists()
    assert not File.objects.filter(pk=stored.pk).exists()


@pytest.mark.parametrize(
    ("name", "content", "content_type"),
    [
        ("notes.md", "héllo".encode(), "text/markdown"),
        ("data.csv", b"a,b\n1,2\n", "text/csv"),
        ("report.png", b"plain text pretending", "text/plain"),  # the bytes decide
        ("blob", b"\x00\x01\x02\xff" * 10, "application/octet-stream"),
        ("doc.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "application/pdf"),
    ],
)
def test_the_content_type_is_told_by_the_bytes(
    cast: Any, name: str, content: bytes, content_type: str
) -> None:
    assert files.file_save(project=cast.project, name=name, content=content).content_type == (
        content_type
    )


@pytest.mark.parametrize(
    ("name", "content", "field"),
    [
        ("empty.txt", b"", "file"),
        ("big.txt", b"x" * 101, "file"),
        ("../", b"x", "name"),
        ("\x00\x01", b"x", "name"),
        ("", b"x", "name"),
    ],
)
def test_bad_files_are_refused_and_nothing_is_stored(
    cast: Any, settings: Any, local_files: Any, name: str, content: bytes, field: str
) -> None:
    settings.SPARKOPS_FILE_MAX_BYTES = 100
    with pytest.raises(InvalidInput) as refused:
        files.file_save(project=cast.project, name=name, content=content)
    assert refused.value.errors is not None and field in refused.value.errors
    assert not File.objects.exists()
    assert not any(local_files.rglob("*"))


def test_a_long_name_keeps_its_extension() -> None:
    name = files.clean_name("a" * 300 + ".pdf")
    assert len(name) == 255 and name.endswith(".pdf")
