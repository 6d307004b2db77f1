"""Operator console for triggers: schedules (with next fire times, enable/disable/fire-now
actions and their fires), webhook triggers (token shown once, rotation), event triggers, and
django-celery-beat's PeriodicTask admin with a warning that Spark-Ops overwrites its entries.
Saves go through the services; the forms' clean() runs the same checks as the API."""

from __future__ import annotations

import contextlib
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.sites import NotRegistered
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from projects.models import Membership, Project, Role
from sparkops.adminkit import PrettyJSONField, add_service_errors
from sparkops.console.scoping import ProjectScopedAdmin, scope
from sparkops.errors import SparkOpsError

from . import event_triggers as event_trigger_services
from . import schedules as schedule_services
from . import webhooks as webhook_services
from .models import (
    EventTrigger,
    EventTriggerFire,
    Schedule,
    ScheduleFire,
    WebhookReceipt,
    WebhookTrigger,
    Workflow,
)


class _WorkflowChoices:
    """Staff who are not superusers pick only workflows of projects where they may write."""

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.related_model is Workflow and not request.user.is_superuser:
            writable = Membership.objects.filter(
                user=request.user, role__in=[Role.OWNER, Role.ADMIN, Role.DEVELOPER]
            ).values("project_id")
            kwargs["queryset"] = Workflow.objects.filter(
                project__in=Project.objects.filter(pk__in=writable)
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)  # type: ignore[misc]


def _adopt(obj: Any, saved: Any) -> None:
    """The admin goes on with `obj` after a create (log entry, redirect): give it the row."""
    for field in type(saved)._meta.concrete_fields:
        setattr(obj, field.attname, getattr(saved, field.attname))
    obj._state.adding = False
    obj._state.db = saved._state.db


def _run_link(run_id: Any) -> str:
    if not run_id:
        return "-"
    return format_html(
        '<a href="{}">{}</a>', reverse("admin:runs_run_change", args=[run_id]), run_id
    )


class ScheduleForm(forms.ModelForm):
    input = PrettyJSONField(required=False, widget=forms.Textarea(attrs={"rows": 6}))

    class Meta:
        model = Schedule
        fields = [
            "workflow",
            "name",
            "description",
            "cron",
            "timezone",
            "input",
            "enabled",
            "start_at",
            "end_at",
            "overlap",
            "catch_up",
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        workflow = cleaned.get("workflow") or getattr(self.instance, "workflow", None)
        if self.errors or workflow is None:
            return cleaned
        if cleaned.get("input") in (None, ""):
            cleaned["input"] = {}
        fields = {k: cleaned[k] for k in schedule_services.EDITABLE_FIELDS if k in cleaned}
        try:
            cleaned.update(schedule_services.schedule_clean(workflow=workflow, fields=fields))
        except SparkOpsError as exc:
            add_service_errors(self, exc)
        return cleaned


class ScheduleFireInline(admin.TabularInline):
    model = ScheduleFire
    extra = 0
    can_delete = False
    max_num = 0
    fields = ["slot", "fired_at", "manual", "status", "reason", "run_link"]
    readonly_fields = fields
    ordering = ["-slot"]

    @admin.display(description="Run")
    def run_link(self, obj: ScheduleFire) -> str:
        return _run_link(obj.run_id)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ScheduleFire]:
        # The newest 20 only: a minutely schedule has thousands (all are in Schedule fires).
        queryset = super().get_queryset(request)
        recent = queryset.order_by("-slot").values_list("pk", flat=True)[:20]
        return queryset.filter(pk__in=list(recent))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Schedule)
class ScheduleAdmin(ProjectScopedAdmin, _WorkflowChoices, admin.ModelAdmin):
    form = ScheduleForm
    list_display = [
        "name",
        "workflow",
        "project",
        "cron",
        "timezone",
        "enabled",
        "overlap",
        "next_run_at",
        "last_fired_at",
        "last_run_link",
    ]
    list_filter = ["enabled", "overlap", "timezone", "catch_up"]
    list_select_related = ["workflow", "project"]
    search_fields = ["name", "description", "cron", "workflow__name", "project__slug"]
    autocomplete_fields = ["workflow"]
    readonly_fields = [
        "project",
        "upcoming",
        "next_run_at",
        "last_fired_at",
        "last_run_link",
        "periodic_task_link",
        "created_by",
        "created_at",
        "updated_at",
    ]
    inlines = [ScheduleFireInline]
    actions = ["enable_schedules", "disable_schedules", "fire_now"]
    fieldsets = (
        (None, {"fields": ("workflow", "project", "name", "description", "enabled")}),
        ("When", {"fields": ("cron", "timezone", "start_at", "end_at", "upcoming")}),
        ("Runs", {"fields": ("input", "overlap", "catch_up", "next_run_at", "last_fired_at")}),
        (
            "Audit",
            {
                "fields": (
                    "last_run_link",
                    "periodic_task_link",
                    "created_by",
                    "created_at",
                    "updated_at",
                )
            },
        ),
    )

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields.append("workflow")  # chosen on create, fixed afterwards
        return fields

    @admin.display(description="Last run")
    def last_run_link(self, obj: Schedule) -> str:
        return _run_link(obj.last_run_id)

    @admin.display(description="Beat entry")
    def periodic_task_link(self, obj: Schedule) -> str:
        if not obj.periodic_task_id:
            return "-"
        url = reverse("admin:django_celery_beat_periodictask_change", args=[obj.periodic_task_id])
        return format_html('<a href="{}">PeriodicTask {}</a> (written by Spark-Ops)', url, obj.pk)

    @admin.display(description="Next fire times")
    def upcoming(self, obj: Schedule) -> str:
        if obj.pk is None:
            return "-"
        try:
            times = schedule_services.schedule_upcoming(schedule=obj, count=5)
        except SparkOpsError:
            return "-"
        tz = schedule_services.cron.validate_timezone(obj.timezone)
        return format_html_join(
            "",
            "<div>{} <small>({} UTC)</small></div>",
            (
                (t.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z"), f"{t:%Y-%m-%d %H:%M}")
                for t in times
            ),
        ) or format_html("<em>{}</em>", "none (the schedule has ended)")

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        fields = {
            name: form.cleaned_data[name]
            for name in schedule_services.EDITABLE_FIELDS
            if name in form.cleaned_data
        }
        if change:
            schedule_services.schedule_update(schedule=obj, actor=request.user, **fields)
        else:
            saved = schedule_services.schedule_create(
                actor=request.user, workflow=form.cleaned_data["workflow"], **fields
            )
            _adopt(obj, saved)

    def delete_model(self, request: HttpRequest, obj: Schedule) -> None:
        schedule_services.schedule_delete(schedule=obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for schedule in queryset:
            schedule_services.schedule_delete(schedule=schedule, actor=request.user)

    def _set_enabled(self, request: HttpRequest, queryset: QuerySet[Schedule], on: bool) -> None:
        for schedule in queryset:
            schedule_services.schedule_set_enabled(
                schedule=schedule, actor=request.user, enabled=on
            )
        word = "enabled" if on else "disabled"
        self.message_user(request, f"{queryset.count()} schedule(s) {word}.", messages.SUCCESS)

    @admin.action(description="Enable selected schedules")
    def enable_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._set_enabled(request, queryset, True)

    @admin.action(description="Disable selected schedules")
    def disable_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._set_enabled(request, queryset, False)

    @admin.action(description="Fire selected schedules now (start a run each)")
    def fire_now(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for schedule in queryset:
            fire = schedule_services.schedule_fire_now(schedule=schedule, actor=request.user)
            if fire.run_id:
                self.message_user(request, f"{schedule}: started run {fire.run_id}.")
            else:
                self.message_user(request, f"{schedule}: {fire.reason}", messages.ERROR)


@admin.register(ScheduleFire)
class ScheduleFireAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    scope_through = "schedule"
    project_path = "schedule.project"
    list_display = ["schedule", "slot", "fired_at", "manual", "status", "reason", "run_link"]
    list_filter = ["status", "manual", "slot"]
    list_select_related = ["schedule"]
    search_fields = ["schedule__name", "reason"]
    fields = ["schedule", "slot", "fired_at", "manual", "status", "reason", "run_link"]
    readonly_fields = fields
    date_hierarchy = "slot"

    @admin.display(description="Run")
    def run_link(self, obj: ScheduleFire) -> str:
        return _run_link(obj.run_id)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ManagedPeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    """django-celery-beat's admin, with a warning on the tasks Spark-Ops writes. Staff who are
    not superusers see only the entries of schedules in their projects."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[PeriodicTask]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(
            pk__in=scope(Schedule.objects.all(), request.user).values("periodic_task_id")
        )

    def _warn(self, request: HttpRequest, obj: Any = None) -> None:
        if obj is None or obj.task == schedule_services.TASK_NAME:
            messages.warning(
                request,
                "Entries running workflows.schedule_fire are written by Spark-Ops from its "
                "Schedules: edits made here are overwritten by the next sync. Change the "
                "Schedule instead (Workflows > Schedules).",
            )

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        if request.method == "GET":
            self._warn(request)
        return super().changelist_view(request, extra_context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> Any:
        if request.method == "GET":
            self._warn(request, PeriodicTask.objects.filter(pk=object_id).first())
        return super().change_view(request, object_id, form_url, extra_context)


with contextlib.suppress(NotRegistered):
    admin.site.unregister(PeriodicTask)
admin.site.register(PeriodicTask, ManagedPeriodicTaskAdmin)


_WINDOW_FIELDS = ("timestamp_header", "timestamp_field", "tolerance_seconds")


class WebhookTriggerForm(forms.ModelForm):
    input_mapping = PrettyJSONField(required=False, widget=forms.Textarea(attrs={"rows": 8}))
    new_secret = forms.CharField(
        label="Signature secret",
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Write-only. Leave empty to keep the current one (or, for a new trigger with "
        "a signature mode, to generate one, shown once).",
    )

    class Meta:
        model = WebhookTrigger
        fields = [
            "workflow",
            "name",
            "description",
            "signature",
            "input_mapping",
            *_WINDOW_FIELDS,
            "enabled",
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        if cleaned.get("input_mapping") == "":
            cleaned["input_mapping"] = None
        names = ("name", "signature", "input_mapping", *_WINDOW_FIELDS)
        fields = {k: cleaned[k] for k in names if k in cleaned}
        if cleaned.get("new_secret"):
            fields["secret"] = cleaned["new_secret"]
        try:
            webhook_services.trigger_clean(fields)
        except SparkOpsError as exc:
            if exc.errors and "secret" in exc.errors:
                exc.errors["new_secret"] = exc.errors.pop("secret")
            add_service_errors(self, exc)
        return cleaned


@admin.register(WebhookTrigger)
class WebhookTriggerAdmin(ProjectScopedAdmin, _WorkflowChoices, admin.ModelAdmin):
    form = WebhookTriggerForm
    list_display = [
        "name",
        "workflow",
        "project",
        "token_prefix",
        "signature",
        "enabled",
        "last_delivery_at",
    ]
    list_filter = ["enabled", "signature"]
    list_select_related = ["workflow", "project"]
    search_fields = ["name", "token_prefix", "workflow__name", "project__slug"]
    autocomplete_fields = ["workflow"]
    readonly_fields = [
        "project",
        "token_prefix",
        "last_delivery_at",
        "created_by",
        "created_at",
        "updated_at",
    ]
    actions = ["rotate_tokens"]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields.append("workflow")
        return fields

    def _show_once(self, request: HttpRequest, what: str, value: str) -> None:
        self.message_user(request, f"{what} (shown once, copy it now): {value}", messages.WARNING)

    def save_model(
        self, request: HttpRequest, obj: WebhookTrigger, form: Any, change: bool
    ) -> None:
        data = form.cleaned_data
        fields = {
            k: data[k]
            for k in (
                "name",
                "description",
                "signature",
                "input_mapping",
                "enabled",
                *_WINDOW_FIELDS,
            )
            if k in data
        }
        if data.get("new_secret"):
            fields["secret"] = data["new_secret"]
        if change:
            _, generated = webhook_services.webhook_trigger_update(
                trigger=obj, actor=request.user, **fields
            )
            if generated:
                self._show_once(request, "Signature secret", generated)
            return
        saved, token, secret = webhook_services.webhook_trigger_create(
            actor=request.user, workflow=data["workflow"], **fields
        )
        _adopt(obj, saved)
        url = request.build_absolute_uri(reverse("hook", kwargs={"token": token}))
        self._show_once(request, "Webhook URL", url)
        if secret and not data.get("new_secret"):
            self._show_once(request, "Signature secret", secret)

    def delete_model(self, request: HttpRequest, obj: WebhookTrigger) -> None:
        webhook_services.webhook_trigger_delete(trigger=obj, actor=request.user)

    @admin.action(description="Rotate the token of selected triggers (old URLs stop working)")
    def rotate_tokens(self, request: HttpRequest, queryset: QuerySet[WebhookTrigger]) -> None:
        for trigger in queryset:
            token = webhook_services.webhook_trigger_rotate(trigger=trigger, actor=request.user)
            url = request.build_absolute_uri(reverse("hook", kwargs={"token": token}))
            self._show_once(request, f"New URL of {trigger.name}", url)


@admin.register(WebhookReceipt)
class WebhookReceiptAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    scope_through = "trigger"
    project_path = "trigger.project"
    list_display = ["delivery_id", "trigger", "run_link", "created_at"]
    list_select_related = ["trigger"]
    search_fields = ["delivery_id", "trigger__name"]
    list_filter = ["created_at"]
    fields = ["trigger", "delivery_id", "run_link", "created_at"]
    readonly_fields = fields

    @admin.display(description="Run")
    def run_link(self, obj: WebhookReceipt) -> str:
        return _run_link(obj.run_id)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class EventTriggerForm(forms.ModelForm):
    statuses = PrettyJSONField(
        initial=["succeeded"],
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=(
            'A JSON list of final statuses: ["succeeded", "failed", "cancelled", "timed_out"].'
        ),
    )
    input_mapping = PrettyJSONField(required=False, widget=forms.Textarea(attrs={"rows": 8}))

    class Meta:
        model = EventTrigger
        fields = [
            "source_workflow",
            "target_workflow",
            "name",
            "statuses",
            "input_mapping",
            "enabled",
        ]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        if cleaned.get("input_mapping") == "":
            cleaned["input_mapping"] = None
        source = cleaned.get("source_workflow") or getattr(self.instance, "source_workflow", None)
        target = cleaned.get("target_workflow") or getattr(self.instance, "target_workflow", None)
        if source and target and source.project_id != target.project_id:
            self.add_error("target_workflow", "Must be in the project of the source workflow.")
        fields = {k: cleaned[k] for k in ("name", "statuses", "input_mapping") if k in cleaned}
        try:
            cleaned.update(event_trigger_services.event_trigger_clean(fields))
        except SparkOpsError as exc:
            add_service_errors(self, exc)
        return cleaned


class EventTriggerFireInline(admin.TabularInline):
    model = EventTriggerFire
    extra = 0
    max_num = 0
    can_delete = False
    fields = ["created_at", "status", "chain_depth", "reason", "source", "started"]
    readonly_fields = fields
    ordering = ["-created_at"]

    @admin.display(description="Source run")
    def source(self, obj: EventTriggerFire) -> str:
        return _run_link(obj.source_run_id)

    @admin.display(description="Started run")
    def started(self, obj: EventTriggerFire) -> str:
        return _run_link(obj.run_id)

    def get_queryset(self, request: HttpRequest) -> QuerySet[EventTriggerFire]:
        queryset = super().get_queryset(request)
        recent = queryset.order_by("-created_at").values_list("pk", flat=True)[:20]
        return queryset.filter(pk__in=list(recent))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(EventTrigger)
class EventTriggerAdmin(ProjectScopedAdmin, _WorkflowChoices, admin.ModelAdmin):
    form = EventTriggerForm
    list_display = ["name", "source_workflow", "target_workflow", "project", "statuses", "enabled"]
    list_filter = ["enabled"]
    list_select_related = ["source_workflow", "target_workflow", "project"]
    search_fields = ["name", "source_workflow__name", "target_workflow__name", "project__slug"]
    autocomplete_fields = ["source_workflow", "target_workflow"]
    readonly_fields = ["project", "created_by", "created_at", "updated_at"]
    inlines = [EventTriggerFireInline]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields += ["source_workflow", "target_workflow"]
        return fields

    def save_model(self, request: HttpRequest, obj: EventTrigger, form: Any, change: bool) -> None:
        data = form.cleaned_data
        fields = {k: data[k] for k in ("name", "statuses", "input_mapping", "enabled") if k in data}
        if change:
            event_trigger_services.event_trigger_update(trigger=obj, actor=request.user, **fields)
            return
        saved = event_trigger_services.event_trigger_create(
            actor=request.user,
            source_workflow=data["source_workflow"],
            target_workflow=data["target_workflow"],
            **fields,
        )
        _adopt(obj, saved)

    def delete_model(self, request: HttpRequest, obj: EventTrigger) -> None:
        event_trigger_services.event_trigger_delete(trigger=obj, actor=request.user)


@admin.register(EventTriggerFire)
class EventTriggerFireAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    scope_through = "trigger"
    project_path = "trigger.project"
    list_display = ["trigger", "status", "chain_depth", "source", "started", "created_at"]
    list_filter = ["status", "created_at"]
    list_select_related = ["trigger"]
    search_fields = ["trigger__name", "reason"]
    fields = ["trigger", "status", "chain_depth", "reason", "source", "started", "created_at"]
    readonly_fields = fields

    @admin.display(description="Source run")
    def source(self, obj: EventTriggerFire) -> str:
        return _run_link(obj.source_run_id)

    @admin.display(description="Started run")
    def started(self, obj: EventTriggerFire) -> str:
        return _run_link(obj.run_id)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
