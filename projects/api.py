"""Shared DRF pieces: the base viewset that scopes every queryset to the caller's projects and
checks the caller's role. Errors live in `sparkops.errors` (re-exported here)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import django_filters
from django import forms
from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, permissions, serializers, viewsets

from sparkops.errors import (  # noqa: F401  (re-exported for services)
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    SparkOpsError,
    Unprocessable,
)
from sparkops.versioning import version_diff

from .models import Membership, Role, project_ensure_writable


class IdFilter(django_filters.NumberFilter):
    """A filter by integer id. A fraction, an exponent or a number past a 64-bit id is a 400
    naming the parameter (a plain NumberFilter passes any decimal to the database)."""

    # An integer field in place of NumberFilter's DecimalField (the stubs pin the latter).
    field_class = forms.IntegerField  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


def version_param(request: Any, name: str) -> int | None:
    """A version number from the query string (`?from=`, `?to=`); absent is None, anything
    but a positive integer a 400 naming the parameter."""
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


def version_diff_of(obj: Any, request: Any) -> dict[str, Any]:
    """The diff `?from=` (default: `to` - 1) `&to=` (default: current) of an agent or a tool."""
    to_number = version_param(request, "to") or obj.version
    from_number = version_param(request, "from") or max(to_number - 1, 1)
    return version_diff(obj=obj, from_number=from_number, to_number=to_number)


VERSION_DIFF_PARAMETERS = [
    OpenApiParameter("from", OpenApiTypes.INT, description="Older version (default: `to` - 1)."),
    OpenApiParameter("to", OpenApiTypes.INT, description="Newer version (default: current)."),
]


class VersionDiffSerializer(serializers.Serializer):
    from_version = serializers.IntegerField()
    to_version = serializers.IntegerField()
    changed_fields = serializers.ListField(child=serializers.CharField())
    changes = serializers.DictField(
        help_text="Per changed field: `from` and `to` values (lists also `added`, `removed`)."
    )


class ProjectRolePermission(permissions.BasePermission):
    """Reads need any role on the object's project (or a public project); writes need the role
    the view names for its action. Non-visible objects never reach here: they are not in the
    queryset, so the caller gets 404 first."""

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        project = view.project_of(obj)
        required = view.required_role()
        if not Membership.objects.has_role(request.user, project, required):
            return False
        view.check_writable(project, required)
        return True


# The mixin is only ever combined with a GenericViewSet; mypy reads its `self` as one.
if TYPE_CHECKING:
    _ViewSetBase = viewsets.GenericViewSet
else:
    _ViewSetBase = object


class ProjectScopedMixin(_ViewSetBase):
    """Base for every project-owned resource.

    `queryset` must be of a model whose QuerySet has `for_user(user)`; that is the only scoping,
    so `get_object()` answers 404 for anything outside the caller's projects. Subclasses say
    which role each action needs in `action_roles`; unsafe methods default to `write_role`.
    """

    permission_classes = [permissions.IsAuthenticated, ProjectRolePermission]
    action_roles: dict[str, str] = {}
    write_role = "developer"
    read_role = "viewer"
    # Actions still allowed in an archived project (stopping work, the project row itself).
    archived_actions: frozenset[str] = frozenset()

    def get_queryset(self) -> QuerySet[Any]:
        queryset = super().get_queryset()
        # `for_user` is on each project-owned model's own QuerySet class, not on a shared base.
        return queryset.for_user(self.request.user)  # type: ignore[attr-defined]

    def required_role(self) -> str:
        if self.action in self.action_roles:
            return self.action_roles[self.action]
        if self.request.method in permissions.SAFE_METHODS:
            return self.read_role
        return self.write_role

    def project_of(self, obj: Any) -> Any:
        return obj.project

    def check_project_role(self, project: Any, role: str | None = None) -> None:
        """For creates, where there is no object yet: the target project comes from the body."""
        if not Membership.objects.has_role(
            self.request.user, project, role or self.required_role()
        ):
            raise exceptions.PermissionDenied(
                "Your role in this project does not allow this action."
            )
        self.check_writable(project, role or self.required_role())

    def check_writable(self, project: Any, role: str) -> None:
        """The one archive guard of the API: a write (any unsafe method needing more than a
        viewer's role) into an archived project is a 409 naming the state."""
        if (
            self.request.method not in permissions.SAFE_METHODS
            and role != Role.VIEWER
            and self.action not in self.archived_actions
        ):
            project_ensure_writable(project)


class ProjectScopedGenericViewSet(ProjectScopedMixin, viewsets.GenericViewSet):
    """Pick the mixins you need (e.g. no update for write-only resources)."""


class ProjectScopedViewSet(ProjectScopedMixin, viewsets.ModelViewSet):
    pass
