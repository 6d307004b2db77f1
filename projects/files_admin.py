"""Operator console for files: read-only rows (name, type, size, checksum, who or which run
wrote it, retention), a download link served through the admin's own scoping, and delete
through `projects.files` (the bytes go once the delete commits; audited)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import FileResponse, Http404, HttpRequest
from django.template.defaultfilters import filesizeformat
from django.urls import path, reverse
from django.utils.html import format_html

from projects.admin_scoping import ProjectScopedAdmin, staff_member
from sparkops.adminkit import ServiceAdmin, admin_page

from . import files
from .models import File


def download_view(model_admin: FileAdmin, request: HttpRequest, object_id: str) -> FileResponse:
    file = model_admin.get_object(request, object_id)  # scoped: another project's is None
    if file is None or not model_admin.has_view_permission(request, file):
        raise Http404("No such file.")
    return files.download_response(file)


@admin.register(File)
class FileAdmin(ProjectScopedAdmin, ServiceAdmin):
    list_display = [
        "name",
        "project",
        "content_type",
        "size_display",
        "source",
        "uploaded_by",
        "created_at",
        "expires_at",
        "download",
    ]
    list_select_related = ["project", "uploaded_by"]
    list_filter = ["source", ("project", admin.RelatedOnlyFieldListFilter), "created_at"]
    search_fields = ["name", "checksum", "content_type", "project__name", "project__slug"]
    date_hierarchy = "created_at"
    fields = [
        "id",
        "project",
        "name",
        "content_type",
        "size_display",
        "checksum",
        "source",
        "run_id",
        "node_id",
        "uploaded_by",
        "created_at",
        "expires_at",
        "path",
        "download",
    ]
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # uploads go through the API (sniffing, limits)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # rows are facts about stored bytes: viewed, or deleted

    @admin.display(description="Size", ordering="size")
    def size_display(self, obj: File) -> str:
        return f"{filesizeformat(obj.size)} ({obj.size} bytes)"

    @admin.display(description="Download")
    def download(self, obj: File) -> str:
        url = reverse("admin:projects_file_download", args=[obj.pk])
        return format_html('<a href="{}" download>download</a>', url)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<path:object_id>/download/",
                admin_page(self, download_view),
                name="projects_file_download",
            ),
            *super().get_urls(),
        ]

    def delete_model(self, request: HttpRequest, obj: File) -> None:
        files.file_remove(file=obj, actor=staff_member(request))
