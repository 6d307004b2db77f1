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
from rest_framework import mixins, permissions, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.request import Request
from rest_framework.response import Response

from projects.api import (
    VERSION_DIFF_PARAMETERS,
    Forbidden,
    InvalidInput,
    ProjectRolePermission,
    ProjectScopedViewSet,
    VersionDiffSerializer,
    version_diff_of,
)
from projects.models import Project, Role
from tools.models import Tool

from . import services
from .filters import AgentFilter, ModelPriceFilter
from .models import Agent, ModelPrice
from .serializers import (
    AgentRollbackSerializer,
    AgentSerializer,
    AgentTestResultSerializer,
    AgentTestSerializer,
    AgentUpdateSerializer,
    AgentVersionPageSerializer,
    AgentVersionSerializer,
    ModelPriceSerializer,
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

    @extend_schema(
        parameters=VERSION_DIFF_PARAMETERS,
        responses={200: VersionDiffSerializer, 400: ERROR},
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def diff(self, request: Request, pk: Any = None) -> Response:
        """What changed between two versions: each field with its value before and after."""
        return Response(version_diff_of(self.get_object(), request))

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
    check_writable = ProjectScopedViewSet.check_writable
    archived_actions = ProjectScopedViewSet.archived_actions

    def get_queryset(self):  # type: ignore[override]
        if getattr(self, "swagger_fake_view", False):
            return Agent.objects.none()
        project = get_object_or_404(
            Project.objects.for_user(self.request.user), pk=self.kwargs["project_pk"]
        )
        return self.queryset.for_user(self.request.user).filter(project=project)


class ModelPricePermission(ProjectRolePermission):
    """A project's prices: its roles (admin to write). Global prices: everyone reads them; only
    staff change them, and others get 403, not 404, since they can see them."""

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        if obj.project_id is not None:
            return super().has_object_permission(request, view, obj)
        if request.method in permissions.SAFE_METHODS:
            return True
        if not request.user.is_staff:
            raise Forbidden("Only staff can change global model prices.")
        return True


@extend_schema(tags=["model prices"])
@extend_schema_view(
    create=extend_schema(responses={201: ModelPriceSerializer, 400: ERROR, 403: ERROR, 409: ERROR}),
    update=extend_schema(responses={200: ModelPriceSerializer, 400: ERROR, 409: ERROR}),
    partial_update=extend_schema(responses={200: ModelPriceSerializer, 400: ERROR, 409: ERROR}),
)
class ModelPriceViewSet(ProjectScopedViewSet):
    """Model prices in USD per million tokens: the global ones and your projects' own. A model
    call is priced by the most specific pattern valid at call time, its project's rows first.
    Global prices are written by staff; a project's by its admins."""

    queryset = ModelPrice.objects.all()
    serializer_class = ModelPriceSerializer
    filterset_class = ModelPriceFilter
    permission_classes = [permissions.IsAuthenticated, ModelPricePermission]
    search_fields = ["model_pattern"]
    ordering_fields = ["provider", "model_pattern", "valid_from", "created_at"]
    ordering = ["provider", "model_pattern", "-valid_from", "id"]
    write_role = Role.ADMIN

    def perform_create(self, serializer: ModelPriceSerializer) -> None:
        data = dict(serializer.validated_data)
        project = data.pop("project", None)
        if project is not None:
            self.check_project_role(project, Role.ADMIN)
        serializer.instance = services.model_price_create(
            actor=self.request.user, project=project, **data
        )

    def perform_update(self, serializer: ModelPriceSerializer) -> None:
        data = dict(serializer.validated_data)
        price = serializer.instance
        if "project" in data and data.pop("project") != price.project:
            raise InvalidInput(
                "Invalid input.", errors={"project": ["A price's project cannot change."]}
            )
        serializer.instance = services.model_price_update(
            price=price, actor=self.request.user, **data
        )

    def perform_destroy(self, instance: ModelPrice) -> None:
        services.model_price_delete(price=instance, actor=self.request.user)
