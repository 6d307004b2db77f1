"""The Files API: multipart upload, list, metadata, delete, a streamed download and short-lived
signed URLs. Viewers read and download, developers and up upload and delete; outsiders 404."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler
from django.http import FileResponse, HttpRequest
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, permissions, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from sparkops.errors import InvalidInput
from sparkops.parsers import FormParser, MultiPartParser

from . import files
from .api import ProjectScopedGenericViewSet
from .files_serializers import FileSerializer, FileUploadSerializer, FileUrlSerializer
from .filters import FileFilter
from .models import File

# Any media type: the file's own, as sniffed from its bytes.
BINARY = {
    (200, "*/*"): OpenApiResponse(
        response=OpenApiTypes.BINARY,
        description="The file's bytes, streamed: `Content-Type` as sniffed from them, "
        "`Content-Disposition: attachment` (RFC 6266 `filename*`), `Content-Length`, "
        "`X-Content-Type-Options: nosniff`.",
    )
}
LINK_REFUSED = OpenApiResponse(description="The link has expired (JSON error `link_expired`).")


# Room in a request body for the multipart framing and the small fields beside the file.
FORM_SLACK = 64 * 1024


class UploadLimit(FileUploadHandler):
    """First of an upload's handlers: refuses a body that announces more than the file limit
    allows before a byte is read, and stops reading a file part the moment it passes
    SPARKOPS_FILE_MAX_BYTES, so an oversized upload is never spooled to disk whole."""

    def _refuse(self) -> None:
        limit = int(settings.SPARKOPS_FILE_MAX_BYTES)
        detail = f"The file is larger than the limit of {limit} bytes."
        raise InvalidInput(detail, errors={"file": [detail]})

    def handle_raw_input(self, *args: Any, **kwargs: Any) -> None:
        content_length = kwargs.get("content_length", args[2] if len(args) > 2 else None)
        if content_length and content_length > int(settings.SPARKOPS_FILE_MAX_BYTES) + FORM_SLACK:
            self._refuse()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > int(settings.SPARKOPS_FILE_MAX_BYTES):
            self._refuse()
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler (memory or temporary file) makes the file


@extend_schema(tags=["files"])
@extend_schema_view(
    list=extend_schema(summary="The files of your projects, newest first."),
    retrieve=extend_schema(summary="A file's metadata."),
    destroy=extend_schema(summary="Delete a file (its bytes go once the delete commits)."),
)
class FileViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    ProjectScopedGenericViewSet,
):
    """Files a project keeps: uploaded here, or written by a run's step."""

    queryset = File.objects.select_related("project", "uploaded_by")
    serializer_class = FileSerializer
    filterset_class = FileFilter
    search_fields = ["name"]
    ordering_fields = ["created_at", "name", "size", "expires_at"]
    ordering = ["-created_at", "-id"]
    parser_classes = [MultiPartParser, FormParser]
    lookup_value_regex = "[0-9a-fA-F-]{36}"

    def initialize_request(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Request:
        # Before anything reads the body (a session's CSRF check does): the size guard first.
        if request.method == "POST":
            request.upload_handlers.insert(0, UploadLimit(request))
        return super().initialize_request(request, *args, **kwargs)

    @extend_schema(
        summary="Upload a file (multipart/form-data).",
        description="A 400 names the field: `file` (missing, empty, larger than "
        "SPARKOPS_FILE_MAX_BYTES, a sniffed type SPARKOPS_FILE_ALLOWED_TYPES does not admit), "
        "`name`, `project`, `expires_at`, `retention_days`.",
        request={"multipart/form-data": FileUploadSerializer},
        responses={201: FileSerializer},
    )
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = FileUploadSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        data = body.validated_data
        self.check_project_role(data["project"])
        upload = data["file"]
        file = files.file_upload(
            project=data["project"],
            actor=request.user,
            content=upload,
            name=data.get("name") or upload.name,
            expires_at=data.get("expires_at"),
        )
        serializer = self.get_serializer(file)
        return Response(serializer.data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance: File) -> None:
        files.file_remove(file=instance, actor=self.request.user)

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        # A download answers in the file's own type whatever `Accept` says (errors in JSON).
        return super().perform_content_negotiation(request, force=force or self.action == "content")

    @extend_schema(summary="Download the file (streamed).", responses=BINARY)
    @action(detail=True, methods=["get"], filter_backends=[], url_name="content")
    def content(self, request: Request, pk: Any = None) -> FileResponse:
        return files.download_response(self.get_object())

    @extend_schema(
        summary="A short-lived signed URL that downloads the file without credentials.",
        responses={200: FileUrlSerializer},
    )
    @action(detail=True, methods=["get"], filter_backends=[], url_name="url")
    def url(self, request: Request, pk: Any = None) -> Response:
        file = self.get_object()
        expires_at = files.url_expires_at()
        url = files.presigned_url(file)
        if url is None:
            path = reverse("file-signed-content", kwargs={"token": files.download_token(file)})
            url = request.build_absolute_uri(path)
        return Response({"url": url, "expires_at": expires_at})


class SignedFileView(APIView):
    """The local storage's signed download: the token in the URL is the credential (a header
    would be ignored), valid SPARKOPS_FILE_URL_SECONDS."""

    authentication_classes: list[Any] = []
    permission_classes = [permissions.AllowAny]

    def perform_content_negotiation(self, request: Request, force: bool = False) -> Any:
        return super().perform_content_negotiation(request, force=True)

    @extend_schema(
        tags=["files"],
        summary="Download a file by a signed URL (from GET /files/{id}/url/).",
        auth=[],
        responses={**BINARY, 403: LINK_REFUSED},
    )
    def get(self, request: Request, token: str) -> FileResponse:
        return files.download_response(files.file_for_token(token))
