"""Operator console for workflows. Saves go through `workflows.services` (the form's `clean()`
runs the same checks as the API, so errors show on the form), and versions are read-only."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from projects.admin_scoping import ProjectScopedAdmin, staff_member
from runs import services as run_services
from runs.models import Run
from sparkops.adminkit import (
    PrettyJSONField,
    ServiceAdmin,
    VersionAdmin,
    VersionInline,
    add_service_errors,
    admin_page,
    adopt,
    for_each_writable,
    present,
)
from sparkops.errors import SparkOpsError
from workflows import services
from workflows.definition import graph
from workflows.models import Workflow, WorkflowVersion

from . import views as console

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
        fields = ["project", *Workflow.EDITABLE_FIELDS]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "slug" in self.fields:  # absent on the read-only page of a viewer
            self.fields["slug"].required = False
            self.fields["slug"].help_text = "Leave empty to make one from the name."

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        project = cleaned.get("project") or getattr(self.instance, "project", None)
        if self.errors or project is None:
            return cleaned
        if cleaned.get("retry_policy") in (None, ""):
            cleaned["retry_policy"] = {}
        if cleaned.get("triggers") in (None, ""):
            cleaned["triggers"] = {}
        fields = present(cleaned, services.EDITABLE_FIELDS)
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


class WorkflowVersionInline(VersionInline):
    model = WorkflowVersion
    fields = ["number", "created_by", "created_at", "pictures", "snapshot_pretty"]
    readonly_fields = ["number", "created_by", "created_at", "pictures", "snapshot_pretty"]

    @admin.display(description="Pictures")
    def pictures(self, obj: WorkflowVersion) -> str:
        return _version_links(obj)


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
    latest = Run.objects.filter(workflow=OuterRef("pk")).order_by("-created_at")
    return Subquery(latest.values(field)[:1])


@admin.register(Workflow)
class WorkflowAdmin(ProjectScopedAdmin, ServiceAdmin):
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
    create_only = ("project",)
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

    def get_queryset(self, request: HttpRequest) -> QuerySet[Workflow]:
        # The last run's status and time: two correlated subqueries, no query per row.
        return (
            super()
            .get_queryset(request)
            .annotate(last_run_status=_last_run("status"), last_run_at=_last_run("created_at"))
        )

    def get_urls(self) -> list[Any]:
        def page(view: Any) -> Any:
            return admin_page(self, view)

        return [
            path(
                "<path:object_id>/graph/",
                page(console.workflow_graph_view),
                name="workflows_workflow_graph",
            ),
            path(
                "<path:object_id>/diff/",
                page(console.workflow_diff_view),
                name="workflows_workflow_diff",
            ),
            path(
                "<path:object_id>/run/", page(console.run_now_view), name="workflows_workflow_run"
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
        # Both annotated by get_queryset; absent on an object the admin loaded another way.
        status = getattr(obj, "last_run_status", None)
        if not status:
            return "—"
        return format_html(
            '<span class="console-badge status-{}">{}</span> <span class="mini quiet">{}</span>',
            status,
            status.replace("_", " "),
            f"{getattr(obj, 'last_run_at', None):%Y-%m-%d %H:%M}",
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
        fields = present(form.cleaned_data, services.EDITABLE_FIELDS)
        if change:
            services.workflow_update(workflow=obj, actor=staff_member(request), **fields)
        else:
            saved = services.workflow_create(
                actor=staff_member(request), project=form.cleaned_data["project"], **fields
            )
            adopt(obj, saved)

    def delete_model(self, request: HttpRequest, obj: Workflow) -> None:
        services.workflow_delete(workflow=obj, actor=staff_member(request))

    def _set_status(self, request: HttpRequest, queryset: QuerySet[Workflow], status: str) -> None:
        actor = staff_member(request)
        done = for_each_writable(
            self,
            request,
            queryset.select_related("project"),
            lambda workflow: services.workflow_set_status(
                workflow=workflow, actor=actor, status=status
            ),
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
        workflows = list(queryset.select_related("project"))
        if len(workflows) == 1:
            return HttpResponseRedirect(
                reverse("admin:workflows_workflow_run", args=[workflows[0].pk])
            )

        def start(workflow: Workflow) -> str:
            run = run_services.run_create(
                workflow=workflow, input={}, actor=staff_member(request), trigger=Run.Trigger.MANUAL
            )
            return f"{workflow}: started run {str(run.pk)[:8]}."

        for_each_writable(self, request, workflows, start)
        return None

    @admin.action(description="Clone selected workflows (as drafts)")
    def clone_workflows(self, request: HttpRequest, queryset: QuerySet[Workflow]) -> None:
        def clone(workflow: Workflow) -> str:
            copy = services.workflow_create(
                actor=staff_member(request),
                project=workflow.project,
                name=f"{workflow.name} (copy)"[:200],
                definition=workflow.definition,
                description=workflow.description,
                status=Workflow.Status.DRAFT,
                timeout_seconds=workflow.timeout_seconds,
                retry_policy=workflow.retry_policy,
                max_concurrent_runs=workflow.max_concurrent_runs,
            )
            return f"{workflow}: cloned as “{copy.name}” ({copy.slug})."

        for_each_writable(self, request, queryset.select_related("project"), clone)


@admin.register(WorkflowVersion)
class WorkflowVersionAdmin(ProjectScopedAdmin, VersionAdmin):
    versioned = "workflow"
    list_display = ["workflow", "number", "project", "created_by", "created_at", "pictures"]
    list_filter = ["created_at"]
    search_fields = ["workflow__name", "workflow__slug", "workflow__project__slug"]

    @admin.display(description="Pictures")
    def pictures(self, obj: WorkflowVersion) -> str:
        return _version_links(obj)

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<path:object_id>/graph/",
                admin_page(self, console.version_graph_view),
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
