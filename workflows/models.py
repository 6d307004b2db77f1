from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from projects.models import Project
from sparkops.models import VersionBase


class WorkflowQuerySet(models.QuerySet["Workflow"]):
    def for_user(self, user: Any) -> WorkflowQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))


def default_retry_policy() -> dict[str, Any]:
    return {"max_attempts": 1, "backoff_seconds": 2, "max_backoff_seconds": 300}


class Workflow(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        ARCHIVED = "archived", "Archived"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="workflows")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100)
    description = models.TextField(blank=True)
    definition = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    timeout_seconds = models.PositiveIntegerField(
        default=3600, help_text="Run deadline: a run still active after this is timed out."
    )
    retry_policy = models.JSONField(
        default=default_retry_policy, blank=True, help_text="Default step retry policy."
    )
    max_concurrent_runs = models.PositiveIntegerField(
        null=True, blank=True, help_text="Extra runs wait in `queued`, in order. Empty: no limit."
    )
    triggers = models.JSONField(default=dict, blank=True)
    version = models.PositiveIntegerField(default=1)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = WorkflowQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "slug"], name="workflows_workflow_unique_slug"
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def current_version(self) -> WorkflowVersion:
        return self.versions.get(number=self.version)


class WorkflowVersion(VersionBase):
    """`snapshot` holds the definition and the run settings (timeout, retry policy) a run pins."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="versions")
    versioned_field = "workflow"

    class Meta(VersionBase.Meta):
        constraints = [
            models.UniqueConstraint(fields=["workflow", "number"], name="workflows_version_unique")
        ]
