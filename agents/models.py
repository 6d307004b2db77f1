from __future__ import annotations

from typing import Any

from django.db import models
from django.utils import timezone

from projects.models import Project
from sparkops.models import Authored, VersionBase


class AgentQuerySet(models.QuerySet["Agent"]):
    def for_user(self, user: Any) -> AgentQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))


class Agent(Authored):
    class Provider(models.TextChoices):
        OPENAI = "openai", "OpenAI"
        ANTHROPIC = "anthropic", "Anthropic"
        OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible (Ollama, vLLM, LiteLLM…)"
        SIMULATED = "simulated", "Simulated (no key, no network)"

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        DISABLED = "disabled", "Disabled"

    # What a caller may set, besides `project` (chosen on create, fixed afterwards): the one
    # list the service, the API serializer and the admin form take theirs from.
    EDITABLE_FIELDS = (
        "name",
        "slug",
        "description",
        "provider",
        "model",
        "base_url",
        "credentials_secret",
        "system_prompt",
        "temperature",
        "max_tokens",
        "max_iterations",
        "response_format",
        "tools",
        "mcp_tools",
        "settings",
        "status",
    )

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
    mcp_tools = models.JSONField(
        default=list,
        blank=True,
        help_text='Tools of the project\'s MCP servers: [{"server": name, "tools": [names] or '
        "null for all}].",
    )
    settings = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    version = models.PositiveIntegerField(default=1)

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


class ModelPriceQuerySet(models.QuerySet["ModelPrice"]):
    def for_user(self, user: Any) -> ModelPriceQuerySet:
        """The global prices, and the overrides of the caller's projects."""
        return self.filter(
            models.Q(project__isnull=True) | models.Q(project__in=Project.objects.for_user(user))
        )


class ModelPrice(models.Model):
    """List price of a model, per million tokens (USD). `model_pattern` is a shell-style pattern
    (`gpt-4o-mini*`); the most specific matching row valid at call time prices the call, and a
    row of the run's project beats every global row. An unmatched model costs 0 and the call's
    event says `price_unknown`. Global rows (no project) are staff's; a project's admins keep
    its overrides."""

    EDITABLE_FIELDS = (
        "provider",
        "model_pattern",
        "input_per_million",
        "output_per_million",
        "cached_input_per_million",
        "valid_from",
    )

    project = models.ForeignKey(
        Project,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="model_prices",
        help_text="Empty for a global price; a project's own price overrides the global ones.",
    )
    provider = models.CharField(max_length=32, choices=Agent.Provider.choices)
    model_pattern = models.CharField(max_length=200)
    input_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    output_per_million = models.DecimalField(max_digits=12, decimal_places=6)
    cached_input_per_million = models.DecimalField(
        max_digits=12, decimal_places=6, null=True, blank=True
    )
    valid_from = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ModelPriceQuerySet.as_manager()

    class Meta:
        ordering = ["provider", "model_pattern", "-valid_from", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "model_pattern", "valid_from"],
                condition=models.Q(project__isnull=True),
                name="agents_price_unique",
            ),
            models.UniqueConstraint(
                fields=["project", "provider", "model_pattern", "valid_from"],
                condition=models.Q(project__isnull=False),
                name="agents_project_price_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider}:{self.model_pattern}"
