from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from projects.models import Project
from sparkops.models import VersionBase


class ToolQuerySet(models.QuerySet["Tool"]):
    def for_user(self, user: Any) -> ToolQuerySet:
        """The user's projects' tools plus every global tool (readable by all)."""
        if user is None or not user.is_authenticated:
            return self.none()
        return self.filter(
            models.Q(project__in=Project.objects.for_user(user)) | models.Q(is_global=True)
        )

    def usable_in(self, project: Project) -> ToolQuerySet:
        """What a project's agents and workflows may reference: its own tools and global ones."""
        return self.filter(models.Q(project=project) | models.Q(is_global=True))


class Tool(models.Model):
    class Kind(models.TextChoices):
        HTTP = "http", "HTTP request"
        BUILTIN = "builtin", "Built-in function"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"

    NAME_RE = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"  # an OpenAI function name

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="tools", null=True, blank=True
    )
    is_global = models.BooleanField(default=False)
    name = models.CharField(max_length=64)
    description = models.TextField(blank=True)
    parameters = models.JSONField(default=dict, blank=True, help_text="JSON Schema of arguments.")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    config = models.JSONField(
        default=dict,
        blank=True,
        help_text="http: method, url, headers, query, body, auth, timeout_seconds, retries; "
        "builtin: function.",
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    version = models.PositiveIntegerField(default=1)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ToolQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="tools_tool_unique_name"),
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(project__isnull=True),
                name="tools_tool_unique_global_name",
            ),
            models.CheckConstraint(
                condition=models.Q(is_global=True, project__isnull=True)
                | models.Q(is_global=False, project__isnull=False),
                name="tools_tool_global_xor_project",
            ),
        ]

    def __str__(self) -> str:
        return self.name if self.is_global else f"{self.project_id}/{self.name}"


class ToolVersion(VersionBase):
    tool = models.ForeignKey(Tool, on_delete=models.CASCADE, related_name="versions")
    versioned_field = "tool"

    class Meta(VersionBase.Meta):
        constraints = [
            models.UniqueConstraint(fields=["tool", "number"], name="tools_version_unique")
        ]
