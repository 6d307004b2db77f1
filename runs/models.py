from __future__ import annotations

import json
import uuid
from typing import Any

from django.conf import settings as django_settings
from django.db import models

from projects.models import Project
from sparkops.models import ProjectPartitionedQuerySet


class RunQuerySet(ProjectPartitionedQuerySet["Run"]):
    def for_user(self, user: Any) -> RunQuerySet:
        """The caller's projects are resolved first (one small query), so a list is an index
        range per project (see ProjectPartitionedQuerySet), not a scan of the table."""
        return self.in_projects(Project.objects.ids_for_user(user))

    def listed(self) -> RunQuerySet:
        """What the API shows of a run: its own columns, and only the name of its workflow and
        the number of its version (their definition and snapshot are kilobytes a row)."""
        own = [field.name for field in Run._meta.concrete_fields]
        return self.select_related("workflow", "version").only(
            *own, "workflow__name", "version__number"
        )

    def active(self) -> RunQuerySet:
        return self.filter(status__in=Run.ACTIVE_STATUSES)


class Run(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"
        TIMED_OUT = "timed_out", "Timed out"

    class Trigger(models.TextChoices):
        MANUAL = "manual", "Manual"
        API = "api", "API"
        SCHEDULE = "schedule", "Schedule"
        WEBHOOK = "webhook", "Webhook"
        EVENT = "event", "Event"
        RETRY = "retry", "Retry"
        MCP = "mcp", "MCP"
        WORKFLOW = "workflow", "Workflow node"

    ACTIVE_STATUSES = (
        Status.PENDING,
        Status.QUEUED,
        Status.RUNNING,
        Status.WAITING_APPROVAL,
    )
    FINISHED_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED, Status.TIMED_OUT)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="runs")
    workflow = models.ForeignKey(
        "workflows.Workflow", on_delete=models.CASCADE, related_name="runs"
    )
    version = models.ForeignKey(
        "workflows.WorkflowVersion", on_delete=models.PROTECT, related_name="runs"
    )
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    trigger = models.CharField(max_length=16, choices=Trigger.choices, default=Trigger.API)
    input = models.JSONField(default=dict, blank=True)
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True, help_text="type, message, step")
    parent_run = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="retries"
    )
    reuse_succeeded = models.BooleanField(
        default=False, help_text="Retry from failure: succeeded steps of the parent are reused."
    )
    chain_depth = models.PositiveIntegerField(default=0)
    # A child run: the `workflow` step of the parent run that started it.
    parent_step = models.ForeignKey(
        "runs.RunStep",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="child_runs",
    )
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    deadline = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveBigIntegerField(null=True, blank=True)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    # Last RunEvent seq handed out; advanced by one atomic UPDATE per event (gap-free).
    event_seq = models.PositiveIntegerField(default=0)
    cancel_requested = models.BooleanField(default=False)
    # The sweeper's bookkeeping of the run's planning message (enqueue or advance): when it last
    # sent one again and how many times, so it waits a growing backoff before the next.
    resent_at = models.DateTimeField(null=True, blank=True)
    resends = models.PositiveIntegerField(default=0)

    objects = RunQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["project", "-created_at"]),
            # Newest first over many projects at once (a caller of more projects than are
            # merged per project, sparkops.models.MAX_MERGED_PARTITIONS), ties by id as the
            # cursor pages order them.
            models.Index(fields=["-created_at", "-id"]),
            models.Index(fields=["workflow", "status", "created_at"]),
            models.Index(fields=["status", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"Run {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED_STATUSES


class RunStepQuerySet(models.QuerySet["RunStep"]):
    def for_user(self, user: Any) -> RunStepQuerySet:
        return self.filter(run__project_id__in=Project.objects.ids_for_user(user))

    def listed(self) -> RunStepQuerySet:
        """All but the saved agent loop (`state`): the API never shows it, and it can be large."""
        return self.defer("state")

    def summary(self) -> RunStepQuerySet:
        """The columns of a run detail's step summary (not the inputs, outputs or state)."""
        return self.only(
            "run",
            "node_id",
            "type",
            "status",
            "attempt",
            "started_at",
            "finished_at",
            "error",
            "input_tokens",
            "output_tokens",
            "cost",
        )


class RunStep(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        WAITING_APPROVAL = "waiting_approval", "Waiting for approval"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        SKIPPED = "skipped", "Skipped"
        CANCELLED = "cancelled", "Cancelled"

    FINISHED_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.SKIPPED, Status.CANCELLED)

    # No index of its own: the (run, node_id) constraint's index serves every lookup by run,
    # and one more index would be written on each of a step's updates.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps", db_index=False)
    node_id = models.CharField(max_length=64)
    type = models.CharField(max_length=16)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.PENDING)
    # Fencing token: bumped every time the step is (re)queued; a result is written only by the
    # attempt that is current, so a stale or duplicate delivery can never overwrite a newer one.
    attempt = models.PositiveIntegerField(default=0)
    # Failed attempts so far (what `retry.max_attempts` limits; crash recoveries don't count).
    failures = models.PositiveIntegerField(default=0)
    input = models.JSONField(null=True, blank=True, help_text="Rendered input (secrets redacted).")
    output = models.JSONField(null=True, blank=True)
    error = models.JSONField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The sweeper's bookkeeping of the attempt's message: when it last sent it (a message taken
    # for lost, or a retry that waited in the database) and how many times it re-sent a lost
    # one; the backoff before the next re-send grows with `resends`.
    resent_at = models.DateTimeField(null=True, blank=True)
    resends = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    reused_from = models.ForeignKey(
        "self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # An item of a `map` node: its position in the list (the row's node_id is `<map>[<index>]`)
    # and the item itself, what the item node's templates read as `item`.
    item_index = models.PositiveIntegerField(null=True, blank=True)
    item = models.JSONField(null=True, blank=True)
    decided_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_comment = models.TextField(blank=True)
    # An agent step paused for the approval of a tool call its model made: what resuming the
    # tool-calling loop needs (runs.engine.agent). A retry resumes from it too. Cleared when
    # the step ends (succeeded, failed for good, rejected or cancelled). Admin only: the API
    # leaves it out, it can be large.
    state = models.JSONField(
        null=True,
        blank=True,
        help_text="Saved agent loop, secrets redacted: messages, iteration, the pending call.",
    )

    objects = RunStepQuerySet.as_manager()

    class Meta:
        ordering = ["run", "id"]
        constraints = [
            models.UniqueConstraint(fields=["run", "node_id"], name="runs_step_unique_node")
        ]
        indexes = [models.Index(fields=["status", "queued_at"])]

    def __str__(self) -> str:
        return f"{self.node_id} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.FINISHED_STATUSES

    @property
    def approval_message(self) -> str:
        """What a person waiting on this step is asked (the operator console shows it): the
        message of an approval or held tool step, or the held call an agent's model made."""
        pending = (self.state or {}).get("pending")
        if pending:
            arguments = json.dumps(pending.get("arguments"), default=str, ensure_ascii=False)
            return f"{pending.get('message', '')} Call: {pending['tool']} {arguments}".strip()
        message = self.input.get("message") if isinstance(self.input, dict) else None
        return str(message or "")


class RunEventQuerySet(models.QuerySet["RunEvent"]):
    def for_user(self, user: Any) -> RunEventQuerySet:
        return self.filter(run__project_id__in=Project.objects.ids_for_user(user))


class RunEvent(models.Model):
    """Append-only, gap-free ordered log of a run."""

    class Type(models.TextChoices):
        RUN_STATUS = "run.status", "Run status"
        STEP_STATUS = "step.status", "Step status"
        LLM_CALL = "llm.call", "LLM call"
        TOOL_CALL = "tool.call", "Tool call"
        APPROVAL_REQUESTED = "approval.requested", "Approval requested"
        APPROVAL_DECIDED = "approval.decided", "Approval decided"
        POLICY = "policy.decision", "Policy decision"
        LOG = "log", "Log"

    # No index of its own: the (run, seq) constraint's index serves every lookup by run, and
    # one more index would be written on each event.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="events", db_index=False)
    seq = models.PositiveIntegerField()
    type = models.CharField(max_length=32, choices=Type.choices)
    node_id = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveIntegerField(null=True, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = RunEventQuerySet.as_manager()

    class Meta:
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="runs_event_unique_seq")]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.seq} {self.type}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValueError("Run events are append-only.")
        super().save(*args, **kwargs)


class IdempotencyKey(models.Model):
    """Stripe-style idempotency for run creation: one row per (project, caller, key), created in
    the same transaction as the run, so the unique constraint — not a read-then-write — decides
    which of two concurrent requests creates the run."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    user = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+"
    )
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="+")
    # The first response, replayed verbatim for a repeated request.
    response = models.JSONField(null=True, blank=True)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["project", "user", "key"], name="runs_idempotency_unique"
            )
        ]
        indexes = [models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return f"{self.key} → {self.run_id}"


class Lease(models.Model):
    """A named lease on a singleton job (the sweeper): taken by one conditional UPDATE, so it
    works the same on PostgreSQL and SQLite, and it expires on its own if its holder dies."""

    name = models.CharField(max_length=64, primary_key=True)
    holder = models.CharField(max_length=200, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.holder or 'free'})"
