"""Operator console for workflows. Saves go through `workflows.services` (the form's `clean()`
runs the same checks as the API, so errors show on the form), and versions are read-only."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join

from sparkops.errors import Conflict, InvalidInput, SparkOpsError

from . import services
from .definition import graph
from .models import Workflow, WorkflowVersion


class PrettyJSONField(forms.JSONField):
    """A JSON textarea that shows the value indented."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("widget", forms.Textarea(attrs={"rows": 20, "cols": 100}))
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return json.dumps(value, indent=2, ensure_ascii=False, cls=self.encoder)


def _pretty(value: Any) -> str:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))


# Which form field shows a service error, by the first part of its key.
_ERROR_FIELDS = {
    "definition",
    "retry_policy",
    "timeout_seconds",
    "max_concurrent_runs",
    "triggers",
    "status",
    "slug",
}


class WorkflowForm(forms.ModelForm):
    definition = PrettyJSONField()
    retry_policy = PrettyJSONField(required=False, widget=forms.Textarea(attrs={"rows": 6}))
    triggers = PrettyJSONField(required=False, widget=forms.Textarea(attrs={"rows": 6}))

    class Meta:
        model = Workflow
        fields = [
            "project",
            "name",
            "slug",
            "description",
            "status",
            "definition",
            "timeout_seconds",
            "retry_policy",
            "max_concurrent_runs",
            "triggers",
        ]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["slug"].required = False
        self.fields["slug"].help_text = "Leave empty to make one from the name."

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        project = cleaned.get("project") or getattr(self.instance, "project", None)
        if self.errors or project is None:
            return cleaned
        if cleaned.get("retry_policy") in (None, ""):
            cleaned["retry_policy"] = {}
        if cleaned.get("triggers") in (None, ""):
            cleaned["triggers"] = {}
        fields = {name: cleaned[name] for name in services.EDITABLE_FIELDS if name in cleaned}
        try:
            cleaned.update(services.workflow_clean(project=project, fields=fields))
        except SparkOpsError as exc:
            self._add_service_errors(exc)
        if not cleaned.get("slug") and self.instance.pk:
            cleaned["slug"] = self.instance.slug
        slug = cleaned.get("slug")
        # With `project` on the form, the model's unique constraint check covers this.
        if (
            "project" not in self.fields
            and slug
            and services.workflow_slug_taken(project, slug, exclude_pk=self.instance.pk)
        ):
            self.add_error("slug", "A workflow with this slug already exists in the project.")
        return cleaned

    def _add_service_errors(self, exc: SparkOpsError) -> None:
        if not exc.errors:
            self.add_error(None, exc.detail)
            return
        for key, messages_ in exc.errors.items():
            field = key.split(".")[0].split("[")[0]
            for message in messages_ if isinstance(messages_, list) else [messages_]:
                if field in _ERROR_FIELDS and field in self.fields:
                    text = message if key == field else f"{key}: {message}"
                    self.add_error(field, text)
                else:
                    self.add_error(None, f"{key}: {message}")


class WorkflowVersionInline(admin.TabularInline):
    model = WorkflowVersion
    extra = 0
    can_delete = False
    fields = ["number", "created_by", "created_at", "snapshot_pretty"]
    readonly_fields = fields
    ordering = ["-number"]
    show_change_link = True

    @admin.display(description="Snapshot")
    def snapshot_pretty(self, obj: WorkflowVersion) -> str:
        return _pretty(obj.snapshot)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkflowVersion]:
        return super().get_queryset(request).select_related("created_by")


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    form = WorkflowForm
    list_display = [
        "name",
        "slug",
        "project",
        "status",
        "version",
        "node_count",
        "updated_at",
    ]
    list_filter = ["status", "created_at", "updated_at"]
    list_select_related = ["project"]
    search_fields = ["name", "slug", "description", "project__name", "project__slug"]
    autocomplete_fields = ["project"]
    readonly_fields = ["version", "layers", "created_by", "created_at", "updated_at"]
    prepopulated_fields = {"slug": ("name",)}
    date_hierarchy = "created_at"
    inlines = [WorkflowVersionInline]
    actions = ["pause_workflows", "activate_workflows"]
    fieldsets = (
        (None, {"fields": ("project", "name", "slug", "description", "status")}),
        ("Definition", {"fields": ("definition", "layers")}),
        (
            "Run settings",
            {"fields": ("timeout_seconds", "retry_policy", "max_concurrent_runs", "triggers")},
        ),
        ("Audit", {"fields": ("version", "created_by", "created_at", "updated_at")}),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields.append("project")  # chosen on create, fixed afterwards
        return fields

    @admin.display(description="Nodes")
    def node_count(self, obj: Workflow) -> int:
        nodes = obj.definition.get("nodes") if isinstance(obj.definition, dict) else None
        return len(nodes) if isinstance(nodes, list) else 0

    @admin.display(description="Layers (nodes that may run in parallel)")
    def layers(self, obj: Workflow) -> str:
        if obj.pk is None:
            return "-"
        try:
            layers = graph(obj.definition)["layers"]
        except (SparkOpsError, KeyError, TypeError, ValueError):
            return "-"
        return format_html_join(
            "",
            "<div>{}. {}</div>",
            ((i + 1, ", ".join(str(n) for n in layer)) for i, layer in enumerate(layers)),
        )

    def save_model(self, request: HttpRequest, obj: Workflow, form: Any, change: bool) -> None:
        fields = {
            name: form.cleaned_data[name]
            for name in services.EDITABLE_FIELDS
            if name in form.cleaned_data
        }
        if change:
            saved = services.workflow_update(workflow=obj, actor=request.user, **fields)
        else:
            saved = services.workflow_create(
                actor=request.user, project=form.cleaned_data["project"], **fields
            )
            # The admin goes on with `obj` (log entry, redirect, inlines): give it the row.
            for field in Workflow._meta.concrete_fields:
                setattr(obj, field.attname, getattr(saved, field.attname))
            obj._state.adding = False
            obj._state.db = saved._state.db

    def delete_model(self, request: HttpRequest, obj: Workflow) -> None:
        services.workflow_delete(workflow=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        for workflow in queryset:
            services.workflow_delete(workflow=workflow, actor=request.user)

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Workflow], status: str) -> None:
        done = 0
        for workflow in queryset.select_related("project"):
            try:
                services.workflow_set_status(workflow=workflow, actor=request.user, status=status)
                done += 1
            except (InvalidInput, Conflict) as exc:
                errors = "; ".join(f"{k}: {', '.join(v)}" for k, v in (exc.errors or {}).items())
                self.message_user(
                    request, f"{workflow}: {exc.detail} {errors}".strip(), messages.ERROR
                )
        if done:
            self.message_user(request, f"{done} workflow(s) now {status}.", messages.SUCCESS)

    @admin.action(description="Pause selected workflows")
    def pause_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        self._set_status(request, queryset, Workflow.Status.PAUSED)

    @admin.action(description="Activate selected workflows (validates them)")
    def activate_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        self._set_status(request, queryset, Workflow.Status.ACTIVE)


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(admin.ModelAdmin):
    list_display = ["workflow", "number", "project", "created_by", "created_at"]
    list_select_related = ["workflow__project", "created_by"]
    list_filter = ["created_at"]
    search_fields = ["workflow__name", "workflow__slug", "workflow__project__slug"]
    fields = ["workflow", "number", "created_by", "created_at", "snapshot_pretty"]
    readonly_fields = fields
    ordering = ["workflow", "-number"]

    @admin.display(description="Project", ordering="workflow__project__name")
    def project(self, obj: WorkflowVersion) -> Any:
        return obj.workflow.project

    @admin.display(description="Snapshot")
    def snapshot_pretty(self, obj: WorkflowVersion) -> str:
        return _pretty(obj.snapshot)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
