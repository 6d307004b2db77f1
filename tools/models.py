from __future__ import annotations

from typing import Any

from django.db import models

from projects.models import Project
from sparkops.models import Authored, VersionBase


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


class Tool(Authored):
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


class McpServerQuerySet(models.QuerySet["McpServer"]):
    def for_user(self, user: Any) -> McpServerQuerySet:
        if user is None or not user.is_authenticated:
            return self.none()
        return self.filter(project__in=Project.objects.for_user(user))


class McpServer(Authored):
    """An MCP server whose tools a project's agents and workflows may call (tools.mcp_client).
    Its `tools/list` is stored as numbered snapshots (McpToolset); `tools_version` is the one
    in use, and each call records the number it used."""

    class Transport(models.TextChoices):
        STREAMABLE_HTTP = "streamable_http", "Streamable HTTP"
        SSE = "sse", "HTTP + SSE (older)"
        STDIO = "stdio", "stdio (a command on the worker)"

    NAME_RE = r"^[a-z][a-z0-9_-]{0,31}$"  # room for `<server>__<tool>` in a 64-char tool name

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="mcp_servers")
    name = models.CharField(max_length=32)
    description = models.TextField(blank=True)
    transport = models.CharField(
        max_length=16, choices=Transport.choices, default=Transport.STREAMABLE_HTTP
    )
    url = models.CharField(max_length=2000, blank=True, help_text="Empty for stdio.")
    command = models.CharField(
        max_length=500,
        blank=True,
        help_text="stdio only: the command, one of SPARKOPS_MCP_STDIO_COMMANDS.",
    )
    args = models.JSONField(default=list, blank=True, help_text="stdio only: its arguments.")
    headers = models.JSONField(
        default=dict,
        blank=True,
        help_text="Header name to value; values may read project secrets: "
        "'Bearer {{ secrets.MCP_TOKEN }}'. For stdio: the command's environment variables.",
    )
    enabled = models.BooleanField(default=True)
    timeout_seconds = models.FloatField(default=30.0)
    tools_version = models.PositiveIntegerField(default=0, help_text="0: never discovered.")
    discovered_at = models.DateTimeField(null=True, blank=True)
    discovery_error = models.TextField(blank=True)

    objects = McpServerQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="tools_mcpserver_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.project_id}/{self.name}"


class McpToolset(models.Model):
    """One discovered `tools/list` of a server, immutable: [{name, description, input_schema}]."""

    server = models.ForeignKey(McpServer, on_delete=models.CASCADE, related_name="toolsets")
    number = models.PositiveIntegerField()
    tools = models.JSONField(default=list)
    digest = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-number"]
        constraints = [
            models.UniqueConstraint(fields=["server", "number"], name="tools_mcptoolset_unique")
        ]

    def __str__(self) -> str:
        return f"{self.server_id} v{self.number}"
