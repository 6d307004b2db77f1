"""Operator console for triggers: schedules (with next fire times, enable/disable/fire-now
actions and their fires), webhook triggers (token shown once, rotation), event triggers, and
django-celery-beat's PeriodicTask admin with a warning that Spark-Ops overwrites its entries.
Saves go through the services; the forms' clean() runs the same checks as the API."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.exceptions import NotRegistered
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django_celery_beat.admin import PeriodicTaskAdmin as BeatPeriodicTaskAdmin
from django_celery_beat.models import PeriodicTask

from projects.admin_scoping import ProjectScopedAdmin, scope, staff_member
from projects.models import Membership, Project, Role
from runs.triggers import schedules as schedule_firing
from sparkops.adminkit import PrettyJSONField, ServiceAdmin, add_service_errors, adopt, present
from sparkops.errors import SparkOpsError
from workflows import event_triggers as event_trigger_services
from workflows import schedules as schedule_services
from workflows import webhooks as webhook_services
from workflows.models import (
    EventTrigger,
    EventTriggerFire,
    Schedule,
    ScheduleFire,
    WebhookReceipt,
    WebhookTrigger,
    Workflow,
)


class _TriggerAdmin(ProjectScopedAdmin, ServiceAdmin):
    """A trigger of a workflow, written by its service: staff who are not superusers pick only
    workflows of projects where they may write, and the workflow is fixed once created."""

    create_only: tuple[str, ...] = ("workflow",)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.related_model is Workflow and not request.user.is_superuser:
            writable = Membership.objects.filter(
                user=staff_member(request), role__in=[Role.OWNER, Role.ADMIN, Role.DEVELOPER]
            ).values("project_id")
            kwargs["queryset"] = Workflow.objects.filter(
                project__in=Project.objects.filter(pk__in=writable)
            )
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class _RecordAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    """What a trigger left behind (fires, receipts): listed and viewed, never added or changed."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class _NewestInline(admin.TabularInline):
    """A trigger's fires under it, read-only: the newest 20 by `newest` (a minutely schedule
    has thousands; all are on the fires' own page)."""

    newest = ""
    extra = 0
    can_delete = False
    max_num = 0

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        queryset = super().get_queryset(request)
        recent = queryset.order_by(f"-{self.newest}").values_list("pk", flat=True)[:20]
        return queryset.filter(pk__in=list(recent))

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _run_link(run_id: Any) -> str:
    if not run_id:
        return "-"
    return format_html(
        '<a href="{}">{}</a>', reverse("admin:runs_run_change", args=[run_id]), run_id
    )


def _run_column(description: str, attname: str = "run_id") -> Callable[[Any, Any], str]:
    """An admin column linking the run whose id is `obj.<attname>`."""

    @admin.display(description=description)
    def column(admin_: Any, obj: Any) -> str:
        return _run_link(getattr(obj, attname))

    return column


class ScheduleForm(forms.ModelForm):
    input = PrettyJSONField(required=False, widget=forms.Textarea(attrs={"rows": 6}))

    class Meta:
        model = Schedule
        fields = ["workflow", *Schedule.EDITABLE_FIELDS]

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        workflow = cleaned.get("workflow") or getattr(self.instance, "workflow", None)
        if self.errors or workflow is None:
            return cleaned
        if cleaned.get("input") in (None, ""):
            cleaned["input"] = {}
        fields = present(cleaned, Schedule.EDITABLE_FIELDS)
        try:
            cleaned.update(schedule_services.schedule_clean(workflow=workflow, fields=fields))
        except SparkOpsError as exc:
            add_service_errors(self, exc)
        return cleaned


_SCHEDULE_FIRE_FIELDS = ("slot", "fired_at", "manual", "status", "reason", "run_link")


class ScheduleFireInline(_NewestInline):
    model = ScheduleFire
    newest = "slot"
    fields = _SCHEDULE_FIRE_FIELDS
    readonly_fields = _SCHEDULE_FIRE_FIELDS
    ordering = ["-slot"]
    run_link = _run_column("Run")


@admin.register(Schedule)
class ScheduleAdmin(_TriggerAdmin):
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
        "paused_at",
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
        (
            None,
            {"fields": ("workflow", "project", "name", "description", "enabled", "paused_at")},
        ),
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

    last_run_link = _run_column("Last run", "last_run_id")

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
        fields = present(form.cleaned_data, Schedule.EDITABLE_FIELDS)
        if change:
            schedule_services.schedule_update(schedule=obj, actor=staff_member(request), **fields)
        else:
            saved = schedule_services.schedule_create(
                actor=staff_member(request), workflow=form.cleaned_data["workflow"], **fields
            )
            adopt(obj, saved)

    def delete_model(self, request: HttpRequest, obj: Schedule) -> None:
        schedule_services.schedule_delete(schedule=obj, actor=staff_member(request))

    # Pause and resume, as the API's: audited, and a resume with catch_up fires the latest slot
    # missed while paused.
    @admin.action(description="Resume selected schedules")
    def enable_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for schedule in queryset:
            _, fire = schedule_firing.schedule_resume(
                schedule=schedule, actor=staff_member(request)
            )
            if fire is not None and fire.run_id:
                self.message_user(request, f"{schedule}: caught up, started run {fire.run_id}.")
        self.message_user(request, f"{queryset.count()} schedule(s) resumed.", messages.SUCCESS)

    @admin.action(description="Pause selected schedules")
    def disable_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for schedule in queryset:
            schedule_services.schedule_pause(schedule=schedule, actor=staff_member(request))
        self.message_user(request, f"{queryset.count()} schedule(s) paused.", messages.SUCCESS)

    @admin.action(description="Fire selected schedules now (start a run each)")
    def fire_now(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for schedule in queryset:
            fire = schedule_firing.schedule_fire_now(schedule=schedule, actor=staff_member(request))
            if fire.run_id:
                self.message_user(request, f"{schedule}: started run {fire.run_id}.")
            else:
                self.message_user(request, f"{schedule}: {fire.reason}", messages.ERROR)


@admin.register(ScheduleFire)
class ScheduleFireAdmin(_RecordAdmin):
    scope_through = "schedule"
    project_path = "schedule.project"
    list_display = ["schedule", *_SCHEDULE_FIRE_FIELDS]
    list_filter = ["status", "manual", "slot"]
    list_select_related = ["schedule"]
    search_fields = ["schedule__name", "reason"]
    fields = ["schedule", *_SCHEDULE_FIRE_FIELDS]
    readonly_fields = ["schedule", *_SCHEDULE_FIRE_FIELDS]
    date_hierarchy = "slot"
    run_link = _run_column("Run")


class ManagedPeriodicTaskAdmin(BeatPeriodicTaskAdmin):
    """django-celery-beat's admin, with a warning on the tasks Spark-Ops writes. Staff who are
    not superusers see only the entries of schedules in their projects."""

    def get_queryset(self, request: HttpRequest) -> QuerySet[PeriodicTask]:
        queryset = super().get_queryset(request)
        if request.user.is_superuser:
            return queryset
        return queryset.filter(
            pk__in=scope(Schedule.objects.all(), staff_member(request)).values("periodic_task_id")
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
# What the webhook form checks (`trigger_clean`) and what a save hands the service.
_WEBHOOK_CHECKED = ("name", "signature", "input_mapping", *_WINDOW_FIELDS)
_WEBHOOK_SAVED = ("description", "enabled", *_WEBHOOK_CHECKED)


class _MappingForm(forms.ModelForm):
    """A trigger's form with an optional input mapping (an emptied textarea is no mapping);
    the trigger's own checks (`check`) run once every field has parsed."""

    input_mapping = PrettyJSONField(required=False, widget=forms.Textarea(attrs={"rows": 8}))

    def clean(self) -> dict[str, Any]:
        super().clean()
        cleaned = self.cleaned_data
        if self.errors:
            return cleaned
        if cleaned.get("input_mapping") == "":
            cleaned["input_mapping"] = None
        self.check(cleaned)
        return cleaned

    def check(self, cleaned: dict[str, Any]) -> None:
        raise NotImplementedError


class WebhookTriggerForm(_MappingForm):
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

    def check(self, cleaned: dict[str, Any]) -> None:
        fields = present(cleaned, _WEBHOOK_CHECKED)
        if cleaned.get("new_secret"):
            fields["secret"] = cleaned["new_secret"]
        try:
            webhook_services.trigger_clean(fields)
        except SparkOpsError as exc:
            if exc.errors and "secret" in exc.errors:
                exc.errors["new_secret"] = exc.errors.pop("secret")
            add_service_errors(self, exc)


@admin.register(WebhookTrigger)
class WebhookTriggerAdmin(_TriggerAdmin):
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

    def _show_once(self, request: HttpRequest, what: str, value: str) -> None:
        self.message_user(request, f"{what} (shown once, copy it now): {value}", messages.WARNING)

    def save_model(
        self, request: HttpRequest, obj: WebhookTrigger, form: Any, change: bool
    ) -> None:
        data = form.cleaned_data
        fields = present(data, _WEBHOOK_SAVED)
        if data.get("new_secret"):
            fields["secret"] = data["new_secret"]
        if change:
            _, generated = webhook_services.webhook_trigger_update(
                trigger=obj, actor=staff_member(request), **fields
            )
            if generated:
                self._show_once(request, "Signature secret", generated)
            return
        saved, token, secret = webhook_services.webhook_trigger_create(
            actor=staff_member(request), workflow=data["workflow"], **fields
        )
        adopt(obj, saved)
        url = request.build_absolute_uri(reverse("hook", kwargs={"token": token}))
        self._show_once(request, "Webhook URL", url)
        if secret and not data.get("new_secret"):
            self._show_once(request, "Signature secret", secret)

    def delete_model(self, request: HttpRequest, obj: WebhookTrigger) -> None:
        webhook_services.webhook_trigger_delete(trigger=obj, actor=staff_member(request))

    @admin.action(description="Rotate the token of selected triggers (old URLs stop working)")
    def rotate_tokens(self, request: HttpRequest, queryset: QuerySet[WebhookTrigger]) -> None:
        for trigger in queryset:
            token = webhook_services.webhook_trigger_rotate(
                trigger=trigger, actor=staff_member(request)
            )
            url = request.build_absolute_uri(reverse("hook", kwargs={"token": token}))
            self._show_once(request, f"New URL of {trigger.name}", url)


@admin.register(WebhookReceipt)
class WebhookReceiptAdmin(_RecordAdmin):
    scope_through = "trigger"
    project_path = "trigger.project"
    list_display = ["delivery_id", "trigger", "run_link", "created_at"]
    list_select_related = ["trigger"]
    search_fields = ["delivery_id", "trigger__name"]
    list_filter = ["created_at"]
    fields = ["trigger", "delivery_id", "run_link", "created_at"]
    readonly_fields = ["trigger", "delivery_id", "run_link", "created_at"]
    run_link = _run_column("Run")


# What the event trigger form checks (`event_trigger_clean`) and what a save hands the service.
_EVENT_CHECKED = ("name", "statuses", "input_mapping")
_EVENT_SAVED = (*_EVENT_CHECKED, "enabled")


class EventTriggerForm(_MappingForm):
    statuses = PrettyJSONField(
        initial=["succeeded"],
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=(
            'A JSON list of final statuses: ["succeeded", "failed", "cancelled", "timed_out"].'
        ),
    )

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

    def check(self, cleaned: dict[str, Any]) -> None:
        source = cleaned.get("source_workflow") or getattr(self.instance, "source_workflow", None)
        target = cleaned.get("target_workflow") or getattr(self.instance, "target_workflow", None)
        if source and target and source.project_id != target.project_id:
            self.add_error("target_workflow", "Must be in the project of the source workflow.")
        fields = present(cleaned, _EVENT_CHECKED)
        try:
            cleaned.update(event_trigger_services.event_trigger_clean(fields))
        except SparkOpsError as exc:
            add_service_errors(self, exc)


_EVENT_FIRE_FIELDS = ("created_at", "status", "chain_depth", "reason", "source", "started")
_source_run = _run_column("Source run", "source_run_id")
_started_run = _run_column("Started run")


class EventTriggerFireInline(_NewestInline):
    model = EventTriggerFire
    newest = "created_at"
    fields = _EVENT_FIRE_FIELDS
    readonly_fields = _EVENT_FIRE_FIELDS
    ordering = ["-created_at"]
    source = _source_run
    started = _started_run


@admin.register(EventTrigger)
class EventTriggerAdmin(_TriggerAdmin):
    form = EventTriggerForm
    list_display = ["name", "source_workflow", "target_workflow", "project", "statuses", "enabled"]
    list_filter = ["enabled"]
    list_select_related = ["source_workflow", "target_workflow", "project"]
    search_fields = ["name", "source_workflow__name", "target_workflow__name", "project__slug"]
    autocomplete_fields = ["source_workflow", "target_workflow"]
    readonly_fields = ["project", "created_by", "created_at", "updated_at"]
    inlines = [EventTriggerFireInline]
    create_only = ("source_workflow", "target_workflow")

    def save_model(self, request: HttpRequest, obj: EventTrigger, form: Any, change: bool) -> None:
        data = form.cleaned_data
        fields = present(data, _EVENT_SAVED)
        actor = staff_member(request)
        if change:
            event_trigger_services.event_trigger_update(trigger=obj, actor=actor, **fields)
            return
        saved = event_trigger_services.event_trigger_create(
            actor=actor,
            source_workflow=data["source_workflow"],
            target_workflow=data["target_workflow"],
            **fields,
        )
        adopt(obj, saved)

    def delete_model(self, request: HttpRequest, obj: EventTrigger) -> None:
        event_trigger_services.event_trigger_delete(trigger=obj, actor=staff_member(request))


@admin.register(EventTriggerFire)
class EventTriggerFireAdmin(_RecordAdmin):
    scope_through = "trigger"
    project_path = "trigger.project"
    list_display = ["trigger", "status", "chain_depth", "source", "started", "created_at"]
    list_filter = ["status", "created_at"]
    list_select_related = ["trigger"]
    search_fields = ["trigger__name", "reason"]
    fields = ("trigger", "status", "chain_depth", "reason", "source", "started", "created_at")
    readonly_fields = fields
    source = _source_run
    started = _started_run
