"""Shared DRF pieces: the base viewset that scopes every queryset to the caller's projects and
checks the caller's role. Errors live in `sparkops.errors` (re-exported here)."""

from __future__ import annotations

from typing import Any

import django_filters
from django import forms
from rest_framework import exceptions, permissions, viewsets

from sparkops.errors import (  # noqa: F401  (re-exported for services)
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    SparkOpsError,
    Unprocessable,
)


class IdFilter(django_filters.NumberFilter):
    """A filter by integer id. A fraction, an exponent or a number past a 64-bit id is a 400
    naming the parameter (a plain NumberFilter passes any decimal to the database)."""

    field_class = forms.IntegerField

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("min_value", 1)
        kwargs.setdefault("max_value", 2**63 - 1)
        super().__init__(*args, **kwargs)


class ProjectRolePermission(permissions.BasePermission):
    """Reads need any role on the object's project (or a public project); writes need the role
    the view names for its action. Non-visible objects never reach here: they are not in the
    queryset, so the caller gets 404 first."""

    def has_object_permission(self, request: Any, view: Any, obj: Any) -> bool:
        from projects.models import Membership

        project = view.project_of(obj)
        required = view.required_role()
        return Membership.objects.has_role(request.user, project, required)


class ProjectScopedMixin:
    """Base for every project-owned resource.

    `queryset` must be of a model whose QuerySet has `for_user(user)`; that is the only scoping,
    so `get_object()` answers 404 for anything outside the caller's projects. Subclasses say
    which role each action needs in `action_roles`; unsafe methods default to `write_role`.
    """

    permission_classes = [permissions.IsAuthenticated, ProjectRolePermission]
    action_roles: dict[str, str] = {}
    write_role = "developer"
    read_role = "viewer"

    def get_queryset(self):  # type: ignore[no-untyped-def]
        return super().get_queryset().for_user(self.request.user)  # type: ignore[misc]

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
        from projects.models import Membership

        if not Membership.objects.has_role(
            self.request.user, project, role or self.required_role()
        ):
            raise exceptions.PermissionDenied(
                "Your role in this project does not allow this action."
            )


class ProjectScopedGenericViewSet(ProjectScopedMixin, viewsets.GenericViewSet):
    """Pick the mixins you need (e.g. no update for write-only resources)."""


class ProjectScopedViewSet(ProjectScopedMixin, viewsets.ModelViewSet):
    pass
