from __future__ import annotations

from typing import Any

from django.db import models

from projects.models import Project
from sparkops.models import Authored, VersionBase


class WorkflowQuerySet(models.QuerySet["Workflow"]):
    def for_user(self, user: Any) -> WorkflowQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))


def default_retry_policy() -> dict[str, Any]:
    return {"max_attempts": 1, "backoff_seconds": 2, "max_backoff_seconds": 300}


class Workflow(Authored):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        ACTIVE = "active", "Active"
        PAUSED = "paused", "Paused"
        ARCHIVED = "archived", "Archived"

    # What a caller may set, besides `project` (chosen on create, fixed afterwards): the one
    # list the service, the API serializer and the admin form take theirs from.
    EDITABLE_FIELDS = (
        "name",
        "slug",
        "description",
        "definition",
        "status",
        "timeout_seconds",
        "retry_policy",
        "max_concurrent_runs",
        "triggers",
    )

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="workflows")
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100)
    description = models.TextField(blank=True)
    definition = models.JSONField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    timeout_seconds = models.PositiveIntegerField(
        default=3600, help_text="Run deadline: a run still active after this is timed out."
    )
    retry_policy = models.JSONField(
        default=default_retry_policy, blank=True, help_text="Default step retry policy."
    )
    max_concurrent_runs = models.PositiveIntegerField(
        null=True, blank=True, help_text="Extra runs wait in `queued`, in order. Empty: no limit."
    )
    triggers = models.JSONField(default=dict, blank=True)
    version = models.PositiveIntegerField(default=1)

    objects = WorkflowQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "slug"], name="workflows_workflow_unique_slug"
            )
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def current_version(self) -> WorkflowVersion:
        return self.versions.get(number=self.version)


class WorkflowVersion(VersionBase):
    """`snapshot` holds the definition and the run settings (timeout, retry policy) a run pins."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="versions")
    versioned_field = "workflow"

    class Meta(VersionBase.Meta):
        constraints = [
            models.UniqueConstraint(fields=["workflow", "number"], name="workflows_version_unique")
        ]


# --- Triggers: schedules, inbound webhooks, event chaining -------------------------------------


class TriggerQuerySet(models.QuerySet[Any]):
    def for_user(self, user: Any) -> TriggerQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))


class Schedule(Authored):
    """A cron schedule of a workflow. Mirrored to one django-celery-beat PeriodicTask (+ its
    CrontabSchedule) by `workflows.schedules` only; beat fires `workflows.schedule_fire`, which
    records one ScheduleFire per fire slot (unique), so a double fire never starts two runs."""

    class Overlap(models.TextChoices):
        ALLOW = "allow", "Allow: start a run on every fire"
        SKIP = "skip", "Skip while the previous run is active"
        QUEUE = "queue", "Queue one fire until the previous run finishes"

    # What a caller may set, besides `workflow` (chosen on create, fixed afterwards): the one
    # list the service, the API serializer and the admin form take theirs from.
    EDITABLE_FIELDS = (
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
    )

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="schedules")
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="schedules")
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    cron = models.CharField(
        max_length=200, help_text="Five fields: minute hour day-of-month month day-of-week."
    )
    timezone = models.CharField(max_length=64, default="UTC", help_text="IANA time zone name.")
    input = models.JSONField(default=dict, blank=True, help_text="The input of every run.")
    enabled = models.BooleanField(default=True)
    start_at = models.DateTimeField(null=True, blank=True, help_text="No fire before this.")
    end_at = models.DateTimeField(null=True, blank=True, help_text="No fire from this on.")
    overlap = models.CharField(max_length=8, choices=Overlap.choices, default=Overlap.SKIP)
    catch_up = models.BooleanField(
        default=True,
        help_text="After beat was down, start one run for the latest missed fire (never more). "
        "Off: a late fire is recorded as missed and starts nothing.",
    )
    last_run = models.ForeignKey(
        "runs.Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    last_fired_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="When the schedule was paused (disabled); resuming with catch_up starts the "
        "latest slot missed since then.",
    )
    next_run_at = models.DateTimeField(
        null=True, blank=True, help_text="Next fire time (empty while disabled or paused)."
    )
    periodic_task = models.OneToOneField(
        "django_celery_beat.PeriodicTask",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        editable=False,
        related_name="sparkops_schedule",
    )

    objects = TriggerQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        indexes = [models.Index(fields=["project", "name"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.cron} {self.timezone})"


class ScheduleFire(models.Model):
    """One fire slot of a schedule: what happened and why. The unique (schedule, slot) row is
    what makes a fire idempotent."""

    class Status(models.TextChoices):
        STARTED = "started", "Started a run"
        QUEUED = "queued", "Queued behind the previous run"
        SKIPPED = "skipped", "Skipped"
        FAILED = "failed", "Failed to start"

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="fires")
    slot = models.DateTimeField(help_text="The cron time this fire stands for.")
    fired_at = models.DateTimeField()
    manual = models.BooleanField(default=False, help_text="Fired by hand (admin “fire now”).")
    status = models.CharField(max_length=8, choices=Status.choices)
    reason = models.TextField(blank=True)
    run = models.ForeignKey(
        "runs.Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    started_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-slot"]
        constraints = [
            models.UniqueConstraint(
                fields=["schedule", "slot"], name="workflows_schedulefire_unique_slot"
            )
        ]
        indexes = [models.Index(fields=["schedule", "status"])]

    def __str__(self) -> str:
        return f"{self.schedule_id}@{self.slot:%Y-%m-%d %H:%M} {self.status}"


class WebhookTrigger(Authored):
    """`POST /api/v1/hooks/{token}` starts a run of `workflow`. Only a hash of the token is
    stored (the token is shown once); the signature secret is encrypted at rest."""

    class Signature(models.TextChoices):
        NONE = "none", "None (the token alone)"
        STANDARD = "standard", "Standard Webhooks (webhook-id/-timestamp/-signature)"
        GITHUB = "github", "GitHub (X-Hub-Signature-256)"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhook_triggers")
    workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="webhook_triggers"
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    token_prefix = models.CharField(max_length=16, editable=False)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    signature = models.CharField(max_length=16, choices=Signature.choices, default=Signature.NONE)
    secret_encrypted = models.TextField(blank=True, editable=False)
    input_mapping = models.JSONField(
        null=True,
        blank=True,
        help_text="Templates over body, headers and query giving the run input; empty: the "
        "JSON body is the input.",
    )
    # Replay window. GitHub's signature covers the body only, so a captured delivery can be
    # sent again under a fresh delivery id; these let a trigger refuse old deliveries.
    timestamp_header = models.CharField(
        max_length=100,
        blank=True,
        help_text="github only: a header with the send time (Unix seconds), signed with the "
        "body (HMAC-SHA256 of `<timestamp>.<body>`).",
    )
    timestamp_field = models.CharField(
        max_length=200,
        blank=True,
        help_text="github only: dotted path of a time in the (signed) JSON body, Unix seconds "
        "or ISO 8601.",
    )
    tolerance_seconds = models.PositiveIntegerField(
        default=300,
        help_text="Deliveries whose signed time is further than this from now are refused "
        "(standard: at most 300, the Standard Webhooks window).",
    )
    enabled = models.BooleanField(default=True)
    last_delivery_at = models.DateTimeField(null=True, blank=True)

    objects = TriggerQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.token_prefix}…)"


class WebhookReceipt(models.Model):
    """A delivery id seen by a webhook trigger: a repeated delivery answers the same run."""

    trigger = models.ForeignKey(WebhookTrigger, on_delete=models.CASCADE, related_name="receipts")
    delivery_id = models.CharField(max_length=255)
    run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["trigger", "delivery_id"], name="workflows_webhookreceipt_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.delivery_id} → {self.run_id}"


class EventTrigger(Authored):
    """Start `target_workflow` when a run of `source_workflow` (same project) finishes with one
    of `statuses`; the input is mapped from the source run."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="event_triggers")
    source_workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="event_triggers_out"
    )
    target_workflow = models.ForeignKey(
        Workflow, on_delete=models.CASCADE, related_name="event_triggers"
    )
    name = models.CharField(max_length=200)
    statuses = models.JSONField(default=list, help_text="Final statuses of the source run.")
    input_mapping = models.JSONField(
        null=True,
        blank=True,
        help_text="Templates over `run` (the source run) and `output`; empty: the source "
        "run's output is the input.",
    )
    enabled = models.BooleanField(default=True)

    objects = TriggerQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        indexes = [models.Index(fields=["source_workflow", "enabled"])]

    def __str__(self) -> str:
        return self.name


class EventTriggerFire(models.Model):
    class Status(models.TextChoices):
        STARTED = "started", "Started a run"
        REFUSED = "refused", "Refused (chain too deep)"
        FAILED = "failed", "Failed to start"

    trigger = models.ForeignKey(EventTrigger, on_delete=models.CASCADE, related_name="fires")
    source_run = models.ForeignKey("runs.Run", on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(
        "runs.Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    status = models.CharField(max_length=8, choices=Status.choices)
    reason = models.TextField(blank=True)
    chain_depth = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["trigger", "source_run"], name="workflows_eventfire_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.trigger_id} ← {self.source_run_id}: {self.status}"
