from __future__ import annotations

from typing import Any

from django.db.models import Prefetch
from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from projects.models import Project
from sparkops.api import ProjectScopedViewSet
from tools.models import Tool

from . import services
from .filters import AgentFilter
from .models import Agent
from .serializers import (
    AgentRollbackSerializer,
    AgentSerializer,
    AgentTestResultSerializer,
    AgentTestSerializer,
    AgentUpdateSerializer,
    AgentVersionPageSerializer,
    AgentVersionSerializer,
)

ERROR = OpenApiResponse(description="JSON error with `type`, `detail` and field `errors`.")
PROVIDER_ERROR = OpenApiResponse(
    description="The provider failed (`type` names why, `retryable` says whether trying again "
    "can help): 400 for a configuration problem (no credentials, unknown secret, refused base "
    "URL), 502 when the provider refused or failed, 504 when it did not answer in time."
)
VERSION_NUMBER = OpenApiParameter(
    "number", OpenApiTypes.INT, OpenApiParameter.PATH, description="Version number."
)


@extend_schema(tags=["agents"])
@extend_schema_view(
    create=extend_schema(responses={201: AgentSerializer, 400: ERROR, 409: ERROR}),
    update=extend_schema(request=AgentUpdateSerializer, responses={200: AgentSerializer}),
    partial_update=extend_schema(request=AgentUpdateSerializer, responses={200: AgentSerializer}),
    destroy=extend_schema(responses={204: None, 409: ERROR}),
)
class AgentViewSet(ProjectScopedViewSet):
    """LLM agents of the caller's projects. Reads need any role; writes need developer."""

    queryset = Agent.objects.select_related("project").prefetch_related(
        Prefetch("tools", queryset=Tool.objects.only("id"))
    )
    serializer_class = AgentSerializer
    filterset_class = AgentFilter
    search_fields = ["name", "slug", "description", "model"]
    ordering_fields = ["name", "slug", "provider", "model", "status", "created_at", "updated_at"]
    ordering = ["name"]
    lookup_value_regex = r"[0-9]+"

    def get_serializer_class(self) -> type[AgentSerializer]:
        if self.action in ("update", "partial_update"):
            return AgentUpdateSerializer
        return AgentSerializer

    def perform_create(self, serializer: AgentSerializer) -> None:
        data = dict(serializer.validated_data)
        project = data.pop("project")
        self.check_project_role(project)
        serializer.instance = services.agent_create(
            actor=self.request.user, project=project, **data
        )

    def perform_update(self, serializer: AgentSerializer) -> None:
        serializer.instance = services.agent_update(
            agent=serializer.instance, actor=self.request.user, **serializer.validated_data
        )

    def perform_destroy(self, instance: Agent) -> None:
        services.agent_delete(agent=instance, actor=self.request.user)

    @extend_schema(
        operation_id="agents_versions_list",
        responses={200: AgentVersionPageSerializer},
        parameters=[
            OpenApiParameter("page", OpenApiTypes.INT, description="Page number."),
            OpenApiParameter("page_size", OpenApiTypes.INT, description="Rows per page."),
        ],
    )
    @action(detail=True, methods=["get"], url_path="versions", filter_backends=[])
    def versions(self, request: Request, pk: Any = None) -> Response:
        """The agent's immutable versions, newest first."""
        agent = self.get_object()
        page = self.paginate_queryset(agent.versions.order_by("-number"))
        return self.get_paginated_response(AgentVersionSerializer(page, many=True).data)

    @extend_schema(
        operation_id="agents_versions_retrieve",
        parameters=[VERSION_NUMBER],
        responses={200: AgentVersionSerializer},
    )
    @action(
        detail=True,
        methods=["get"],
        url_path=r"versions/(?P<number>[0-9]+)",
        url_name="version-detail",
        filter_backends=[],
    )
    def version_detail(self, request: Request, pk: Any = None, number: Any = None) -> Response:
        agent = self.get_object()
        version = agent.versions.filter(number=int(number)).first()
        if version is None:
            raise NotFound(f"Agent '{agent.slug}' has no version {number}.")
        return Response(AgentVersionSerializer(version).data)

    @extend_schema(request=AgentRollbackSerializer, responses={200: AgentSerializer, 400: ERROR})
    @action(detail=True, methods=["post"])
    def rollback(self, request: Request, pk: Any = None) -> Response:
        """Restores the configuration and tools of an earlier version as a new version."""
        agent = self.get_object()
        body = AgentRollbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        agent = services.agent_rollback(
            agent=agent, actor=request.user, version=body.validated_data["version"]
        )
        return Response(AgentSerializer(agent, context=self.get_serializer_context()).data)

    @extend_schema(
        request=AgentTestSerializer,
        responses={
            200: AgentTestResultSerializer,
            400: PROVIDER_ERROR,
            502: PROVIDER_ERROR,
            504: PROVIDER_ERROR,
        },
    )
    @action(detail=True, methods=["post"])
    def test(self, request: Request, pk: Any = None) -> Response:
        """Sends one prompt through the agent's provider (a real, billed call for real
        providers) and returns the reply. Tools are offered but not run."""
        agent = self.get_object()
        body = AgentTestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        reply = services.agent_test(
            agent=agent, actor=request.user, prompt=body.validated_data["prompt"]
        )
        result = {
            "reply": reply.content,
            "tool_calls": [
                {
                    "id": call.id,
                    "name": call.name,
                    "arguments": call.arguments,
                    "raw_arguments": call.raw_arguments,
                }
                for call in reply.tool_calls
            ],
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens,
            "latency_ms": round(reply.latency_ms, 1),
            "model": reply.model,
            "provider": reply.provider,
            "finish_reason": reply.finish_reason,
        }
        return Response(AgentTestResultSerializer(result).data)


@extend_schema(
    tags=["agents"],
    parameters=[OpenApiParameter("project_pk", OpenApiTypes.UUID, OpenApiParameter.PATH)],
)
class ProjectAgentViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet
):
    """Read-only: the agents of one project (`/projects/{project_pk}/agents/`); an unknown or
    invisible project is 404, even for the list."""

    queryset = AgentViewSet.queryset
    serializer_class = AgentSerializer
    filterset_class = AgentFilter
    search_fields = AgentViewSet.search_fields
    ordering_fields = AgentViewSet.ordering_fields
    ordering = AgentViewSet.ordering
    lookup_value_regex = AgentViewSet.lookup_value_regex
    permission_classes = ProjectScopedViewSet.permission_classes
    action_roles: dict[str, str] = {}
    read_role = ProjectScopedViewSet.read_role
    write_role = ProjectScopedViewSet.write_role
    required_role = ProjectScopedViewSet.required_role
    project_of = ProjectScopedViewSet.project_of

    def get_queryset(self):  # type: ignore[override]
        if getattr(self, "swagger_fake_view", False):
            return Agent.objects.none()
        project = get_object_or_404(
            Project.objects.for_user(self.request.user), pk=self.kwargs["project_pk"]
        )
        return self.queryset.for_user(self.request.user).filter(project=project)
