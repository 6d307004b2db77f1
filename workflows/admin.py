"""Operator console for workflows. Saves go through `workflows.services` (the form's `clean()`
runs the same checks as the API, so errors show on the form), and versions are read-only."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from sparkops.adminkit import PrettyJSONField, add_service_errors
from sparkops.console import views as console
from sparkops.console.palette import status_color
from sparkops.console.scoping import ProjectScopedAdmin
from sparkops.errors import Conflict, InvalidInput, SparkOpsError

from . import services
from .definition import graph
from .models import Workflow, WorkflowVersion


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
    definition = PrettyJSONField(rows=20)
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
        if "slug" in self.fields:  # absent on the read-only page of a viewer
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
            add_service_errors(self, exc, fields=_ERROR_FIELDS)
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


class WorkflowVersionInline(admin.TabularInline):
    model = WorkflowVersion
    extra = 0
    can_delete = False
    fields = ["number", "created_by", "created_at", "pictures", "snapshot_pretty"]
    readonly_fields = fields
    ordering = ["-number"]
    show_change_link = True

    @admin.display(description="Pictures")
    def pictures(self, obj: WorkflowVersion) -> str:
        return _version_links(obj)

    @admin.display(description="Snapshot")
    def snapshot_pretty(self, obj: WorkflowVersion) -> str:
        return _pretty(obj.snapshot)

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkflowVersion]:
        return super().get_queryset(request).select_related("created_by")


def _version_links(version: WorkflowVersion) -> str:
    graph_url = reverse("admin:workflows_workflowversion_graph", args=[version.pk])
    if version.number <= 1:
        return format_html('<a href="{}">graph</a>', graph_url)
    diff_url = reverse("admin:workflows_workflow_diff", args=[version.workflow_id])
    return format_html(
        '<a href="{}">graph</a> · <a href="{}?from={}&amp;to={}">diff with v{}</a>',
        graph_url,
        diff_url,
        version.number - 1,
        version.number,
        version.number - 1,
    )


def _last_run(field: str) -> Subquery:
    from runs.models import Run

    latest = Run.objects.filter(workflow=OuterRef("pk")).order_by("-created_at")
    return Subquery(latest.values(field)[:1])


@admin.register(Workflow)
class WorkflowAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    form = WorkflowForm
    list_display = [
        "name",
        "slug",
        "project",
        "status",
        "version",
        "node_count",
        "last_run",
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
    actions = ["run_now", "pause_workflows", "activate_workflows", "clone_workflows"]
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

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workflow]:
        # The last run's status and time: two correlated subqueries, no query per row.
        return (
            super()
            .get_queryset(request)
            .annotate(last_run_status=_last_run("status"), last_run_at=_last_run("created_at"))
        )

    def get_urls(self) -> list[Any]:
        def view(fn: Any) -> Any:
            return self.admin_site.admin_view(
                lambda request, *args, **kwargs: fn(self, request, *args, **kwargs)
            )

        return [
            path(
                "<path:object_id>/graph/",
                view(console.workflow_graph_view),
                name="workflows_workflow_graph",
            ),
            path(
                "<path:object_id>/diff/",
                view(console.workflow_diff_view),
                name="workflows_workflow_diff",
            ),
            path(
                "<path:object_id>/run/", view(console.run_now_view), name="workflows_workflow_run"
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        workflow = self.get_object(request, unquote(object_id))
        extra = dict(extra_context or {})
        if workflow is not None:
            extra["console_graph"] = console.dag_picture(workflow.definition)
        return super().change_view(request, object_id, form_url, extra)

    @admin.display(description="Last run", ordering="last_run_at")
    def last_run(self, obj: Workflow) -> str:
        status = getattr(obj, "last_run_status", None)
        if not status:
            return "—"
        return format_html(
            '<span style="background:{};color:#fff;padding:1px 7px;border-radius:8px;'
            'font-size:11px">{}</span> <span class="mini quiet">{}</span>',
            status_color(status),
            status.replace("_", " "),
            f"{obj.last_run_at:%Y-%m-%d %H:%M}",
        )

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
            if not self.may_write(request, workflow):
                self.message_user(
                    request, f"{workflow}: your role does not allow this.", messages.ERROR
                )
                continue
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

    @admin.action(description="Run now… (one: input form; several: empty input)")
    def run_now(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> Any:
        """One workflow: its input form. Several: each starts with an empty input, and each
        outcome (a run, or why the input or the workflow refused) is reported."""
        from runs import services as run_services
        from runs.models import Run

        workflows = list(queryset.select_related("project"))
        if len(workflows) == 1:
            return HttpResponseRedirect(
                reverse("admin:workflows_workflow_run", args=[workflows[0].pk])
            )
        for workflow in workflows:
            if not self.may_write(request, workflow):
                self.message_user(
                    request, f"{workflow}: your role does not allow this.", messages.ERROR
                )
                continue
            try:
                run = run_services.run_create(
                    workflow=workflow, input={}, actor=request.user, trigger=Run.Trigger.MANUAL
                )
            except SparkOpsError as exc:
                errors = "; ".join(f"{k}: {', '.join(v)}" for k, v in (exc.errors or {}).items())
                self.message_user(
                    request, f"{workflow}: {exc.detail} {errors}".strip(), messages.ERROR
                )
            else:
                self.message_user(
                    request, f"{workflow}: started run {str(run.pk)[:8]}.", messages.SUCCESS
                )
        return None

    @admin.action(description="Clone selected workflows (as drafts)")
    def clone_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        for workflow in queryset.select_related("project"):
            if not self.may_write(request, workflow):
                self.message_user(
                    request, f"{workflow}: your role does not allow this.", messages.ERROR
                )
                continue
            try:
                copy = services.workflow_create(
                    actor=request.user,
                    project=workflow.project,
                    name=f"{workflow.name} (copy)"[:200],
                    definition=workflow.definition,
                    description=workflow.description,
                    status=Workflow.Status.DRAFT,
                    timeout_seconds=workflow.timeout_seconds,
                    retry_policy=workflow.retry_policy,
                    max_concurrent_runs=workflow.max_concurrent_runs,
                )
            except SparkOpsError as exc:
                errors = "; ".join(f"{k}: {', '.join(v)}" for k, v in (exc.errors or {}).items())
                self.message_user(
                    request, f"{workflow}: {exc.detail} {errors}".strip(), messages.ERROR
                )
            else:
                self.message_user(
                    request, f"{workflow}: cloned as “{copy.name}” ({copy.slug}).", messages.SUCCESS
                )


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    scope_through = "workflow"
    project_path = "workflow.project"
    list_display = ["workflow", "number", "project", "created_by", "created_at", "pictures"]
    list_select_related = ["workflow__project", "created_by"]
    list_filter = ["created_at"]
    search_fields = ["workflow__name", "workflow__slug", "workflow__project__slug"]
    fields = ["workflow", "number", "created_by", "created_at", "snapshot_pretty"]
    readonly_fields = fields
    ordering = ["workflow", "-number"]

    @admin.display(description="Project", ordering="workflow__project__name")
    def project(self, obj: WorkflowVersion) -> Any:
        return obj.workflow.project

    @admin.display(description="Pictures")
    def pictures(self, obj: WorkflowVersion) -> str:
        return _version_links(obj)

    def get_urls(self) -> list[Any]:
        def graph(request: HttpRequest, object_id: str) -> HttpResponse:
            return console.version_graph_view(self, request, object_id)

        return [
            path(
                "<path:object_id>/graph/",
                self.admin_site.admin_view(graph),
                name="workflows_workflowversion_graph",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        version = self.get_object(request, unquote(object_id))
        extra = dict(extra_context or {})
        if version is not None:
            extra["console_graph"] = console.dag_picture((version.snapshot or {}).get("definition"))
        return super().change_view(request, object_id, form_url, extra)

    @admin.display(description="Snapshot")
    def snapshot_pretty(self, obj: WorkflowVersion) -> str:
        return _pretty(obj.snapshot)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# Schedules, webhook triggers and event triggers (and the PeriodicTask warning).
from . import trigger_admin  # noqa: E402, F401
