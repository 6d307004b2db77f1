from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from sparkops.adminkit import PrettyJSONField
from sparkops.console.scoping import ProjectScopedAdmin
from sparkops.errors import SparkOpsError

from . import services
from .models import Tool, ToolVersion
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
            for key, problems in (exc.errors or {}).items():
                field, _, path = key.partition(".")
                if field in broken:
                    continue
                for problem in problems:
                    self.add_error(
                        field if field in self.fields else None,
                        f"{path}: {problem}" if path else problem,
                    )
            return data
        if not broken:
            data.update(cleaned)
        return data


class ToolVersionInline(admin.TabularInline):
    model = ToolVersion
    extra = 0
    max_num = 0
    can_delete = False
    fields = ["number", "created_by", "created_at", "snapshot_pretty"]
    readonly_fields = fields
    ordering = ["-number"]

    @admin.display(description="Snapshot")
    def snapshot_pretty(self, obj: ToolVersion) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.snapshot, indent=2))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Tool)
class ToolAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    form = ToolAdminForm
    list_display = ["name", "project", "is_global", "kind", "status", "version", "updated_at"]
    list_filter = ["kind", "status", "is_global"]
    list_select_related = ["project"]
    search_fields = ["name", "description", "project__name", "project__slug"]
    autocomplete_fields = ["project"]
    readonly_fields = ["version", "created_by", "created_at", "updated_at"]
    inlines = [ToolVersionInline]
    actions = ["disable_tools", "enable_tools"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        return [*fields, "project", "is_global"] if obj is not None else fields

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
        obj.pk = saved.pk
        obj._state.adding = False
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Tool) -> None:
        services.tool_delete(tool=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Tool]) -> None:
        for tool in queryset:
            services.tool_delete(tool=tool, actor=request.user)

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Tool], status: str) -> None:
        changed = 0
        for tool in queryset:
            if not self.may_write(request, tool):
                self.message_user(
                    request, f"{tool}: your role does not allow this.", messages.ERROR
                )
                continue
            try:
                services.tool_update(tool=tool, actor=request.user, status=status)
                changed += 1
            except SparkOpsError as exc:
                self.message_user(request, f"{tool}: {exc.detail}", messages.ERROR)
        self.message_user(request, f"{changed} tool(s) set to {status}.", messages.SUCCESS)

    @admin.action(description="Disable selected tools")
    def disable_tools(self, request: HttpRequest, queryset: QuerySet[Tool]) -> None:
        self._set_status(request, queryset, Tool.Status.DISABLED)

    @admin.action(description="Enable selected tools")
    def enable_tools(self, request: HttpRequest, queryset: QuerySet[Tool]) -> None:
        self._set_status(request, queryset, Tool.Status.ACTIVE)


@admin.register(ToolVersion)
class ToolVersionAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    """Versions are immutable: written by the services, only read here."""

    scope_through = "tool"
    project_path = "tool.project"

    list_display = ["tool", "number", "created_by", "created_at"]
    list_select_related = ["tool", "tool__project", "created_by"]
    search_fields = ["tool__name"]
    list_filter = ["tool__kind"]
    fields = ["tool", "number", "created_by", "created_at", "snapshot_pretty"]
    readonly_fields = fields

    @admin.display(description="Snapshot")
    def snapshot_pretty(self, obj: ToolVersion) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.snapshot, indent=2))

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_actions(self, request: HttpRequest) -> dict[str, Any]:
        return {}

    def delete_view(self, request: HttpRequest, object_id: str, extra_context: Any = None) -> Any:
        # Deleting a tool deletes its versions (the cascade needs the delete permission);
        # a version alone is never deleted.
        raise PermissionDenied
