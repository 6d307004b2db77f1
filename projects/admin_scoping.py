"""Staff scoping for the admin: superusers see everything; any other staff member sees only
what the API would show them (`for_user`: their projects, plus public ones and global tools),
in every list, change page, autocomplete and action, and may change or delete an object only
with the role the API would require in its project. One mixin, applied to every ModelAdmin of
a project-owned model (a test walks the admin registry to keep it that way)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest

from accounts.models import User
from projects.models import ROLE_RANK, Membership, Project, Role


def staff_member(request: HttpRequest) -> User:
    """The signed-in staff member behind an admin request, as the services' `actor`. The admin
    admits only signed-in staff (`AdminSite.admin_view`), so `request.user` is never
    AnonymousUser here; were it ever, the request is refused, never written as anonymous."""
    user = request.user
    if not isinstance(user, User):
        raise PermissionDenied
    return user


def scope(queryset: QuerySet, user: Any, through: str | None = None) -> QuerySet:
    """`queryset` as `user` may see it. `through` names a foreign key whose model has
    `for_user` (versions go through their workflow, agent or tool)."""
    if user.is_superuser:
        return queryset
    if through:
        related = queryset.model._meta.get_field(through).related_model
        return queryset.filter(**{f"{through}__in": related.objects.for_user(user)})
    # `for_user` is on each project-owned model's own QuerySet class, not on a shared base.
    return queryset.for_user(user)  # type: ignore[attr-defined]


# The mixin is only ever combined with a ModelAdmin; mypy reads its `self` as one.
if TYPE_CHECKING:
    _AdminBase = admin.ModelAdmin
else:
    _AdminBase = object


class ProjectScopedAdmin(_AdminBase):
    """Mixin for `admin.ModelAdmin` subclasses (put it first in the bases).

    - `scope_through`: see `scope()`; None uses the model's own `for_user`.
    - `project_path`: attribute path from an object to its project ("" for a Project itself,
      "run.project" for a step); an object with no project (a global tool) is writable by
      any staff member, as in the API.
    - `write_role`: the role needed in that project to change or delete an object.
    """

    scope_through: str | None = None
    project_path: str = "project"
    write_role: str = Role.DEVELOPER

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return scope(super().get_queryset(request), request.user, self.scope_through)

    def project_of(self, obj: Any) -> Project | None:
        for name in filter(None, self.project_path.split(".")):
            obj = getattr(obj, name, None)
        return obj

    def may_write(self, request: HttpRequest, obj: Any) -> bool:
        if request.user.is_superuser:
            return True
        project = self.project_of(obj)
        if project is None:
            return bool(request.user.is_staff)
        return Membership.objects.has_role(request.user, project, self.write_role)

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_change_permission(request, obj)
        return allowed and (obj is None or self.may_write(request, obj))

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or self.may_write(request, obj))

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        # New objects go only into projects where the staff member may write.
        if db_field.related_model is Project and not request.user.is_superuser:
            member = Membership.objects.filter(user=staff_member(request))
            kwargs["queryset"] = Project.objects.filter(
                pk__in=member.filter(role__in=_roles_at_least(self.write_role)).values("project_id")
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


def _roles_at_least(role: str) -> list[str]:
    return [r for r, rank in ROLE_RANK.items() if rank >= ROLE_RANK[Role(role)]]
