"""The API of MCP servers as tool sources: `/api/v1/mcp-servers` (CRUD), `discover`, `test`
and the discovered snapshots (`toolsets`). Writes go through tools.mcp_services."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from projects.api import ProjectScopedViewSet
from projects.models import Role
from projects.serializers import ProjectField

from . import mcp_services
from .models import McpServer, McpToolset

ERROR = OpenApiResponse(description="JSON error with `type`, `detail` and field `errors`.")


class McpServerSerializer(serializers.ModelSerializer):
    """Shape only; names, URLs and headers are checked by tools.mcp_services."""

    project = ProjectField(help_text="The owning project (a project you are a member of).")
    created_by = serializers.UUIDField(source="created_by_id", read_only=True, allow_null=True)
    transport = serializers.ChoiceField(
        choices=McpServer.Transport.choices,
        required=False,
        help_text="`streamable_http` (default) or `sse`; `stdio` only when the operator lists "
        "its command in SPARKOPS_MCP_STDIO_COMMANDS (else a 400).",
    )
    headers = serializers.JSONField(
        required=False,
        help_text="Header name to value, sent on every request; values may read project "
        "secrets: `Bearer {{ secrets.MCP_TOKEN }}`.",
    )
    url = serializers.CharField(max_length=2000, required=False, allow_blank=True)
    command = serializers.CharField(max_length=500, required=False, allow_blank=True)
    args = serializers.JSONField(required=False, help_text="stdio only: the command's arguments.")
    timeout_seconds = serializers.FloatField(required=False)
    tools = serializers.SerializerMethodField(
        help_text="The tools of the current snapshot (`tools_version`): name, full name "
        "(`<server>__<tool>`, as agents, workflows and policies name it), description, "
        "input schema."
    )

    class Meta:
        model = McpServer
        fields = [
            "id",
            "project",
            "name",
            "description",
            "transport",
            "url",
            "command",
            "args",
            "headers",
            "enabled",
            "timeout_seconds",
            "tools_version",
            "discovered_at",
            "discovery_error",
            "tools",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "id",
            "tools_version",
            "discovered_at",
            "discovery_error",
            "created_by",
            "created_at",
            "updated_at",
        ]
        validators: list[Any] = []

    def get_tools(self, server: McpServer) -> list[dict[str, Any]]:
        current = {t.number: t for t in server.toolsets.all()}.get(server.tools_version)
        return [
            {**entry, "full_name": f"{server.name}{mcp_services.SEPARATOR}{entry['name']}"}
            for entry in (current.tools if current else [])
        ]


class McpServerUpdateSerializer(McpServerSerializer):
    project = ProjectField(read_only=True)


class McpToolsetSerializer(serializers.ModelSerializer):
    class Meta:
        model = McpToolset
        fields = ["number", "tools", "digest", "created_at"]


class McpTestResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    tools = serializers.ListField(child=serializers.CharField())
    latency_ms = serializers.FloatField()
    error = serializers.CharField(allow_null=True)


@extend_schema(tags=["tools"])
class McpServerViewSet(ProjectScopedViewSet):
    """MCP servers whose tools the project's agents and workflow tool steps may call. Reads
    need any role in the project; writes, `discover` and `test` the developer role."""

    queryset = McpServer.objects.select_related("project").prefetch_related("toolsets")
    serializer_class = McpServerSerializer
    filterset_fields = ["project", "enabled", "transport"]
    search_fields = ["name", "description"]
    ordering_fields = ["name", "created_at", "updated_at"]
    ordering = ["name"]
    write_role = Role.DEVELOPER

    def get_serializer_class(self) -> Any:
        if self.action in ("update", "partial_update"):
            return McpServerUpdateSerializer
        return McpServerSerializer

    def perform_create(self, serializer: Any) -> None:
        data = dict(serializer.validated_data)
        project = data.pop("project")
        self.check_project_role(project, Role.DEVELOPER)
        serializer.instance = mcp_services.mcp_server_create(
            actor=self.request.user, project=project, **data
        )

    def perform_update(self, serializer: Any) -> None:
        serializer.instance = mcp_services.mcp_server_update(
            server=serializer.instance, actor=self.request.user, **serializer.validated_data
        )

    def perform_destroy(self, instance: McpServer) -> None:
        mcp_services.mcp_server_delete(server=instance, actor=self.request.user)

    @extend_schema(request=None, responses={200: McpServerSerializer, 502: ERROR})
    @action(detail=True, methods=["post"])
    def discover(self, request: Request, pk: Any = None) -> Response:
        """List the server's tools now; a changed list becomes a new snapshot (`tools_version`
        + 1). A server that cannot be listed is a 502 `mcp_unavailable` saying why."""
        server = mcp_services.mcp_server_discover(server=self.get_object(), actor=request.user)
        server = self.get_queryset().get(pk=server.pk)
        return Response(self.get_serializer(server).data)

    @extend_schema(request=None, responses={200: McpTestResultSerializer})
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: Any = None) -> Response:
        """Connect and list the tools, storing nothing: `ok`, the tool names, or `error`."""
        result = mcp_services.mcp_server_test(server=self.get_object(), actor=request.user)
        return Response(McpTestResultSerializer(result).data)

    @extend_schema(filters=False, responses={200: McpToolsetSerializer(many=True)})
    @action(detail=True, methods=["get"], url_path="toolsets", url_name="toolsets")
    def toolsets(self, request: Request, pk: Any = None) -> Response:
        """Every discovered snapshot of the server's tools, newest first."""
        server = self.get_object()
        page = self.paginate_queryset(server.toolsets.order_by("-number"))
        return self.get_paginated_response(McpToolsetSerializer(page, many=True).data)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "number", OpenApiTypes.INT, OpenApiParameter.PATH, description="Snapshot number."
            )
        ],
        responses={200: McpToolsetSerializer, 404: ERROR},
    )
    @action(
        detail=True,
        methods=["get"],
        url_path=r"toolsets/(?P<number>\d+)",
        url_name="toolset-detail",
    )
    def toolset_detail(self, request: Request, pk: Any = None, number: Any = None) -> Response:
        toolset = get_object_or_404(self.get_object().toolsets, number=number)
        return Response(McpToolsetSerializer(toolset).data)
