from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from projects.api import InvalidInput, ProjectScopedGenericViewSet, ProjectScopedViewSet
from projects.models import Project, Role, with_caller_role
from projects.serializers import CloneSerializer, ProjectSerializer
from projects.views import UUID_RE

from . import services
from .definition import graph as definition_graph
from .filters import WorkflowFilter
from .models import Workflow
from .serializers import (
    DiffSerializer,
    GraphSerializer,
    RollbackSerializer,
    ValidateRequestSerializer,
    ValidateResponseSerializer,
    WorkflowSerializer,
    WorkflowVersionSerializer,
)

INVALID = OpenApiResponse(
    description="Invalid input: `{type: validation_error, detail, errors}`; definition errors are "
    "keyed by path, e.g. `definition.nodes[1].agent`."
)
CONFLICT = OpenApiResponse(description="Conflict (JSON error with `type`, `detail`).")
NUMBER = OpenApiParameter("number", OpenApiTypes.INT, OpenApiParameter.PATH)


def _int_param(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidInput("Invalid input.", errors={name: ["Must be a version number."]})
    return value


@extend_schema(tags=["workflows"])
@extend_schema_view(
    create=extend_schema(responses={201: WorkflowSerializer, 400: INVALID, 409: CONFLICT}),
    update=extend_schema(responses={200: WorkflowSerializer, 400: INVALID, 409: CONFLICT}),
    partial_update=extend_schema(responses={200: WorkflowSerializer, 400: INVALID, 409: CONFLICT}),
    destroy=extend_schema(responses={204: None, 409: CONFLICT}),
)
class WorkflowViewSet(ProjectScopedViewSet):
    """Workflows: DAGs of agent, tool and approval steps. Every change of the definition or the
    run settings writes an immutable version; a run pins the version it started with."""

    queryset = Workflow.objects.select_related("project")
    serializer_class = WorkflowSerializer
    filterset_class = WorkflowFilter
    search_fields = ["name", "slug", "description"]
    ordering_fields = ["name", "slug", "status", "created_at", "updated_at"]
    ordering = ["name"]
    action_roles = {"validate": Role.VIEWER}

    def perform_create(self, serializer: WorkflowSerializer) -> None:
        data = dict(serializer.validated_data)
        project = data.pop("project")
        self.check_project_role(project)
        serializer.instance = services.workflow_create(
            actor=self.request.user, project=project, **data
        )

    def perform_update(self, serializer: WorkflowSerializer) -> None:
        serializer.instance = services.workflow_update(
            workflow=serializer.instance, actor=self.request.user, **serializer.validated_data
        )

    def perform_destroy(self, instance: Workflow) -> None:
        services.workflow_delete(workflow=instance, actor=self.request.user)

    @extend_schema(
        request=ValidateRequestSerializer,
        responses={200: ValidateResponseSerializer, 400: INVALID},
    )
    @action(detail=False, methods=["post"], filter_backends=[])
    def validate(self, request: Request) -> Response:
        """Validates a definition for a project without saving it (any member may)."""
        body = ValidateRequestSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        project = body.validated_data["project"]
        self.check_project_role(project, Role.VIEWER)
        result = services.workflow_validate(
            project=project, definition=body.validated_data["definition"]
        )
        return Response({"valid": True, "graph": result})

    @extend_schema(responses={200: WorkflowVersionSerializer(many=True)})
    @action(detail=True, methods=["get"], filter_backends=[])
    def versions(self, request: Request, pk: Any = None) -> Response:
        """The workflow's versions, newest first."""
        workflow = self.get_object()
        page = self.paginate_queryset(workflow.versions.order_by("-number"))
        return self.get_paginated_response(WorkflowVersionSerializer(page, many=True).data)

    @extend_schema(parameters=[NUMBER], responses={200: WorkflowVersionSerializer})
    @action(
        detail=True,
        methods=["get"],
        url_path=r"versions/(?P<number>\d+)",
        url_name="version-detail",
        filter_backends=[],
    )
    def version(self, request: Request, pk: Any = None, number: str = "") -> Response:
        version = services.workflow_version_get(workflow=self.get_object(), number=int(number))
        return Response(WorkflowVersionSerializer(version).data)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "from", OpenApiTypes.INT, description="Older version (default: `to` - 1)."
            ),
            OpenApiParameter(
                "to", OpenApiTypes.INT, description="Newer version (default: current)."
            ),
        ],
        responses={200: DiffSerializer, 400: INVALID},
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def diff(self, request: Request, pk: Any = None) -> Response:
        """What changed between two versions (nodes by id, top-level keys, run settings)."""
        workflow = self.get_object()
        to_number = _int_param(request, "to") or workflow.version
        from_number = _int_param(request, "from") or max(to_number - 1, 1)
        return Response(
            services.workflow_diff(workflow=workflow, from_number=from_number, to_number=to_number)
        )

    @extend_schema(request=RollbackSerializer, responses={200: WorkflowSerializer, 400: INVALID})
    @action(detail=True, methods=["post"], filter_backends=[])
    def rollback(self, request: Request, pk: Any = None) -> Response:
        """Restores an older version by writing a new version equal to it."""
        workflow = self.get_object()
        body = RollbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        workflow = services.workflow_rollback(
            workflow=workflow, actor=request.user, version=body.validated_data["version"]
        )
        return Response(self.get_serializer(workflow).data)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "version", OpenApiTypes.INT, description="A version number (default: current)."
            )
        ],
        responses={200: GraphSerializer},
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def graph(self, request: Request, pk: Any = None) -> Response:
        """The DAG for drawing: nodes, edges and layers (nodes that can run in parallel)."""
        workflow = self.get_object()
        number = _int_param(request, "version")
        if number is None:
            definition = workflow.definition
        else:
            version = services.workflow_version_get(workflow=workflow, number=number)
            definition = version.snapshot["definition"]
        return Response(definition_graph(definition))

    @extend_schema(request=None, responses={200: WorkflowSerializer})
    @action(detail=True, methods=["post"], filter_backends=[])
    def pause(self, request: Request, pk: Any = None) -> Response:
        """New runs are refused while paused; runs in progress continue."""
        workflow = services.workflow_set_status(
            workflow=self.get_object(), actor=request.user, status=Workflow.Status.PAUSED
        )
        return Response(self.get_serializer(workflow).data, status=status.HTTP_200_OK)

    @extend_schema(request=None, responses={200: WorkflowSerializer, 400: INVALID})
    @action(detail=True, methods=["post"], filter_backends=[])
    def activate(self, request: Request, pk: Any = None) -> Response:
        """Activates the workflow; its definition is validated again first."""
        workflow = services.workflow_set_status(
            workflow=self.get_object(), actor=request.user, status=Workflow.Status.ACTIVE
        )
        return Response(self.get_serializer(workflow).data, status=status.HTTP_200_OK)


@extend_schema(tags=["projects"])
class ProjectCloneViewSet(ProjectScopedGenericViewSet):
    """`POST /api/v1/projects/{id}/clone`, routed on the projects' prefix from workflows/urls.py:
    a clone copies tools, agents and workflows, so it lives at the highest of their layers."""

    queryset = Project.objects.select_related("owner")
    serializer_class = ProjectSerializer
    lookup_value_regex = UUID_RE
    action_roles = {
        "clone": Role.VIEWER,  # anyone who can read a project (or public template) may copy it
    }

    def get_queryset(self):  # type: ignore[override]
        return with_caller_role(super().get_queryset(), self.request.user)

    def project_of(self, obj: Project) -> Project:
        return obj

    @extend_schema(request=CloneSerializer, responses={201: ProjectSerializer})
    @action(detail=True, methods=["post"])
    def clone(self, request: Request, pk: Any = None) -> Response:
        """Copy agents, tools and workflows (not secrets, runs or members) into a new project
        owned by the caller."""
        source = self.get_object()
        body = CloneSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        project = services.project_clone(
            project=source, actor=request.user, name=body.validated_data["name"]
        )
        project.caller_role = Role.OWNER
        return Response(self.get_serializer(project).data, status=status.HTTP_201_CREATED)
