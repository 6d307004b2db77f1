from __future__ import annotations

from typing import Any

from django.conf import settings as django_settings
from django.db import models

from projects.models import Project
from sparkops.models import VersionBase


class AgentQuerySet(models.QuerySet["Agent"]):
    def for_user(self, user: Any) -> AgentQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))


class Agent(models.Model):
    class Provider(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible (Ollama, vLLM, LiteLLM…)"
        SIMULATED = "simulated", "Simulated (no key, no network)"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="agents")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100)
    description = models.TextField(blank=True)
    provider = models.CharField(max_length=32, choices=Provider.choices)
    model = models.CharField(max_length=200)
    base_url = models.URLField(max_length=500, blank=True)
    credentials_secret = models.CharField(
        max_length=100, blank=True, help_text="Name of the project secret holding the API key."
    )
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    max_iterations = models.PositiveIntegerField(default=8)
    response_format = models.JSONField(
        null=True, blank=True, help_text="null for text, or a JSON Schema the reply must match."
    )
    tools = models.ManyToManyField("tools.Tool", blank=True, related_name="agents")
    settings = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    version = models.PositiveIntegerField(default=1)
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = AgentQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "slug"], name="agents_agent_unique_slug")
        ]

    def __str__(self) -> str:
        return self.name


class AgentVersion(VersionBase):
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="versions")
    versioned_field = "agent"

    class Meta(VersionBase.Meta):
        constraints = [
            models.UniqueConstraint(fields=["agent", "number"], name="agents_version_unique")
        ]
