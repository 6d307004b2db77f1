from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.utils.html import format_html

from sparkops.errors import SparkOpsError

from . import services
from .models import IdempotencyKey, Run, RunEvent, RunStep

STATUS_COLORS = {
    "pending": "#9ca3af",
    "queued": "#60a5fa",
    "running": "#2563eb",
    "waiting_approval": "#d97706",
    "succeeded": "#16a34a",
    "failed": "#dc2626",
    "cancelled": "#6b7280",
    "timed_out": "#b91c1c",
    "skipped": "#a3a3a3",
}


def status_badge(status: str) -> str:
    return format_html(
        '<span style="background:{};color:#fff;padding:1px 6px;border-radius:8px;'
        'font-size:11px">{}</span>',
        STATUS_COLORS.get(status, "#6b7280"),
        status.replace("_", " "),
    )


def pretty_json(value: Any) -> str:
    return format_html(
        '<pre style="white-space:pre-wrap;max-width:900px;margin:0">{}</pre>',
        json.dumps(value, indent=2, default=str, ensure_ascii=False),
    )


def humanize_ms(ms: int | None) -> str:
    if ms is None:
        return "—"
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


class RunStepInline(admin.TabularInline):
    model = RunStep
    extra = 0
    can_delete = False
    fields = [
        "node_id",
        "type",
        "badge",
        "attempt",
        "failures",
        "started_at",
        "finished_at",
        "cost",
        "short_error",
    ]
    readonly_fields = fields
    ordering = ["id"]

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    @admin.display(description="status")
    def badge(self, obj: RunStep) -> str:
        return status_badge(obj.status)

    @admin.display(description="error")
    def short_error(self, obj: RunStep) -> str:
        return (obj.error or {}).get("message", "")[:200]


class RunEventInline(admin.TabularInline):
    model = RunEvent
    extra = 0
    can_delete = False
    fields = ["seq", "type", "node_id", "attempt", "created_at", "payload_pretty"]
    readonly_fields = fields
    ordering = ["seq"]
    max_num = 0

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    @admin.display(description="payload")
    def payload_pretty(self, obj: RunEvent) -> str:
        return pretty_json(obj.payload)


def _each(modeladmin: admin.ModelAdmin, request: Any, queryset: Any, label: str, fn: Any) -> None:
    """Apply `fn` to each row, reporting per-row outcomes."""
    ok, failed = 0, []
    for obj in queryset:
        try:
            fn(obj)
            ok += 1
        except SparkOpsError as exc:
            failed.append(f"{obj.pk}: {exc.detail}")
    if ok:
        modeladmin.message_user(request, f"{label}: {ok} run(s).", messages.SUCCESS)
    for line in failed:
        modeladmin.message_user(request, f"{label} failed for {line}", messages.ERROR)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = [
        "short_id",
        "workflow",
        "badge",
        "trigger",
        "created_at",
        "duration",
        "tokens",
        "cost",
        "project",
    ]
    list_filter = ["status", "trigger", "project", "created_at"]
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
        "cost",
        "event_seq",
        "cancel_requested",
    ]
    exclude = ["status", "input", "output", "error", "duration_ms"]
    inlines = [RunStepInline, RunEventInline]
    actions = ["cancel_runs", "retry_runs", "retry_from_failure"]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def get_queryset(self, request: Any) -> Any:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.for_user(request.user)

    @admin.display(description="run", ordering="created_at")
    def short_id(self, obj: Run) -> str:
        return str(obj.pk)[:8]

    @admin.display(description="status", ordering="status")
    def badge(self, obj: Run) -> str:
        return status_badge(obj.status)

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, obj: Run) -> str:
        return humanize_ms(obj.duration_ms)

    @admin.display(description="tokens")
    def tokens(self, obj: Run) -> int:
        return obj.input_tokens + obj.output_tokens

    @admin.display(description="input")
    def input_pretty(self, obj: Run) -> str:
        return pretty_json(obj.input)

    @admin.display(description="output")
    def output_pretty(self, obj: Run) -> str:
        return pretty_json(obj.output)

    @admin.display(description="error")
    def error_pretty(self, obj: Run) -> str:
        return pretty_json(obj.error)

    @admin.action(description="Cancel selected runs")
    def cancel_runs(self, request: Any, queryset: Any) -> None:
        _each(
            self,
            request,
            queryset,
            "Cancelled",
            lambda r: services.run_cancel(run=r, actor=request.user),
        )

    @admin.action(description="Retry selected runs")
    def retry_runs(self, request: Any, queryset: Any) -> None:
        _each(
            self,
            request,
            queryset,
            "Retried",
            lambda r: services.run_retry(run=r, actor=request.user),
        )

    @admin.action(description="Retry selected runs from their failure")
    def retry_from_failure(self, request: Any, queryset: Any) -> None:
        _each(
            self,
            request,
            queryset,
            "Resumed",
            lambda r: services.run_retry(run=r, actor=request.user, from_failure=True),
        )


@admin.register(RunStep)
class RunStepAdmin(admin.ModelAdmin):
    list_display = [
        "node_id",
        "run",
        "type",
        "badge",
        "attempt",
        "started_at",
        "finished_at",
        "cost",
    ]
    list_filter = ["status", "type"]
    list_select_related = ["run"]
    search_fields = ["node_id", "run__id"]
    raw_id_fields = ["run", "reused_from", "decided_by"]
    actions = ["approve", "reject"]

    def get_readonly_fields(self, request: Any, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def get_queryset(self, request: Any) -> Any:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.for_user(request.user)

    @admin.display(description="status", ordering="status")
    def badge(self, obj: RunStep) -> str:
        return status_badge(obj.status)

    def _decide(self, request: Any, queryset: Any, approve: bool) -> None:
        label = "Approved" if approve else "Rejected"
        _each(
            self,
            request,
            queryset,
            label,
            lambda s: services.step_decide(
                run=s.run,
                node_id=s.node_id,
                actor=request.user,
                approve=approve,
                comment=f"{label.lower()} in the admin",
            ),
        )

    @admin.action(description="Approve selected waiting steps")
    def approve(self, request: Any, queryset: Any) -> None:
        self._decide(request, queryset, True)

    @admin.action(description="Reject selected waiting steps")
    def reject(self, request: Any, queryset: Any) -> None:
        self._decide(request, queryset, False)


@admin.register(RunEvent)
class RunEventAdmin(admin.ModelAdmin):
    list_display = ["run", "seq", "type", "node_id", "attempt", "created_at"]
    list_filter = ["type"]
    list_select_related = ["run"]
    search_fields = ["run__id", "node_id"]
    date_hierarchy = "created_at"
    raw_id_fields = ["run"]

    def get_readonly_fields(self, request: Any, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(IdempotencyKey)
class IdempotencyKeyAdmin(admin.ModelAdmin):
    list_display = ["key", "project", "user", "run", "created_at"]
    list_select_related = ["project", "user", "run"]
    search_fields = ["key"]
    raw_id_fields = ["project", "user", "run"]

    def get_readonly_fields(self, request: Any, obj: Any = None) -> list[str]:
        return [f.name for f in self.model._meta.fields]

    def has_add_permission(self, request: Any) -> bool:
        return False
