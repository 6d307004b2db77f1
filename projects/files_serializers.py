"""Serializers of the Files API: a file's metadata out, a multipart upload in."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.urls import reverse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from sparkops.filters import datetime_problem

from .models import File
from .serializers import ProjectField


class FileSerializer(serializers.ModelSerializer):
    run = serializers.UUIDField(source="run_id", read_only=True, allow_null=True)
    uploaded_by = serializers.EmailField(source="uploaded_by.email", read_only=True, default=None)
    content_url = serializers.SerializerMethodField(
        help_text="The streamed download (`GET`, with the caller's credentials)."
    )

    class Meta:
        model = File
        fields = [
            "id",
            "project",
            "name",
            "content_type",
            "size",
            "checksum",
            "source",
            "run",
            "node_id",
            "uploaded_by",
            "created_at",
            "expires_at",
            "content_url",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_content_url(self, obj: File) -> str:
        path = reverse("file-content", kwargs={"pk": obj.pk})
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


@extend_schema_field(OpenApiTypes.UUID)
class UploadProjectField(ProjectField):
    """The project id of an upload (a plain Serializer has no model to read its type from)."""


class FileUploadSerializer(serializers.Serializer):
    project = UploadProjectField(help_text="The project that keeps the file (you need developer+).")
    file = serializers.FileField(
        help_text="The bytes (a multipart part). Its content type is sniffed from the bytes."
    )
    name = serializers.CharField(
        required=False,
        max_length=1000,
        help_text="The display name (default: the part's filename); path components and "
        "control characters are dropped.",
    )
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="When the retention job deletes the file."
    )
    retention_days = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=36500,
        help_text="Or: keep the file this many days from now.",
    )

    def validate_file(self, value: Any) -> Any:
        limit = int(settings.SPARKOPS_FILE_MAX_BYTES)
        if value.size is not None and value.size > limit:
            raise serializers.ValidationError(
                f"The file is larger than the limit of {limit} bytes."
            )
        return value

    def validate_expires_at(self, value: Any) -> Any:
        if value is None:
            return value
        problem = datetime_problem(value)
        if problem:
            raise serializers.ValidationError(problem)
        if value <= timezone.now():
            raise serializers.ValidationError("Must be in the future.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        days = attrs.pop("retention_days", None)
        if days is not None:
            if attrs.get("expires_at") is not None:
                raise serializers.ValidationError(
                    {"retention_days": ["Give either expires_at or retention_days."]}
                )
            attrs["expires_at"] = timezone.now() + timedelta(days=days)
        return attrs


class FileUrlSerializer(serializers.Serializer):
    url = serializers.URLField(help_text="A GET of this URL downloads the file, no credentials.")
    expires_at = serializers.DateTimeField()
