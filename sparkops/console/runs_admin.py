"""Operator console for runs: lists with status badges, humanized durations and cost; a run's
page with its live graph and timeline (sparkops.console); actions that call `runs.services`
and report per row. Records (input, output, events) are read-only and shown as pretty JSON."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from projects.admin_scoping import ProjectScopedAdmin, staff_member
from projects.files import file_content_path, file_refs
from runs.models import IdempotencyKey, Run, RunEvent, RunStep
from sparkops.adminkit import ReadOnlyAdmin, admin_page, json_block
from sparkops.errors import SparkOpsError

from . import views as console
from .dashboard import stuck_filter
from .svg import money


def status_badge(status: str) -> str:
    return format_html(
        '<span class="console-badge status-{}">{}</span>',
        status,
        status.replace("_", " "),
    )


def humanize_ms(ms: int | float | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms:.0f} ms"
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _between_ms(start: Any, end: Any) -> float | None:
    if start is None:
        return None
    return ((end or timezone.now()) - start).total_seconds() * 1000


class StuckFilter(admin.SimpleListFilter):
    """Runs the sweeper would have to fix (the dashboard's "stuck" count links here)."""

    title = "stuck"
    parameter_name = "stuck"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Stuck (sweeper's criteria)")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Run]) -> QuerySet[Run]:
        if self.value() == "yes":
            return queryset.filter(stuck_filter(timezone.now()))
        return queryset


class RecordColumns:
    """Columns runs and steps share: status, tokens, cost, and their JSON records
    pretty-printed."""

    @admin.display(description="status", ordering="status")
    def badge(self, obj: Any) -> str:
        return status_badge(obj.status)

    @admin.display(description="tokens")
    def tokens(self, obj: Any) -> int:
        return obj.input_tokens + obj.output_tokens

    @admin.display(description="cost", ordering="cost")
    def cost_display(self, obj: Any) -> str:
        return money(obj.cost)

    @admin.display(description="input")
    def input_pretty(self, obj: Any) -> str:
        return json_block(obj.input)

    @admin.display(description="output")
    def output_pretty(self, obj: Any) -> str:
        return json_block(obj.output)

    @admin.display(description="files")
    def files(self, obj: Any) -> str:
        """Files in the input and the output; a run's page adds those of its steps."""
        values = [obj.input, obj.output]
        if isinstance(obj, Run):
            # a map's items are in the map step's output: not read one by one
            steps = obj.steps.filter(item_index__isnull=True).values_list("input", "output")
            values += [value for row in steps for value in row]
        return file_links(*values)

    @admin.display(description="error")
    def error_pretty(self, obj: Any) -> str:
        return json_block(obj.error)


def file_links(*values: Any) -> str:
    """A link per file the values refer to (a file input, a step's file output), to the files
    API's download (the console's session authenticates it; the API checks membership)."""
    seen: dict[str, dict[str, Any]] = {}
    for value in values:
        for ref in file_refs(value):
            seen.setdefault(str(ref["file"]), ref)
    if not seen:
        return "—"
    return format_html(
        '<ul class="console-files">{}</ul>',
        format_html_join(
            "",
            '<li><a href="{}" download>{}</a> <span class="console-note">{}, {} bytes</span></li>',
            (
                (file_content_path(key), ref["name"], ref["content_type"], ref["size"])
                for key, ref in seen.items()
            ),
        ),
    )


class StepColumns(RecordColumns):
    """A step's columns, on its run's page and on the steps' own pages."""

    @admin.display(description="duration")
    def duration(self, obj: RunStep) -> str:
        return humanize_ms(_between_ms(obj.started_at, obj.finished_at))


class RunStepInline(StepColumns, admin.TabularInline):
    model = RunStep
    extra = 0
    can_delete = False
    fields = (
        "node_id",
        "type",
        "badge",
        "attempt",
        "failures",
        "started_at",
        "duration",
        "tokens",
        "cost_display",
        "short_error",
    )
    readonly_fields = fields
    ordering = ["id"]
    show_change_link = True

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    @admin.display(description="error")
    def short_error(self, obj: RunStep) -> str:
        return str((obj.error or {}).get("message", ""))[:200]


# A run's page lists its latest events (a long run has thousands; all of them are one click
# away in the event list, filtered to the run).
EVENTS_ON_RUN_PAGE = 100


def _each(
    modeladmin: Any, request: Any, queryset: Any, label: str, fn: Any, noun: str = "run"
) -> None:
    """Apply `fn` to each row the operator may change, reporting every row's outcome."""
    ok, failed = 0, []
    for obj in queryset:
        if not modeladmin.may_write(request, obj):
            failed.append(f"{str(obj.pk)[:8]}: your role in its project does not allow this")
            continue
        try:
            fn(obj)
            ok += 1
        except SparkOpsError as exc:
            failed.append(f"{str(obj.pk)[:8]}: {exc.detail}")
    if ok:
        modeladmin.message_user(request, f"{label}: {ok} {noun}(s).", messages.SUCCESS)
    for line in failed:
        modeladmin.message_user(request, f"{label} failed for {line}", messages.ERROR)


class ReadOnlyRecord:
    """A run and a step are records the engine writes, not forms: their pages have no Save,
    "Save and continue" or Delete (Django shows a Close button instead), a POST to the change
    form is refused (403), and nothing deletes them (the API has no delete either). What an
    operator may do goes through the services: the run page's buttons and the list actions
    (cancel, retry, approve, reject), which check `may_write` themselves. Put it first in the
    bases."""

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        if obj is not None:
            return False
        # A mixin: the ModelAdmin after it in the bases has the method.
        return super().has_change_permission(request, obj)  # type: ignore[misc]

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


def _operation_action(operation: str, description: str) -> Any:
    """A bulk admin action doing one of the run page's operations (`console.RUN_OPERATIONS`:
    cancel, retry, resume) on each selected run."""
    label, operate = console.RUN_OPERATIONS[operation]

    @admin.action(description=description)
    def action(model_admin: Any, request: HttpRequest, queryset: QuerySet[Run]) -> None:
        actor = staff_member(request)
        _each(model_admin, request, queryset, label, lambda run: operate(run, actor))

    return action


@admin.register(Run)
class RunAdmin(ReadOnlyRecord, RecordColumns, ProjectScopedAdmin, admin.ModelAdmin):
    list_display = [
        "short_id",
        "workflow",
        "badge",
        "trigger",
        "created_at",
        "queue_wait",
        "duration",
        "tokens",
        "cost_display",
        "project",
    ]
    list_filter = [
        "status",
        "trigger",
        StuckFilter,
        ("project", admin.RelatedOnlyFieldListFilter),
        ("workflow", admin.RelatedOnlyFieldListFilter),
        "created_at",
    ]
    list_select_related = ["workflow", "project"]
    search_fields = ["id", "workflow__name", "workflow__slug", "project__name"]
    date_hierarchy = "created_at"
    raw_id_fields = ["workflow", "version", "parent_run", "project", "created_by"]
    readonly_fields = [
        "id",
        "project",
        "workflow",
        "version",
        "badge",
        "trigger",
        "input_pretty",
        "output_pretty",
        "files",
        "error_pretty",
        "parent_run",
        "reuse_succeeded",
        "chain_depth",
        "created_by",
        "created_at",
        "queued_at",
        "started_at",
        "finished_at",
        "deadline",
        "duration",
        "input_tokens",
        "output_tokens",
        "cost_display",
        "event_seq",
        "cancel_requested",
        "events_table",
    ]
    exclude = ["status", "input", "output", "error", "duration_ms", "cost"]
    inlines = [RunStepInline]
    actions = ["cancel_runs", "retry_runs", "retry_from_failure", "approve_runs", "reject_runs"]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def get_urls(self) -> list[Any]:
        def page(view: Any) -> Any:
            return admin_page(self, view)

        return [
            path("<path:object_id>/live/", page(console.run_live_view), name="runs_run_live"),
            path("<path:object_id>/stream/", page(console.run_stream_view), name="runs_run_stream"),
            path("<path:object_id>/decide/", page(console.run_decide_view), name="runs_run_decide"),
            path(
                "<path:object_id>/do/<str:operation>/",
                page(console.run_operation_view),
                name="runs_run_operation",
            ),
            *super().get_urls(),
        ]

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        run = self.get_object(request, unquote(object_id))
        extra = dict(extra_context or {})
        if run is not None:
            extra.update(
                console_run=console.run_picture(run),
                console_waiting=list(
                    run.steps.filter(status=RunStep.Status.WAITING_APPROVAL).order_by("node_id")
                ),
                console_can_write=self.may_write(request, run),
            )
        return super().change_view(request, object_id, form_url, extra)

    @admin.display(description="run", ordering="created_at")
    def short_id(self, obj: Run) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="queued")
    def queue_wait(self, obj: Run) -> str:
        if obj.queued_at is None:
            return "—"
        return humanize_ms(_between_ms(obj.queued_at, obj.started_at))

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj: Run) -> str:
        if obj.duration_ms is None and obj.started_at and not obj.is_finished:
            return f"{humanize_ms(_between_ms(obj.started_at, None))} so far"
        return humanize_ms(obj.duration_ms)

    @admin.display(description="events")
    def events_table(self, obj: Run) -> str:
        events = list(obj.events.order_by("-seq")[:EVENTS_ON_RUN_PAGE])
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            "<td><details><summary>{}</summary>{}</details></td></tr>",
            (
                (
                    e.seq,
                    e.type,
                    e.node_id or "",
                    e.attempt or "",
                    f"{e.created_at:%H:%M:%S.%f}"[:-3],
                    json.dumps(e.payload, default=str, ensure_ascii=False)[:90],
                    json_block(e.payload),
                )
                for e in events
            ),
        )
        link = reverse("admin:runs_runevent_changelist") + f"?run__id__exact={obj.pk}"
        return format_html(
            '<p>Latest {} of {} (newest first) · <a href="{}">all events of this run</a></p>'
            '<table class="console-table"><tr><th>seq</th><th>type</th><th>node</th>'
            "<th>attempt</th><th>at</th><th>payload</th></tr>{}</table>",
            len(events),
            obj.event_seq,
            link,
            rows,
        )

    cancel_runs = _operation_action("cancel", "Cancel selected runs")
    retry_runs = _operation_action("retry", "Retry selected runs")
    retry_from_failure = _operation_action("resume", "Retry selected runs from their failure")

    def _decide(self, request: Any, queryset: Any, *, approve: bool, action: str) -> Any:
        waiting = RunStep.objects.filter(
            run__in=queryset, status=RunStep.Status.WAITING_APPROVAL
        ).order_by("run__created_at", "id")
        return console.decide_action(
            _StepWriter(self), request, waiting, approve=approve, action=action
        )

    @admin.action(description="Approve the waiting steps of selected runs…")
    def approve_runs(self, request: Any, queryset: Any) -> Any:
        return self._decide(request, queryset, approve=True, action="approve_runs")

    @admin.action(description="Reject the waiting steps of selected runs…")
    def reject_runs(self, request: Any, queryset: Any) -> Any:
        return self._decide(request, queryset, approve=False, action="reject_runs")


class _StepWriter:
    """A run admin seen as the owner of steps (its page and rights, the step's run)."""

    def __init__(self, run_admin: RunAdmin) -> None:
        self.run_admin = run_admin
        self.opts = run_admin.opts
        self.admin_site = run_admin.admin_site

    def may_write(self, request: HttpRequest, step: RunStep) -> bool:
        return self.run_admin.may_write(request, step.run)

    def message_user(self, *args: Any, **kwargs: Any) -> None:
        self.run_admin.message_user(*args, **kwargs)


@admin.register(RunStep)
class RunStepAdmin(ReadOnlyRecord, StepColumns, ProjectScopedAdmin, admin.ModelAdmin):
    project_path = "run.project"
    list_display = [
        "node_id",
        "run_link",
        "workflow",
        "type",
        "badge",
        "attempt",
        "failures",
        "started_at",
        "duration",
        "tokens",
        "cost_display",
    ]
    list_filter = ["status", "type", "queued_at"]
    list_select_related = ["run__workflow"]
    search_fields = ["node_id", "run__id", "run__workflow__name"]
    raw_id_fields = ["run", "reused_from", "decided_by"]
    fields = (
        "run",
        "node_id",
        "type",
        "badge",
        "attempt",
        "failures",
        "queued_at",
        "started_at",
        "finished_at",
        "next_attempt_at",
        "heartbeat_at",
        "worker",
        "input_tokens",
        "output_tokens",
        "cost_display",
        "input_pretty",
        "output_pretty",
        "files",
        "error_pretty",
        "reused_from",
        "decided_by",
        "decided_at",
        "decision_comment",
        "state_pretty",
    )
    readonly_fields = fields
    actions = ["approve", "reject"]

    def has_add_permission(self, request: Any) -> bool:
        return False

    @admin.display(description="run", ordering="run__created_at")
    def run_link(self, obj: RunStep) -> str:
        return format_html(
            '<a href="{}">{}</a> {}',
            reverse("admin:runs_run_change", args=[obj.run_id]),
            str(obj.run_id)[:8],
            status_badge(obj.run.status),
        )

    @admin.display(description="workflow", ordering="run__workflow__name")
    def workflow(self, obj: RunStep) -> str:
        return obj.run.workflow.name

    @admin.display(description="saved agent loop")
    def state_pretty(self, obj: RunStep) -> str:
        return json_block(obj.state) if obj.state is not None else "—"

    def _decide(self, request: Any, queryset: Any, *, approve: bool, action: str) -> Any:
        waiting = queryset.filter(status=RunStep.Status.WAITING_APPROVAL)
        return console.decide_action(self, request, waiting, approve=approve, action=action)

    @admin.action(description="Approve selected waiting steps…")
    def approve(self, request: Any, queryset: Any) -> Any:
        return self._decide(request, queryset, approve=True, action="approve")

    @admin.action(description="Reject selected waiting steps…")
    def reject(self, request: Any, queryset: Any) -> Any:
        return self._decide(request, queryset, approve=False, action="reject")


@admin.register(RunEvent)
class RunEventAdmin(ProjectScopedAdmin, ReadOnlyAdmin):
    project_path = "run.project"
    list_display = ["run_short", "seq", "type", "node_id", "attempt", "summary", "created_at"]
    list_filter = ["type", "created_at"]
    list_select_related = ["run"]
    search_fields = ["run__id", "node_id"]
    date_hierarchy = "created_at"
    raw_id_fields = ["run"]
    fields = ("run", "seq", "type", "node_id", "attempt", "created_at", "payload_pretty")
    readonly_fields = fields

    @admin.display(description="run", ordering="run__created_at")
    def run_short(self, obj: RunEvent) -> str:
        return str(obj.run_id)[:8]

    @admin.display(description="summary")
    def summary(self, obj: RunEvent) -> str:
        payload = obj.payload or {}
        if "status" in payload:
            return status_badge(str(payload["status"]))
        if obj.type == RunEvent.Type.LLM_CALL:
            return (
                f"{payload.get('model', '')}: {payload.get('input_tokens', 0)} in / "
                f"{payload.get('output_tokens', 0)} out, ${payload.get('cost', 0)}"
            )
        if obj.type == RunEvent.Type.TOOL_CALL:
            return f"{payload.get('tool', '')}: {'ok' if payload.get('ok', True) else 'error'}"
        return json.dumps(payload, default=str)[:120]

    @admin.display(description="payload")
    def payload_pretty(self, obj: RunEvent) -> str:
        return json_block(obj.payload)


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    scope_through = "project"
    list_display = ["key", "project", "user", "run", "created_at"]
    list_select_related = ["project", "user", "run"]
    search_fields = ["key"]
    raw_id_fields = ["project", "user", "run"]
    fields = (
        "key",
        "project",
        "user",
        "run",
        "request_hash",
        "status_code",
        "created_at",
        "response_pretty",
    )
    readonly_fields = fields

    def has_add_permission(self, request: Any) -> bool:
        return False

    @admin.display(description="response")
    def response_pretty(self, obj: IdempotencyKey) -> str:
        return json_block(obj.response)
