from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from projects.admin_scoping import ProjectScopedAdmin
from sparkops.adminkit import (
    PrettyJSONField,
    ReadOnlyInline,
    ServiceAdmin,
    VersionAdmin,
    VersionedAdmin,
    VersionInline,
    add_service_errors,
    adopt,
    for_each_writable,
)
from sparkops.errors import SparkOpsError

from . import mcp_services, services
from .models import McpServer, McpToolset, Tool, ToolVersion
from .schema import clean_tool

EDITABLE = services.VERSIONED_FIELDS


class ToolAdminForm(forms.ModelForm):
    parameters = PrettyJSONField(
        rows=14,
        required=False,
        help_text="JSON Schema of the arguments; empty for none (or the built-in's own schema).",
    )
    config = PrettyJSONField(required=False, help_text=Tool._meta.get_field("config").help_text)

    class Meta:
        model = Tool
        fields = [
            "project",
            "is_global",
            "name",
            "description",
            "kind",
            "config",
            "parameters",
            "status",
        ]

    def clean(self) -> dict[str, Any]:
        """The same validation as the API (tools.schema.clean_tool); errors go to the field
        they concern, with their path (`config.auth.type: ...`)."""
        data = super().clean()
        if self.instance.pk is None:  # project and is_global are read-only on change
            project, is_global = data.get("project"), data.get("is_global", False)
            if is_global and project is not None:
                self.add_error("project", "A global tool belongs to no project.")
            elif not is_global and project is None and "project" not in self.errors:
                self.add_error("project", "Choose a project, or tick 'is global'.")
        # Fields that already failed (bad JSON, unknown choice) are not checked again.
        broken = {name for name in EDITABLE if name in self.errors}
        try:
            cleaned = clean_tool(
                name=data.get("name"),
                description=data.get("description") or "",
                parameters=None if "parameters" in broken else data.get("parameters"),
                kind=data.get("kind"),
                config=None if "config" in broken else data.get("config"),
                status=data.get("status") or Tool.Status.ACTIVE,
            )
        except SparkOpsError as exc:
            add_service_errors(self, exc)
            return data
        if not broken:
            data.update(cleaned)
        return data


class ToolVersionInline(VersionInline):
    model = ToolVersion


@admin.register(Tool)
class ToolAdmin(ProjectScopedAdmin, VersionedAdmin):
    form = ToolAdminForm
    list_display = ["name", "project", "is_global", "kind", "status", "version", "updated_at"]
    list_filter = ["kind", "status", "is_global"]
    list_select_related = ["project"]
    search_fields = ["name", "description", "project__name", "project__slug"]
    autocomplete_fields = ["project"]
    readonly_fields = ["version", "created_by", "created_at", "updated_at"]
    inlines = [ToolVersionInline]
    actions = ["disable_tools", "enable_tools"]
    create_only = ("project", "is_global")

    def save_model(self, request: HttpRequest, obj: Tool, form: Any, change: bool) -> None:
        """Saves go through the services (validation, versions), never `obj.save()`."""
        fields = {name: form.cleaned_data[name] for name in EDITABLE if name in form.cleaned_data}
        if change:
            original = Tool.objects.get(pk=obj.pk)
            saved = services.tool_update(tool=original, actor=request.user, **fields)
        else:
            saved = services.tool_create(
                actor=request.user,
                project=form.cleaned_data.get("project"),
                is_global=form.cleaned_data.get("is_global", False),
                **fields,
            )
        adopt(obj, saved)

    def delete_model(self, request: HttpRequest, obj: Tool) -> None:
        services.tool_delete(tool=obj, actor=request.user)

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Tool], status: str) -> None:
        changed = for_each_writable(
            self,
            request,
            queryset,
            lambda tool: services.tool_update(tool=tool, actor=request.user, status=status),
        )
        self.message_user(request, f"{changed} tool(s) set to {status}.", messages.SUCCESS)

    @admin.action(description="Disable selected tools")
    def disable_tools(self, request: HttpRequest, queryset: QuerySet[Tool]) -> None:
        self._set_status(request, queryset, Tool.Status.DISABLED)

    @admin.action(description="Enable selected tools")
    def enable_tools(self, request: HttpRequest, queryset: QuerySet[Tool]) -> None:
        self._set_status(request, queryset, Tool.Status.ACTIVE)


@admin.register(ToolVersion)
class ToolVersionAdmin(ProjectScopedAdmin, VersionAdmin):
    versioned = "tool"
    search_fields = ["tool__name"]
    list_filter = ["tool__kind"]


class McpServerAdminForm(forms.ModelForm):
    args = PrettyJSONField(rows=3, required=False, help_text="stdio only: the arguments.")
    headers = PrettyJSONField(
        rows=6, required=False, help_text=McpServer._meta.get_field("headers").help_text
    )

    class Meta:
        model = McpServer
        fields = [
            "project",
            "name",
            "description",
            "transport",
            "url",
            "command",
            "args",
            "headers",
            "enabled",
            "timeout_seconds",
        ]

    def clean(self) -> dict[str, Any]:
        """The API's checks (tools.mcp_services.mcp_server_clean), errors on their fields."""
        data = super().clean()
        if self.errors:
            return data
        values = {name: data.get(name) for name in mcp_services.EDITABLE_FIELDS}
        values["headers"] = values["headers"] or {}
        values["args"] = values["args"] or []
        try:
            data.update(mcp_services.mcp_server_clean(values))
        except SparkOpsError as exc:
            add_service_errors(self, exc)
        return data


class McpToolsetInline(ReadOnlyInline):
    model = McpToolset
    fields = ["number", "tools", "digest", "created_at"]
    readonly_fields = fields


@admin.register(McpServer)
class McpServerAdmin(ProjectScopedAdmin, ServiceAdmin):
    """Saves go through tools.mcp_services (the same checks as the API); a new server's tools
    are discovered on save, and the `Discover tools` action lists them again."""

    form = McpServerAdminForm
    list_display = ["name", "project", "transport", "url", "enabled", "tools_version"]
    list_filter = ["transport", "enabled"]
    list_select_related = ["project"]
    search_fields = ["name", "description", "url", "project__name", "project__slug"]
    autocomplete_fields = ["project"]
    readonly_fields = [
        "tools_version",
        "discovered_at",
        "discovery_error",
        "created_by",
        "created_at",
        "updated_at",
    ]
    inlines = [McpToolsetInline]
    actions = ["discover_tools"]

    create_only = ("project",)

    def save_model(self, request: HttpRequest, obj: McpServer, form: Any, change: bool) -> None:
        fields = {
            name: form.cleaned_data[name]
            for name in mcp_services.EDITABLE_FIELDS
            if name in form.cleaned_data
        }
        if fields.get("headers") is None:
            fields["headers"] = {}
        if fields.get("args") is None:
            fields["args"] = []
        if change:
            original = McpServer.objects.get(pk=obj.pk)
            saved = mcp_services.mcp_server_update(server=original, actor=request.user, **fields)
        else:
            saved = mcp_services.mcp_server_create(
                actor=request.user, project=form.cleaned_data["project"], **fields
            )
        adopt(obj, saved)

    def delete_model(self, request: HttpRequest, obj: McpServer) -> None:
        mcp_services.mcp_server_delete(server=obj, actor=request.user)

    @admin.action(description="Discover tools of the selected servers")
    def discover_tools(self, request: HttpRequest, queryset: QuerySet[McpServer]) -> None:
        done = for_each_writable(
            self,
            request,
            queryset,
            lambda server: mcp_services.mcp_server_discover(server=server, actor=request.user),
        )
        self.message_user(request, f"{done} server(s) discovered.", messages.SUCCESS)
