from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings as django_settings
from django.db import models


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    DEVELOPER = "developer", "Developer"
    VIEWER = "viewer", "Viewer"


ROLE_RANK = {Role.VIEWER: 1, Role.DEVELOPER: 2, Role.ADMIN: 3, Role.OWNER: 4}


def role_at_least(role: str | None, required: str) -> bool:
    return role is not None and ROLE_RANK[Role(role)] >= ROLE_RANK[Role(required)]


class ProjectQuerySet(models.QuerySet["Project"]):
    def for_user(self, user: Any) -> ProjectQuerySet:
        """Projects the user is a member of, plus public ones (readable by any signed-in user).
        Filtered through a subquery, not a join, so rows never duplicate."""
        if user is None or not user.is_authenticated:
            return self.none()
        member_of = Membership.objects.filter(user=user).values("project_id")
        return self.filter(models.Q(pk__in=member_of) | models.Q(is_public=True))

    def member_of(self, user: Any) -> ProjectQuerySet:
        """Only projects with a membership (public ones excluded)."""
        if user is None or not user.is_authenticated:
            return self.none()
        return self.filter(pk__in=Membership.objects.filter(user=user).values("project_id"))


class Project(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        ARCHIVED = "archived", "Archived"
        DRAFT = "draft", "Draft"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=220, unique=True)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    settings = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    is_public = models.BooleanField(default=False)
    is_template = models.BooleanField(default=False)
    owner = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_projects"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProjectQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status"]), models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return self.name


class MembershipQuerySet(models.QuerySet["Membership"]):
    def role_of(self, user: Any, project: Project) -> str | None:
        if user is None or not user.is_authenticated:
            return None
        role = self.filter(user=user, project=project).values_list("role", flat=True).first()
        if role is None and project.is_public:
            return Role.VIEWER
        return role

    def has_role(self, user: Any, project: Project, required: str) -> bool:
        return role_at_least(self.role_of(user, project), required)


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="projects_membership_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} as {self.role}"


def with_caller_role(queryset: ProjectQuerySet, user: Any) -> ProjectQuerySet:
    """Annotate `caller_role` with one correlated subquery (list pages stay one query)."""
    role = Membership.objects.filter(project=models.OuterRef("pk"), user=user).values("role")[:1]
    return queryset.annotate(caller_role=models.Subquery(role))


class SecretQuerySet(models.QuerySet["Secret"]):
    def for_user(self, user: Any) -> SecretQuerySet:
        """Developers and up see secret names (to reference them); viewers see nothing."""
        if user is None or not user.is_authenticated:
            return self.none()
        projects = Membership.objects.filter(
            user=user, role__in=[Role.OWNER, Role.ADMIN, Role.DEVELOPER]
        ).values("project_id")
        return self.filter(project__in=projects)


class Secret(models.Model):
    """A project credential. `value_encrypted` is a Fernet token (see projects.crypto); the
    plaintext is decrypted only at execution time and never returned by the API or the admin."""

    NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=300, blank=True)
    value_encrypted = models.TextField(editable=False)
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = SecretQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="projects_secret_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.name}"
