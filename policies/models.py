"""Governance: policies the engine enforces, the decisions they took, budgets and what was spent
against them, per-call usage, and the append-only audit log (DESIGN.md §7)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from django.db import models

from projects.models import Project

# Registered in this app (its table, migrations and admin URL); the code is at the bottom layer
# because every app's services record audit events (see sparkops/audit.py).
from sparkops.audit import AuditEvent  # noqa: F401
from sparkops.models import Authored, ProjectPartitionedQuerySet


class PolicyQuerySet(models.QuerySet["Policy"]):
    def for_user(self, user: Any) -> PolicyQuerySet:
        """The policies of the user's projects, and the global ones (they govern every run, so
        every signed-in user may read them; only staff write them)."""
        if user is None or not user.is_authenticated:
            return self.none()
        return self.filter(
            models.Q(project__in=Project.objects.for_user(user)) | models.Q(project__isnull=True)
        )

    def applicable_to(self, project_id: Any) -> PolicyQuerySet:
        """Enabled policies that govern `project_id`: its own and the global ones, in
        evaluation order (lower priority number first)."""
        return self.filter(
            models.Q(project_id=project_id) | models.Q(project__isnull=True), enabled=True
        ).order_by("priority", "id")


class Policy(Authored):
    class Kind(models.TextChoices):
        ALLOWED_MODELS = "allowed_models", "Allowed models"
        MAX_TOKENS_PER_CALL = "max_tokens_per_call", "Max tokens per call"
        MAX_COST_PER_RUN = "max_cost_per_run", "Max cost per run"
        TOOL_ALLOWLIST = "tool_allowlist", "Tool allowlist"
        TOOL_DENYLIST = "tool_denylist", "Tool denylist"
        TOOL_REQUIRES_APPROVAL = "tool_requires_approval", "Tool requires approval"
        BLOCKED_PATTERNS = "blocked_patterns", "Blocked patterns"
        PII = "pii", "PII"
        MAX_CONCURRENT_RUNS = "max_concurrent_runs", "Max concurrent runs"
        ALLOWED_HOURS = "allowed_hours", "Allowed hours"

    class Mode(models.TextChoices):
        ENFORCE = "enforce", "Enforce"
        AUDIT = "audit", "Audit (record only)"

    # What a caller may set, besides `project` (chosen on create, fixed afterwards): the one
    # list the service, the API serializer and the admin form take theirs from.
    EDITABLE_FIELDS = ("name", "description", "kind", "mode", "enabled", "priority", "rule")

    project = models.ForeignKey(
        Project,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="policies",
        help_text="Empty for a global policy (staff only), which governs every project.",
    )
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    kind = models.CharField(max_length=32, choices=Kind.choices)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.ENFORCE)
    enabled = models.BooleanField(default=True)
    priority = models.IntegerField(
        default=100, help_text="Evaluation order: lower numbers are evaluated first."
    )
    rule = models.JSONField(default=dict, blank=True, help_text="Validated per kind.")

    objects = PolicyQuerySet.as_manager()

    class Meta:
        ordering = ["priority", "id"]
        verbose_name_plural = "policies"
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="policies_policy_unique_name"),
            models.UniqueConstraint(
                fields=["name"],
                condition=models.Q(project__isnull=True),
                name="policies_policy_unique_global_name",
            ),
        ]
        indexes = [models.Index(fields=["project", "enabled", "priority"])]

    def __str__(self) -> str:
        return self.name

    @property
    def is_global(self) -> bool:
        return self.project_id is None


class BudgetQuerySet(models.QuerySet["Budget"]):
    def for_user(self, user: Any) -> BudgetQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))

    def covering(self, *, project_id: Any, workflow_id: Any = None, agent_id: Any = None) -> Any:
        """Enabled budgets a charge of this project / workflow / agent counts against: project
        budgets, and those scoped to this workflow or this agent."""
        scope = models.Q(workflow__isnull=True) | models.Q(workflow_id=workflow_id)
        agents = models.Q(agent__isnull=True) | models.Q(agent_id=agent_id)
        return self.filter(scope, agents, project_id=project_id, enabled=True)


class Budget(Authored):
    class Period(models.TextChoices):
        DAILY = "daily", "Daily"
        MONTHLY = "monthly", "Monthly"
        TOTAL = "total", "Total (never resets)"

    class Action(models.TextChoices):
        BLOCK = "block", "Block (refuse new runs and further paid calls)"
        NOTIFY = "notify", "Notify only"

    # What a caller may set, besides `project` (chosen on create, fixed afterwards): the one
    # list the service, the API serializer and the admin form take theirs from.
    EDITABLE_FIELDS = (
        "name",
        "workflow",
        "agent",
        "period",
        "limit_usd",
        "soft_threshold",
        "action",
        "enabled",
    )

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="budgets")
    name = models.CharField(max_length=200)
    workflow = models.ForeignKey(
        "workflows.Workflow",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="budgets",
        help_text="Only charges of this workflow's runs count (empty: the whole project).",
    )
    agent = models.ForeignKey(
        "agents.Agent",
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="budgets",
        help_text="Only this agent's model calls count (empty: every agent).",
    )
    period = models.CharField(max_length=16, choices=Period.choices, default=Period.MONTHLY)
    limit_usd = models.DecimalField(max_digits=14, decimal_places=6)
    soft_threshold = models.PositiveSmallIntegerField(
        default=80, help_text="Percent of the limit at which an event is emitted."
    )
    action = models.CharField(max_length=16, choices=Action.choices, default=Action.BLOCK)
    enabled = models.BooleanField(default=True)

    objects = BudgetQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="policies_budget_unique_name")
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def threshold_usd(self) -> Decimal:
        return (self.limit_usd * self.soft_threshold / 100).quantize(Decimal("0.000001"))


class BudgetSpend(models.Model):
    """What one budget spent in one period. Charged with an atomic `F()` update inside the
    transaction that charges the model call to its step (runs.services.usage.usage_record),
    which the step's attempt fence gates: a redelivered or superseded attempt charges nothing."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="spends")
    period_start = models.DateTimeField(help_text="Start of the period in the project's timezone.")
    spend = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    calls = models.PositiveIntegerField(default=0)
    threshold_crossed_at = models.DateTimeField(null=True, blank=True)
    limit_reached_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["budget", "-period_start"]
        constraints = [
            models.UniqueConstraint(
                fields=["budget", "period_start"], name="policies_budget_spend_unique_period"
            )
        ]

    def __str__(self) -> str:
        return f"{self.budget} from {self.period_start:%Y-%m-%d}: {self.spend}"


class UsageRecordQuerySet(models.QuerySet["UsageRecord"]):
    def for_user(self, user: Any) -> UsageRecordQuerySet:
        return self.filter(project__in=Project.objects.for_user(user))


class UsageRecord(models.Model):
    """One charged model call (written once, with the charge). The usage endpoints aggregate
    these; rows outlive the runs they came from."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="usage")
    run = models.ForeignKey(
        "runs.Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    workflow = models.ForeignKey(
        "workflows.Workflow", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    agent = models.ForeignKey(
        "agents.Agent", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    node_id = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveIntegerField(null=True, blank=True)
    provider = models.CharField(max_length=32, blank=True)
    model = models.CharField(max_length=200, blank=True)
    input_tokens = models.PositiveBigIntegerField(default=0)
    output_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=14, decimal_places=6, default=0)
    price_unknown = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = UsageRecordQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["project", "created_at"])]

    def __str__(self) -> str:
        return f"{self.provider}:{self.model} {self.cost}"


class PolicyDecisionQuerySet(ProjectPartitionedQuerySet["PolicyDecision"]):
    def for_user(self, user: Any) -> PolicyDecisionQuerySet:
        """Projects resolved first: a page is an index range per project (as for runs)."""
        return self.in_projects(Project.objects.ids_for_user(user))


class PolicyDecision(models.Model):
    """A decision that was not a plain allow, by a policy or a budget. Append-only."""

    class Point(models.TextChoices):
        RUN_START = "run_start", "Run start"
        PROMPT = "prompt", "Prompt (before a model call)"
        MODEL_CALL = "model_call", "Model call"
        TOOL_CALL = "tool_call", "Tool call"
        MODEL_OUTPUT = "model_output", "Model output"

    class Outcome(models.TextChoices):
        DENY = "deny", "Denied"
        REDACT = "redact", "Redacted"
        CLAMP = "clamp", "Clamped"
        REQUIRE_APPROVAL = "require_approval", "Approval required"
        AUDIT_DENY = "audit_deny", "Would deny (audit)"
        AUDIT_REDACT = "audit_redact", "Would redact (audit)"
        AUDIT_CLAMP = "audit_clamp", "Would clamp (audit)"
        AUDIT_REQUIRE_APPROVAL = "audit_require_approval", "Would require approval (audit)"

    # Lets a refused run start's decision be written again after its transaction rolled back.
    key = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    policy = models.ForeignKey(
        Policy, on_delete=models.SET_NULL, null=True, blank=True, related_name="decisions"
    )
    budget = models.ForeignKey(
        Budget, on_delete=models.SET_NULL, null=True, blank=True, related_name="decisions"
    )
    source_name = models.CharField(max_length=200, help_text="The policy's or budget's name.")
    kind = models.CharField(max_length=32, help_text="The policy kind, or `budget`.")
    mode = models.CharField(max_length=16, choices=Policy.Mode.choices)
    run = models.ForeignKey(
        "runs.Run", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    workflow = models.ForeignKey(
        "workflows.Workflow", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    node_id = models.CharField(max_length=64, blank=True)
    attempt = models.PositiveIntegerField(null=True, blank=True)
    point = models.CharField(max_length=16, choices=Point.choices)
    outcome = models.CharField(max_length=32, choices=Outcome.choices)
    reason = models.TextField()
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = PolicyDecisionQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "-created_at"]),
            models.Index(fields=["run", "created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.source_name}: {self.outcome} at {self.point}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValueError("Policy decisions are append-only.")
        super().save(*args, **kwargs)
