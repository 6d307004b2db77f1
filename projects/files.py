"""Files a project keeps: the bytes in the `files` storage (Django's storage API, see
STORAGES["files"]), a `File` row for each. Upload views, run steps (agents reading a file, HTTP
tools sending or saving one) and the retention job all go through these functions.

A run refers to a file by `{"file": "<id>"}`; `file_ref(file)` is what a step's output carries."""

from __future__ import annotations

import hashlib
import io
import posixpath
import unicodedata
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import IO, Any
from urllib.parse import quote

import filetype
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.base import File as DjangoFile
from django.core.files.storage import Storage, storages
from django.core.signing import BadSignature, SignatureExpired, TimestampSigner
from django.db import transaction
from django.http import FileResponse
from django.urls import reverse
from django.utils import timezone
from pypdf import PdfReader
from pypdf.errors import PyPdfError

from sparkops.audit import audit_record
from sparkops.errors import Forbidden, InvalidInput, NotFound

from .models import File, Project

CHUNK = 64 * 1024
# Text types told by their bytes (valid UTF-8 with no NUL) and their name's extension.
TEXT_TYPES = {
    ".txt": "text/plain",
    ".md": "text/markdown",
    ".csv": "text/csv",
    ".json": "application/json",
    ".html": "text/html",
    ".xml": "application/xml",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
}


def storage() -> Storage:
    return storages["files"]


def clean_name(name: str) -> str:
    """The file's display name: its last path component, no control characters, at most 255
    characters. Never used as a storage path (that is the file's id). Raises InvalidInput for a
    name that is empty once cleaned."""
    name = unicodedata.normalize("NFC", str(name or ""))
    name = posixpath.basename(name.replace("\\", "/"))
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    if name in {"", ".", ".."}:
        raise InvalidInput("The file needs a name.", errors={"name": ["The file needs a name."]})
    stem, dot, ext = name.rpartition(".")
    if len(name) > 255:
        name = (stem[: 254 - len(ext)] + dot + ext) if dot and len(ext) < 20 else name[:255]
    return name


def sniff(head: bytes, name: str) -> str:
    """The content type told by the first bytes (magic numbers), then, for text, by the name's
    extension; `application/octet-stream` when neither tells."""
    kind = filetype.guess(head)
    if kind is not None:
        return str(kind.mime)
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.start < len(head) - 4:  # not just a character cut at the end of the head
                return "application/octet-stream"
        ext = posixpath.splitext(name.lower())[1]
        return TEXT_TYPES.get(ext, "text/plain")
    return "application/octet-stream"


def file_save(
    *,
    project: Project,
    name: str,
    content: bytes | IO[bytes],
    uploaded_by: Any = None,
    source: str = File.Source.UPLOAD,
    run_id: Any = None,
    node_id: str = "",
    expires_at: Any = None,
) -> File:
    """Store `content` (bytes or a binary file object, read in chunks) as a new file of
    `project`. Raises InvalidInput when it is empty or larger than SPARKOPS_FILE_MAX_BYTES."""
    name = clean_name(name)
    stream: IO[bytes] = ContentFile(content) if isinstance(content, bytes) else content
    limit = int(settings.SPARKOPS_FILE_MAX_BYTES)
    digest, size = hashlib.sha256(), 0
    head = b""
    with _rewound(stream):
        while chunk := stream.read(CHUNK):
            size += len(chunk)
            if size > limit:
                detail = f"The file is larger than the limit of {limit} bytes."
                raise InvalidInput(detail, errors={"file": [detail]})
            if len(head) < 8192:
                head += chunk[: 8192 - len(head)]
            digest.update(chunk)
    if size == 0:
        raise InvalidInput("The file is empty.", errors={"file": ["The file is empty."]})
    run_days = int(settings.SPARKOPS_RUN_FILE_RETENTION_DAYS)
    if expires_at is None and source == File.Source.RUN and run_days > 0:
        expires_at = timezone.now() + timedelta(days=run_days)
    file_id = uuid.uuid4()
    path = f"files/{project.pk}/{file_id}"
    stored = storage().save(path, DjangoFile(stream))
    try:
        with transaction.atomic():
            return File.objects.create(
                id=file_id,
                project=project,
                name=name,
                content_type=sniff(head, name),
                size=size,
                checksum=digest.hexdigest(),
                path=stored,
                source=source,
                run_id=run_id,
                node_id=node_id,
                uploaded_by=uploaded_by,
                expires_at=expires_at,
            )
    except BaseException:
        storage().delete(stored)
        raise


class _rewound:
    """Read a stream to the end, then rewind it for the next reader."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream

    def __enter__(self) -> IO[bytes]:
        self.stream.seek(0)
        return self.stream

    def __exit__(self, *exc: object) -> None:
        self.stream.seek(0)


def file_open(file: File) -> IO[bytes]:
    """The file's bytes, as a binary file object to read (and close)."""
    return storage().open(file.path, "rb")


def file_read(file: File, *, limit: int | None = None) -> bytes:
    """At most `limit` bytes of the file (all when None)."""
    with file_open(file) as handle:
        return handle.read() if limit is None else handle.read(limit)


IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
TEXT_APPLICATION_TYPES = frozenset(
    {"application/json", "application/xml", "application/yaml", "application/x-yaml"}
)
PDF_TYPE = "application/pdf"


def is_text(content_type: str) -> bool:
    return content_type.startswith("text/") or content_type in TEXT_APPLICATION_TYPES


def file_text(file: File, *, max_chars: int, max_pages: int) -> str:
    """The text of a text file (UTF-8, undecodable bytes replaced) or a PDF (pypdf's
    extraction of its first `max_pages` pages), at most `max_chars` characters; what was cut is
    said at the end. Raises InvalidInput for another type or a PDF pypdf cannot read."""
    cut = ""
    if is_text(file.content_type):
        raw = file_read(file, limit=max_chars * 4 + 4)  # a character is at most 4 UTF-8 bytes
        text = raw.decode("utf-8", errors="replace")
        if len(raw) < file.size:
            text = text[:max_chars]
            cut = f"[truncated: the file has {file.size} bytes]"
    elif file.content_type == PDF_TYPE:
        text, cut = _pdf_text(file, max_pages)
    else:
        detail = f"File '{file.name}' ({file.content_type}) has no text to read."
        raise InvalidInput(detail, errors={"file": [detail]})
    if len(text) > max_chars:
        text = text[:max_chars]
        cut = cut or f"[truncated at {max_chars} characters]"
    return f"{text}\n{cut}" if cut else text


def _pdf_text(file: File, max_pages: int) -> tuple[str, str]:
    try:
        reader = PdfReader(io.BytesIO(file_read(file)))
        pages = reader.pages
        total = len(pages)
        texts = [pages[index].extract_text() or "" for index in range(min(total, max_pages))]
    except (PyPdfError, ValueError, KeyError, TypeError) as exc:
        detail = f"File '{file.name}' is not a PDF that can be read: {exc}"
        raise InvalidInput(detail, errors={"file": [detail]}) from None
    cut = f"[truncated: the first {max_pages} of {total} pages]" if total > max_pages else ""
    return "\n\n".join(texts), cut


def file_delete(file: File) -> None:
    """Delete the row now and the bytes once the transaction commits (`bytes_follow_rows`)."""
    file.delete()


def bytes_follow_rows(sender: Any, instance: File, using: str, **kwargs: Any) -> None:
    """post_delete of File, connected in ProjectsConfig.ready: however a row goes (this
    module, a project's delete through the API or the console, a cascade, a queryset delete),
    its bytes are deleted once that commits, and kept if it rolls back."""
    path = instance.path
    transaction.on_commit(lambda: storage().delete(path), using=using)


def file_ref(file: File) -> dict[str, Any]:
    """What a run's input or output holds for a file."""
    return {
        "file": str(file.pk),
        "name": file.name,
        "content_type": file.content_type,
        "size": file.size,
    }


# --- uploads, downloads, retention (the Files API, the admin and the beat job) ----------------


def type_allowed(content_type: str) -> bool:
    """Whether SPARKOPS_FILE_ALLOWED_TYPES admits `content_type` (exact types or `type/*`)."""
    major = content_type.split("/", 1)[0]
    for pattern in settings.SPARKOPS_FILE_ALLOWED_TYPES:
        pattern = pattern.strip().lower()
        if pattern in {"*", "*/*", content_type} or pattern == f"{major}/*":
            return True
    return False


def file_upload(
    *,
    project: Project,
    actor: Any,
    content: IO[bytes],
    name: str,
    expires_at: datetime | None = None,
) -> File:
    """An uploaded file: its type sniffed from the bytes must be one SPARKOPS_FILE_ALLOWED_TYPES
    admits (the client's Content-Type is never asked). Raises InvalidInput naming the field."""
    name = clean_name(name)
    with _rewound(content):
        head = content.read(8192)
    content_type = sniff(head, name)
    if head and not type_allowed(content_type):
        detail = f"Files of type {content_type} are not allowed."
        raise InvalidInput(detail, errors={"file": [detail]})
    with transaction.atomic():
        file = file_save(
            project=project,
            name=name,
            content=content,
            uploaded_by=actor,
            source=File.Source.UPLOAD,
            expires_at=expires_at,
        )
        # The bytes are stored before the row: if the rest of the transaction fails, drop them.
        path = file.path
        try:
            audit_record(
                actor=actor,
                project=project,
                action="file.upload",
                obj=file,
                changes={"name": file.name, "content_type": file.content_type, "size": file.size},
            )
        except BaseException:
            storage().delete(path)
            raise
    return file


@transaction.atomic
def file_remove(*, file: File, actor: Any) -> None:
    """Delete a file on a member's request (the row now, the bytes on commit), audited."""
    audit_record(actor=actor, project=file.project_id, action="file.delete", obj=file)
    file_delete(file)


def files_purge_expired(*, batch: int | None = None, now: datetime | None = None) -> int:
    """The retention job: delete files past their `expires_at`, rows and bytes, a batch per
    transaction (the bytes of each batch go once it commits). Returns how many were deleted."""
    batch = batch or int(settings.SPARKOPS_FILE_RETENTION_BATCH)
    now = now or timezone.now()
    deleted = 0
    while True:
        with transaction.atomic():
            # SKIP LOCKED: two beats (or a slow run and the next) share the work, never wait.
            rows = list(
                File.objects.filter(expires_at__lte=now)
                .order_by("expires_at")
                .select_for_update(skip_locked=True)
                .values_list("pk", flat=True)[:batch]
            )
            if not rows:
                return deleted
            File.objects.filter(pk__in=rows).delete()  # the bytes once this batch commits
        deleted += len(rows)
        if len(rows) < batch:
            return deleted


# --- signed download URLs ----------------------------------------------------------------------

_SIGNER_SALT = "sparkops.files.download"


def url_seconds() -> int:
    return int(settings.SPARKOPS_FILE_URL_SECONDS)


def download_token(file: File) -> str:
    """A token for the local signed route: the file id, signed with a timestamp."""
    return TimestampSigner(salt=_SIGNER_SALT).sign(str(file.pk))


def file_for_token(token: str) -> File:
    """The file a signed token names. A token that was not signed here is 404 (nothing said of
    what exists), an expired one a 403 saying so, a deleted file's a 404."""
    try:
        file_id = TimestampSigner(salt=_SIGNER_SALT).unsign(token, max_age=url_seconds())
    except SignatureExpired as exc:
        raise Forbidden("The download link has expired.", error_type="link_expired") from exc
    except BadSignature as exc:
        raise NotFound("Not found.") from exc
    try:
        return File.objects.get(pk=uuid.UUID(file_id))
    except (ValueError, File.DoesNotExist) as exc:
        raise NotFound("Not found.") from exc


def url_expires_at() -> datetime:
    return timezone.now() + timedelta(seconds=url_seconds())


def presigned_url(file: File) -> str | None:
    """The storage's own short-lived URL (S3: a presigned GET that also sets the download's
    Content-Type and Content-Disposition), or None for storages without one (local)."""
    store = storage()
    if not getattr(store, "querystring_auth", False):
        return None
    return str(
        store.url(  # type: ignore[call-arg]
            file.path,
            parameters={
                "ResponseContentType": file.content_type,
                "ResponseContentDisposition": content_disposition(file.name),
            },
            expire=url_seconds(),
        )
    )


def content_disposition(name: str) -> str:
    """`attachment` with an ASCII fallback `filename` and the exact name as RFC 5987/6266
    `filename*` (percent-encoded UTF-8), so no name can break out of the header."""
    fallback = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    fallback = (
        "".join(ch if ch.isprintable() and ch not in '"\\;%' else "_" for ch in fallback).strip()
        or "download"
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def download_response(file: File) -> FileResponse:
    """The file's bytes, streamed, with headers that make a browser save it, never render it
    (the API's download, its signed URL and the console's link)."""
    response = FileResponse(file_open(file), content_type=file.content_type)
    response["Content-Disposition"] = content_disposition(file.name)
    response["Content-Length"] = str(file.size)
    response["X-Content-Type-Options"] = "nosniff"
    response["Cache-Control"] = "private, no-store"
    # Even opened in a tab, an HTML or SVG file runs no script under this origin.
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


def file_resolve(
    *, project: Project, value: Any, where: str, detail: str = "Invalid file reference."
) -> File:
    """The file `{"file": "<id>"}` names in `project`, or InvalidInput keyed by `where` (the
    field: `input.doc`). A file of another project is not found, like one that never was."""
    file_id = value.get("file") if isinstance(value, dict) else None
    if not isinstance(file_id, str):
        problem = 'Must be a file reference: {"file": "<id>"}.'
        raise InvalidInput(detail, errors={where: [problem]})
    try:
        key = uuid.UUID(file_id)
    except ValueError:
        key = None
    found = File.objects.filter(pk=key, project=project).first() if key else None
    if found is None:
        problem = f"No file {file_id!r} in this project."
        raise InvalidInput(detail, errors={where: [problem]})
    return found


REF_KEYS = frozenset({"file", "name", "content_type", "size"})


def is_file_ref(value: Any) -> bool:
    """Whether `value` has the shape of file_ref(...): what a run's input or output holds."""
    if not isinstance(value, dict) or not value.keys() >= REF_KEYS:
        return False
    try:
        uuid.UUID(str(value["file"]))
    except ValueError:
        return False
    return True


def file_refs(value: Any) -> list[dict[str, Any]]:
    """Every file reference in a JSON value, in order (nested dicts and lists)."""
    found: list[dict[str, Any]] = []
    if is_file_ref(value):
        found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            found += file_refs(item)
    elif isinstance(value, list):
        for item in value:
            found += file_refs(item)
    return found


def file_content_path(file_id: Any) -> str:
    """The path that streams a file's bytes (the files API's `file-content` route)."""
    # The router takes both forms; links use the documented one, with its slash.
    return reverse("file-content", kwargs={"pk": str(file_id)}).rstrip("/") + "/"


def with_file_urls(value: Any, absolute: Callable[[str], str]) -> Any:
    """`value` with a `url` (`absolute(file_content_path(id))`) added to each file reference."""
    if is_file_ref(value):
        return {**value, "url": absolute(file_content_path(value["file"]))}
    if isinstance(value, dict):
        return {key: with_file_urls(item, absolute) for key, item in value.items()}
    if isinstance(value, list):
        return [with_file_urls(item, absolute) for item in value]
    return value
