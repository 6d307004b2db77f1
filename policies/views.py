from __future__ import annotations

from typing import Any, cast

from django.db.models import OuterRef, QuerySet, Subquery
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
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from agents.models import Agent
from projects.api import (
    NotFound,
    ProjectRolePermission,
    ProjectScopedGenericViewSet,
    ProjectScopedViewSet,
)
from projects.models import Membership, Project, Role
from sparkops.audit import AuditEvent
from sparkops.pagination import CreatedCursorPagination
from workflows.models import Workflow

from . import enforcement, services, usage
from .filters import AuditEventFilter, BudgetFilter, PolicyDecisionFilter, PolicyFilter
from .models import Budget, BudgetSpend, Policy, PolicyDecision
from .serializers import (
    AuditEventSerializer,
    BudgetSerializer,
    BudgetUpdateSerializer,
    BudgetUsageSerializer,
    EvaluateResultSerializer,
    EvaluateSerializer,
    PolicyDecisionSerializer,
    PolicySerializer,
    PolicyUpdateSerializer,
    ProjectUsageSerializer,
)

ERROR = OpenApiResponse(description="JSON error (`type`, `detail`, field `errors`).")
UUID_RE = "[0-9a-fA-F-]{36}"
PROJECT_PK = OpenApiParameter("project_pk", OpenApiTypes.UUID, OpenApiParameter.PATH)


class PolicyPermission(ProjectRolePermission):
    """Global policies (no project) are readable by every signed-in user, writable by staff."""

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        if obj.project_id is None:
            return request.method in permissions.SAFE_METHODS or bool(request.user.is_staff)
        return super().has_object_permission(request, view, obj)


@extend_schema(tags=["policies"])
@extend_schema_view(
    create=extend_schema(responses={201: PolicySerializer, 400: ERROR, 403: ERROR, 409: ERROR}),
    update=extend_schema(request=PolicyUpdateSerializer, responses={200: PolicySerializer}),
    partial_update=extend_schema(request=PolicyUpdateSerializer, responses={200: PolicySerializer}),
)
class PolicyViewSet(ProjectScopedViewSet):
    """Policies of the caller's projects and the global ones. Members read; admins write;
    global policies (project null) are written by staff only."""

    queryset = Policy.objects.select_related("project")
    serializer_class = PolicySerializer
    filterset_class = PolicyFilter
    search_fields = ["name", "description"]
    ordering_fields = ["priority", "name", "kind", "created_at", "updated_at"]
    ordering = ["priority", "id"]
    lookup_value_regex = r"[0-9]+"
    permission_classes = [permissions.IsAuthenticated, PolicyPermission]
    write_role = Role.ADMIN
    action_roles = {"evaluate": Role.VIEWER}

    def get_serializer_class(self) -> type[PolicySerializer]:
        if self.action in ("update", "partial_update"):
            return PolicyUpdateSerializer
        return PolicySerializer

    def perform_create(self, serializer: BaseSerializer[Policy]) -> None:
        data = dict(serializer.validated_data)
        project = data.pop("project", None)
        if project is not None:
            self.check_project_role(project)
        serializer.instance = services.policy_create(
            actor=self.request.user, project=project, **data
        )

    def perform_update(self, serializer: BaseSerializer[Policy]) -> None:
        # An update's serializer always holds the object `get_object()` found.
        policy = cast(Policy, serializer.instance)
        serializer.instance = services.policy_update(
            policy=policy, actor=self.request.user, **serializer.validated_data
        )

    def perform_destroy(self, instance: Policy) -> None:
        services.policy_delete(policy=instance, actor=self.request.user)

    @extend_schema(
        request=EvaluateSerializer, responses={200: EvaluateResultSerializer, 400: ERROR}
    )
    @action(detail=False, methods=["post"], filter_backends=[], pagination_class=None)
    def evaluate(self, request: Request) -> Response:
        """Dry run: what the project's policies (and `block` budgets) would decide for a sample
        input at one evaluation point. Nothing is recorded or changed."""
        body = EvaluateSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        project = data.pop("project")
        for name, model in (("workflow", Workflow), ("agent", Agent)):
            pk = data.pop(name, None)
            data[name] = None
            if pk is not None:
                data[name] = model.objects.filter(project=project, pk=pk).first()
                if data[name] is None:
                    raise NotFound(f"No {name} {pk} in this project.")
        # The project's unfinished runs, through the reverse relation runs declare.
        result = enforcement.evaluate(
            project=project, active_runs=project.runs.active().count, **data
        )
        return Response(EvaluateResultSerializer(result).data)


@extend_schema(tags=["policies"])
class PolicyDecisionViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, ProjectScopedGenericViewSet
):
    """Decisions that were not a plain allow (read-only), newest first."""

    queryset = PolicyDecision.objects.select_related("project")
    serializer_class = PolicyDecisionSerializer
    filterset_class = PolicyDecisionFilter
    pagination_class = CreatedCursorPagination
    search_fields: list[str] = []
    ordering_fields: list[str] = []
    lookup_value_regex = r"[0-9]+"


def _with_spend(queryset: Any) -> Any:
    """Annotate the budget's latest spend row (start and amount): one query for a page."""
    latest = BudgetSpend.objects.filter(budget=OuterRef("pk")).order_by("-period_start")
    return queryset.annotate(
        latest_start=Subquery(latest.values("period_start")[:1]),
        latest_spend=Subquery(latest.values("spend")[:1]),
    )


@extend_schema(tags=["budgets"])
@extend_schema_view(
    create=extend_schema(responses={201: BudgetSerializer, 400: ERROR, 403: ERROR, 409: ERROR}),
    update=extend_schema(request=BudgetUpdateSerializer, responses={200: BudgetSerializer}),
    partial_update=extend_schema(request=BudgetUpdateSerializer, responses={200: BudgetSerializer}),
)
class BudgetViewSet(ProjectScopedViewSet):
    """Spend limits per project (optionally per workflow or agent). Members read; admins
    write."""

    queryset = Budget.objects.select_related("project")
    serializer_class = BudgetSerializer
    filterset_class = BudgetFilter
    search_fields = ["name"]
    ordering_fields = ["name", "limit_usd", "created_at", "updated_at"]
    ordering = ["name", "id"]
    lookup_value_regex = r"[0-9]+"
    write_role = Role.ADMIN

    def filter_queryset(self, queryset: Any) -> Any:
        return _with_spend(super().filter_queryset(queryset))

    def get_serializer_class(self) -> type[BudgetSerializer]:
        if self.action in ("update", "partial_update"):
            return BudgetUpdateSerializer
        return BudgetSerializer

    @staticmethod
    def _scope(data: dict[str, Any]) -> dict[str, Any]:
        for name in ("workflow", "agent"):
            if f"{name}_id" in data:
                data[name] = data.pop(f"{name}_id")
        return data

    def perform_create(self, serializer: BaseSerializer[Budget]) -> None:
        data = self._scope(dict(serializer.validated_data))
        project = data.pop("project")
        self.check_project_role(project)
        serializer.instance = _with_spend(Budget.objects.select_related("project")).get(
            pk=services.budget_create(actor=self.request.user, project=project, **data).pk
        )

    def perform_update(self, serializer: BaseSerializer[Budget]) -> None:
        data = self._scope(dict(serializer.validated_data))
        # An update's serializer always holds the object `get_object()` found.
        budget = cast(Budget, serializer.instance)
        budget = services.budget_update(budget=budget, actor=self.request.user, **data)
        serializer.instance = _with_spend(Budget.objects.select_related("project")).get(
            pk=budget.pk
        )

    def perform_destroy(self, instance: Budget) -> None:
        services.budget_delete(budget=instance, actor=self.request.user)

    @extend_schema(responses={200: BudgetUsageSerializer})
    @action(detail=True, methods=["get"], filter_backends=[], pagination_class=None)
    def usage(self, request: Request, pk: Any = None) -> Response:
        """The current period: spend against the limit, and the calls it covers per day,
        workflow, agent and model."""
        return Response(BudgetUsageSerializer(usage.budget_usage(budget=self.get_object())).data)


def _project_for(request: Request, project_pk: Any, role: str) -> Project:
    """The project, 404 for non-members; 403 below `role`."""
    project = get_object_or_404(Project.objects.for_user(request.user), pk=project_pk)
    if not Membership.objects.has_role(request.user, project, role):
        raise PermissionDenied("Your role in this project does not allow this.")
    return project


@extend_schema(
    tags=["budgets"],
    parameters=[
        PROJECT_PK,
        OpenApiParameter(
            "from", OpenApiTypes.DATE, description="First day (default: 30 days ago)."
        ),
        OpenApiParameter(
            "to", OpenApiTypes.DATE, description="Last day, included (default: today)."
        ),
        OpenApiParameter(
            "group_by", OpenApiTypes.STR, enum=list(usage.GROUPINGS), description="Default: day."
        ),
    ],
    responses={200: ProjectUsageSerializer, 400: ERROR},
)
class ProjectUsageView(APIView):
    """Model spend of a project over a date range (the project's timezone), grouped by day,
    workflow, agent or model. Any member may read it."""

    def get(self, request: Request, project_pk: Any) -> Response:
        project = _project_for(request, project_pk, Role.VIEWER)
        params = request.query_params
        result = usage.project_usage(
            project=project,
            start=params.get("from"),
            end=params.get("to"),
            group_by=params.get("group_by"),
        )
        return Response(ProjectUsageSerializer(result).data)


@extend_schema(tags=["audit"], parameters=[PROJECT_PK])
class ProjectAuditViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """The project's audit log, newest first: admins and owners only."""

    queryset = AuditEvent.objects.none()
    serializer_class = AuditEventSerializer
    filterset_class = AuditEventFilter
    pagination_class = CreatedCursorPagination
    search_fields = ["action", "object_repr", "actor_email"]
    ordering_fields: list[str] = []

    def get_queryset(self) -> QuerySet[AuditEvent]:
        if getattr(self, "swagger_fake_view", False):
            return AuditEvent.objects.none()
        project = _project_for(self.request, self.kwargs["project_pk"], Role.ADMIN)
        return AuditEvent.objects.filter(project=project)
