"""The Files API end to end, on both storages: the local filesystem and S3 (moto's server over
HTTP). Upload, list, metadata, streamed download, signed URL fetched by a real HTTP client with
no credentials, delete; bad uploads answer 400s that name the field."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from django.core import signing
from django.db import connection
from rest_framework_simplejwt.tokens import AccessToken

from conftest import Cast
from projects import files
from projects.models import File
from sparkops.errors import InvalidInput
from sparkops.testing.s3 import S3Server, s3_server

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452") + b"\0" * 64
TEXT = "Résumé of the meeting\nline two\n".encode()


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


class Store:
    """Where the test's files live, and how to list what the storage holds."""

    def __init__(self, kind: str, settings: Any, tmp_path: Any, s3: S3Server | None) -> None:
        self.kind = kind
        self.s3 = s3
        self.tmp_path = tmp_path
        if s3 is not None:
            self.bucket = s3.create_bucket()
            config = s3.storage_config(self.bucket)
        else:
            config = {
                "BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": str(tmp_path)},
            }
        # Django's setting_changed receiver (django.test.signals) resets the storages cache.
        settings.STORAGES = {**settings.STORAGES, "files": config}

    def paths(self) -> set[str]:
        if self.s3 is not None:
            return set(self.s3.keys(self.bucket))
        return {str(p.relative_to(self.tmp_path)) for p in self.tmp_path.rglob("*") if p.is_file()}


@pytest.fixture(params=["local", "s3"])
def store(request: Any, settings: Any, tmp_path: Any) -> Store:
    s3 = request.getfixturevalue("s3") if request.param == "s3" else None
    return Store(request.param, settings, tmp_path, s3)


@pytest.fixture
def local(settings: Any, tmp_path: Any) -> Store:
    return Store("local", settings, tmp_path, None)


def upload(client: Any, project: Any, filename: str, content: bytes, **extra: Any) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return client.post(
        "/api/v1/files/",
        {"project": str(project.pk), "file": SimpleUploadedFile(filename, content), **extra},
        format="multipart",
    )


@pytest.mark.django_db(transaction=True)
def test_upload_download_signed_url_and_delete_over_http(
    cast: Cast, store: Store, live_server: Any
) -> None:
    """The whole path through a real server and a real HTTP client, in real transactions."""
    api = f"{live_server.url}/api/v1"
    auth = {"Authorization": f"Bearer {AccessToken.for_user(cast.developer)}"}
    with httpx.Client(timeout=30) as http:
        response = http.post(
            f"{api}/files/",
            headers=auth,
            data={"project": str(cast.project.pk)},
            files={"file": ("photo.png", PNG, "text/plain")},  # the client's type is ignored
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["name"] == "photo.png"
        assert body["content_type"] == "image/png"
        assert body["size"] == len(PNG)
        assert body["checksum"] == hashlib.sha256(PNG).hexdigest()
        assert body["uploaded_by"] == cast.developer.email
        assert body["source"] == "upload"
        stored = File.objects.get(pk=body["id"])
        assert store.paths() == {stored.path}

        download = http.get(body["content_url"], headers=auth)
        assert download.status_code == 200
        assert download.content == PNG
        assert download.headers["content-type"] == "image/png"
        assert download.headers["content-length"] == str(len(PNG))
        assert download.headers["x-content-type-options"] == "nosniff"
        assert download.headers["content-security-policy"] == "default-src 'none'; sandbox"
        assert download.headers["content-disposition"] == (
            "attachment; filename=\"photo.png\"; filename*=UTF-8''photo.png"
        )

        signed = http.get(f"{api}/files/{body['id']}/url/", headers=auth)
        assert signed.status_code == 200
        link = signed.json()
        if store.kind == "s3":
            assert link["url"].startswith(store.s3.endpoint_url)  # type: ignore[union-attr]
            assert "X-Amz-Expires=300" in link["url"]  # SPARKOPS_FILE_URL_SECONDS
        else:
            assert link["url"].startswith(f"{api}/files/signed/")
        fetched = http.get(link["url"])  # no credentials
        assert fetched.status_code == 200
        assert fetched.content == PNG
        assert fetched.headers["content-type"] == "image/png"
        assert "attachment" in fetched.headers["content-disposition"]

        deleted = http.delete(f"{api}/files/{body['id']}/", headers=auth)
        assert deleted.status_code == 204
        assert not File.objects.filter(pk=body["id"]).exists()
        assert store.paths() == set()
        assert http.get(body["content_url"], headers=auth).status_code == 404


def test_list_filters_and_roles(cast: Cast, store: Store) -> None:
    png = upload(cast.client("developer"), cast.project, "a.png", PNG)
    assert png.status_code == 201, png.content
    text = upload(cast.client("owner"), cast.project, "notes.txt", TEXT, retention_days=2)
    assert text.status_code == 201, text.content
    assert text.json()["expires_at"] is not None
    viewer = cast.client("viewer")
    listing = viewer.get("/api/v1/files/").json()
    assert listing["count"] == 2
    assert [f["name"] for f in listing["results"]] == ["notes.txt", "a.png"]
    by_type = viewer.get("/api/v1/files/", {"content_type": "image/*"}).json()
    assert [f["name"] for f in by_type["results"]] == ["a.png"]
    exact = viewer.get("/api/v1/files/", {"content_type": "text/plain"}).json()
    assert [f["name"] for f in exact["results"]] == ["notes.txt"]
    assert viewer.get("/api/v1/files/", {"name": "NOTE"}).json()["count"] == 1
    assert viewer.get("/api/v1/files/", {"source": "run"}).json()["count"] == 0
    assert viewer.get("/api/v1/files/", {"project": str(cast.project.pk)}).json()["count"] == 2
    assert viewer.get("/api/v1/files/", {"run": "not-a-uuid"}).status_code == 400
    # Viewers read and download, cannot upload or delete; outsiders see nothing.
    file_id = png.json()["id"]
    assert viewer.get(f"/api/v1/files/{file_id}/content/").status_code == 200
    refused = upload(viewer, cast.project, "v.png", PNG)
    assert refused.status_code == 403
    assert viewer.delete(f"/api/v1/files/{file_id}/").status_code == 403
    outsider = cast.client("outsider")
    assert outsider.get("/api/v1/files/").json()["count"] == 0
    assert outsider.get(f"/api/v1/files/{file_id}/").status_code == 404
    not_member = upload(outsider, cast.project, "x.png", PNG)
    assert not_member.status_code == 400
    assert "project" in not_member.json()["errors"]
    assert File.objects.count() == 2


def test_file_list_query_count(cast: Cast, local: Store, django_assert_num_queries: Any) -> None:
    client = cast.client("viewer")
    for index in range(2):
        files.file_save(
            project=cast.project, name=f"{index}.txt", content=b"x", uploaded_by=cast.owner
        )
    # user, the caller's project ids, count, the page (with project and uploader joined)
    with django_assert_num_queries(4):
        assert client.get("/api/v1/files/").json()["count"] == 2
    for index in range(5):
        files.file_save(
            project=cast.project, name=f"m{index}.txt", content=b"x", uploaded_by=cast.owner
        )
    with django_assert_num_queries(4):
        assert client.get("/api/v1/files/").json()["count"] == 7


def test_names_are_cleaned_never_paths(cast: Cast, local: Store) -> None:
    client = cast.client("developer")
    for given, kept in [
        ("../../etc/passwd", "passwd"),
        ("a/b", "b"),
        ("..\\..\\win.ini", "win.ini"),
        ("bell\x07tab\tname.txt", "belltabname.txt"),
        ("ünïcode rapport.txt", "ünïcode rapport.txt"),
    ]:
        response = upload(client, cast.project, "upload.txt", TEXT, name=given)
        assert response.status_code == 201, (given, response.content)
        assert response.json()["name"] == kept
        stored = File.objects.get(pk=response.json()["id"])
        assert stored.path == f"files/{cast.project.pk}/{stored.pk}"
    assert {
        str(p.relative_to(local.tmp_path)) for p in local.tmp_path.rglob("*") if p.is_file()
    } == set(File.objects.values_list("path", flat=True))


def test_a_non_ascii_name_downloads_with_a_safe_header(cast: Cast, local: Store) -> None:
    client = cast.client("developer")
    file_id = upload(client, cast.project, "x.txt", TEXT, name='naïve "quote"; x.txt').json()["id"]
    response = client.get(f"/api/v1/files/{file_id}/content/")
    assert response["Content-Disposition"] == (
        'attachment; filename="naive _quote__ x.txt"; '
        "filename*=UTF-8''na%C3%AFve%20%22quote%22%3B%20x.txt"
    )
    assert response["Content-Type"] == "text/plain"
    assert b"".join(response.streaming_content) == TEXT


@pytest.mark.parametrize(
    "transactional",
    [
        pytest.param(False, marks=pytest.mark.django_db),
        pytest.param(True, marks=pytest.mark.django_db(transaction=True)),
    ],
)
def test_bad_uploads_answer_400_naming_the_field(
    cast: Cast, local: Store, settings: Any, transactional: bool
) -> None:
    """Also under real transactions: a missing atomic once hid a 500 here."""
    assert connection.in_atomic_block is not transactional  # the test's own transaction
    settings.SPARKOPS_FILE_MAX_BYTES = 100
    client = cast.client("developer")
    cases = [
        (upload(client, cast.project, "big.txt", b"x" * 101), "file", "larger than the limit"),
        (upload(client, cast.project, "empty.txt", b""), "file", "empty"),
        (
            client.post("/api/v1/files/", {"project": str(cast.project.pk)}, format="multipart"),
            "file",
            "No file",
        ),
        (upload(client, cast.project, "x.bin", b"\x00\x01\x02\xff" * 4), "file", "not allowed"),
        (upload(client, cast.project, "x.txt", b"hi", name="\x01\x02"), "name", "needs a name"),
        (upload(client, cast.project, "x.txt", b"hi", name="a\x00b"), "name", "NUL"),
        (upload(client, cast.project, "x.txt", b"hi", name="../"), "name", "needs a name"),
        (
            upload(client, cast.project, "x.txt", b"hi", expires_at="2000-01-01T00:00:00Z"),
            "expires_at",
            "future",
        ),
        (upload(client, cast.project, "x.txt", b"hi", expires_at="soon"), "expires_at", ""),
        (
            upload(
                client,
                cast.project,
                "x.txt",
                b"hi",
                expires_at="2999-01-01T00:00:00Z",
                retention_days=3,
            ),
            "retention_days",
            "either",
        ),
        (upload(client, cast.project, "x.txt", b"hi", retention_days=0), "retention_days", ""),
    ]
    for response, field, words in cases:
        assert response.status_code == 400, (field, response.content)
        body = response.json()
        assert body["type"] == "validation_error", body
        assert field in body["errors"], body
        assert words.lower() in str(body["errors"][field]).lower(), body
    assert not File.objects.exists()
    assert not [p for p in local.tmp_path.rglob("*") if p.is_file()]


def test_allowed_types_is_a_setting(cast: Cast, local: Store, settings: Any) -> None:
    client = cast.client("developer")
    settings.SPARKOPS_FILE_ALLOWED_TYPES = ["image/png"]
    assert upload(client, cast.project, "a.png", PNG).status_code == 201
    refused = upload(client, cast.project, "a.txt", TEXT)
    assert refused.status_code == 400
    assert refused.json()["errors"]["file"] == ["Files of type text/plain are not allowed."]
    settings.SPARKOPS_FILE_ALLOWED_TYPES = ["application/octet-stream"]
    assert upload(client, cast.project, "x.bin", b"\x00\x01\xff" * 3).status_code == 201


def test_signed_links_refuse_tampering_and_expiry(cast: Cast, local: Store, settings: Any) -> None:
    client = cast.client("viewer")
    file = files.file_save(project=cast.project, name="a.txt", content=TEXT)
    link = client.get(f"/api/v1/files/{file.pk}/url/").json()
    assert link["url"].startswith("http://testserver/api/v1/files/signed/")
    anonymous = type(client)()
    path = link["url"].removeprefix("http://testserver")
    assert anonymous.get(path).status_code == 200
    # A forged signature, another file's id under this signature, a garbled token: 404.
    token = path.rstrip("/").rsplit("/", 1)[1]
    other = files.file_save(project=cast.project, name="b.txt", content=TEXT)
    for bad in (token[:-2] + "xx", token.replace(str(file.pk), str(other.pk)), "garbage"):
        response = anonymous.get(f"/api/v1/files/signed/{bad}/")
        assert response.status_code == 404, bad
        assert response.json()["type"] == "not_found"
    # Signed long enough ago: expired, 403 saying so.
    settings.SPARKOPS_FILE_URL_SECONDS = 60
    signer = signing.TimestampSigner(salt=files._SIGNER_SALT)
    old = signer.sign(str(file.pk))
    stale = signing.TimestampSigner(salt=files._SIGNER_SALT)
    stale.timestamp = lambda: signing.b62_encode(int(time.time()) - 120)  # type: ignore[method-assign]
    old = stale.sign(str(file.pk))
    expired = anonymous.get(f"/api/v1/files/signed/{old}/")
    assert expired.status_code == 403
    assert expired.json()["type"] == "link_expired"
    # A deleted file's link is dead.
    files.file_delete(file)
    assert anonymous.get(path).status_code == 404


def _files_storage_under(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        "print(json.dumps(settings.STORAGES['files']))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "sparkops.settings", "SECRET_KEY": "x", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_s3_backend_is_configured_from_the_environment() -> None:
    done = _files_storage_under(
        {
            "SPARKOPS_FILES_BACKEND": "s3",
            "AWS_STORAGE_BUCKET_NAME": "team-files",
            "AWS_S3_ENDPOINT_URL": "http://minio.internal:9000",
            "AWS_S3_REGION_NAME": "eu-west-1",
            "AWS_S3_ACCESS_KEY_ID": "key-id",
            "AWS_S3_SECRET_ACCESS_KEY": "key-secret",
            "SPARKOPS_FILE_URL_SECONDS": "120",
        }
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout.strip().splitlines()[-1])
    assert config["BACKEND"] == "storages.backends.s3.S3Storage"
    assert config["OPTIONS"] == {
        "bucket_name": "team-files",
        "endpoint_url": "http://minio.internal:9000",
        "region_name": "eu-west-1",
        "access_key": "key-id",
        "secret_key": "key-secret",
        "querystring_auth": True,
        "querystring_expire": 120,
        "signature_version": "s3v4",
        "default_acl": None,
        "file_overwrite": True,
    }
    refused = _files_storage_under({"SPARKOPS_FILES_BACKEND": "ftp"})
    assert refused.returncode != 0
    assert "SPARKOPS_FILES_BACKEND must be `local` or `s3`" in refused.stderr


def test_an_oversized_upload_is_refused_before_its_body_is_read(
    cast: Cast, local: Store, settings: Any
) -> None:
    """A body announcing more than the limit allows is refused unread (the test's body is small:
    without the guard the parser goes on to read what was announced); a file part is cut off as
    soon as it passes the limit."""
    from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart

    from projects.files_views import UploadLimit

    settings.SPARKOPS_FILE_MAX_BYTES = 1000
    client = cast.client("developer")
    body = encode_multipart(
        BOUNDARY, {"project": str(cast.project.pk), "file": _named(b"small", "s.txt")}
    )
    fine = client.generic("POST", "/api/v1/files/", body, content_type=MULTIPART_CONTENT)
    assert fine.status_code == 201, fine.content
    announced = client.generic(
        "POST",
        "/api/v1/files/",
        body,
        content_type=MULTIPART_CONTENT,
        CONTENT_LENGTH=str(1000 + 64 * 1024 + 1),
    )
    assert announced.status_code == 400, announced.content
    assert announced.json()["errors"]["file"] == [
        "The file is larger than the limit of 1000 bytes."
    ]
    assert File.objects.count() == 1
    guard = UploadLimit()
    assert guard.receive_data_chunk(b"x" * 600, 0) == b"x" * 600
    with pytest.raises(InvalidInput):
        guard.receive_data_chunk(b"x" * 600, 600)


def _named(content: bytes, name: str) -> Any:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content)
