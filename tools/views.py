from __future__ import annotations

from dataclasses import asdict
from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from projects.api import (
    VERSION_DIFF_PARAMETERS,
    Forbidden,
    ProjectRolePermission,
    ProjectScopedViewSet,
    VersionDiffSerializer,
    version_diff_of,
)
from projects.files import with_file_urls
from projects.models import Role

from . import services
from .filters import ToolFilter
from .models import Tool
from .serializers import (
    ToolInvokeResultSerializer,
    ToolInvokeSerializer,
    ToolRollbackSerializer,
    ToolSerializer,
    ToolVersionSerializer,
)

ERROR = OpenApiResponse(description="JSON error with `type`, `detail` and field `errors`.")


class ToolPermission(ProjectRolePermission):
    """Project tools: the role the view names on the tool's project. Global tools: anyone
    reads them (and may invoke them with a project of theirs, checked by the service); only
    staff change them, and others get 403, not 404, since they can see them."""

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        if not obj.is_global:
            return super().has_object_permission(request, view, obj)
        if request.method in permissions.SAFE_METHODS or view.action == "invoke":
            return True
        if not request.user.is_staff:
            raise Forbidden("Only staff can change global tools.")
        return True


@extend_schema(tags=["tools"])
class ToolViewSet(ProjectScopedViewSet):
    """Tools of your projects plus the global tools. Writes need the developer role in the
    tool's project (staff for global tools)."""

    queryset = Tool.objects.select_related("project")  # the permission check reads it
    serializer_class = ToolSerializer
    filterset_class = ToolFilter
    permission_classes = [permissions.IsAuthenticated, ToolPermission]
    search_fields = ["name", "description"]
    ordering_fields = ["name", "kind", "status", "created_at", "updated_at"]
    ordering = ["name"]
    write_role = Role.DEVELOPER  # invoke too: it runs the tool with the project's secrets

    def perform_create(self, serializer: ToolSerializer) -> None:
        data = dict(serializer.validated_data)
        project = data.pop("project", None)
        if project is not None:
            self.check_project_role(project, Role.DEVELOPER)
        serializer.instance = services.tool_create(
            actor=self.request.user,
            project=project,
            is_global=data.pop("is_global", False),
            **data,
        )

    def perform_update(self, serializer: ToolSerializer) -> None:
        serializer.instance = services.tool_update(
            tool=serializer.instance, actor=self.request.user, **serializer.validated_data
        )

    def perform_destroy(self, instance: Tool) -> None:
        services.tool_delete(tool=instance, actor=self.request.user)

    @extend_schema(filters=False, responses={200: ToolVersionSerializer(many=True)})
    @action(detail=True, methods=["get"], url_path="versions", url_name="versions")
    def versions(self, request: Request, pk: Any = None) -> Response:
        """The tool's immutable versions, newest first."""
        tool = self.get_object()
        page = self.paginate_queryset(tool.versions.order_by("-number"))
        return self.get_paginated_response(ToolVersionSerializer(page, many=True).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("number", OpenApiTypes.INT, OpenApiParameter.PATH, "Version number.")
        ],
        responses={200: ToolVersionSerializer, 404: ERROR},
    )
    @action(
        detail=True,
        methods=["get"],
        url_path=r"versions/(?P<number>\d+)",
        url_name="version-detail",
    )
    def version_detail(self, request: Request, pk: Any = None, number: Any = None) -> Response:
        tool = self.get_object()
        version = get_object_or_404(tool.versions, number=number)
        return Response(ToolVersionSerializer(version).data)

    @extend_schema(
        parameters=VERSION_DIFF_PARAMETERS,
        responses={200: VersionDiffSerializer, 400: ERROR},
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def diff(self, request: Request, pk: Any = None) -> Response:
        """What changed between two versions: each field with its value before and after."""
        return Response(version_diff_of(self.get_object(), request))

    @extend_schema(
        request=ToolRollbackSerializer, responses={200: ToolSerializer, 400: ERROR, 409: ERROR}
    )
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: Any = None) -> Response:
        """Restore an earlier version (recorded as a new version)."""
        tool = self.get_object()
        body = ToolRollbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        tool = services.tool_rollback(
            tool=tool, actor=request.user, version=body.validated_data["version"]
        )
        return Response(self.get_serializer(tool).data)

    @extend_schema(
        request=ToolInvokeSerializer,
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                OpenApiTypes.STR,
                OpenApiParameter.HEADER,
                description="Sent to HTTP tools as X-Idempotency-Key.",
            )
        ],
        responses={200: ToolInvokeResultSerializer, 400: ERROR, 403: ERROR, 409: ERROR},
    )
    @action(detail=True, methods=["post"])
    def invoke(self, request: Request, pk: Any = None) -> Response:
        """Run the tool once with `arguments` (checked against its parameters; a 400 lists
        every violation). A failed call (HTTP error, refused target...) is still a 200 with
        `ok: false`, `error` and, for HTTP tools, `http_status`."""
        tool = self.get_object()
        body = ToolInvokeSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        result = services.tool_invoke(
            tool=tool,
            actor=request.user,
            project=body.validated_data.get("project"),
            arguments=body.validated_data.get("arguments", {}),
            idempotency_key=request.headers.get("Idempotency-Key") or None,
        )
        data = asdict(result)
        data["output"] = with_file_urls(result.output, request.build_absolute_uri)  # saved files
        data["status"] = "succeeded" if result.ok else "failed"
        return Response(ToolInvokeResultSerializer(data).data)
