from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from projects.serializers import ProjectField
from sparkops.audit import AuditEvent

from .budgets import ZERO, period_bounds, project_zone, spent
from .models import Budget, Policy, PolicyDecision
from .rules import RULE_SCHEMAS

RULE_HELP = "Validated per kind: " + "; ".join(
    f"{kind}: {', '.join(schema['properties'])}" for kind, schema in RULE_SCHEMAS.items()
)


@extend_schema_field(OpenApiTypes.UUID)
class ProjectIdField(ProjectField):
    """A project the caller is a member of, by id (for plain serializers)."""


class PolicySerializer(serializers.ModelSerializer):
    project = ProjectField(
        allow_null=True,
        required=False,
        help_text="The project; null for a global policy (staff only). Fixed after creation.",
    )
    rule = serializers.JSONField(help_text=RULE_HELP)
    is_global = serializers.BooleanField(read_only=True)

    class Meta:
        model = Policy
        fields = [
            "id",
            "project",
            "is_global",
            *Policy.EDITABLE_FIELDS,
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "is_global", "created_at", "updated_at"]
        validators: list[Any] = []  # a duplicate name is a 409 from the service


class PolicyUpdateSerializer(PolicySerializer):
    # An update never moves a policy between projects: the field is replaced by a read-only one.
    project = serializers.UUIDField(  # type: ignore[assignment]
        source="project_id", read_only=True, allow_null=True
    )


class PolicyDecisionSerializer(serializers.ModelSerializer):
    run = serializers.UUIDField(source="run_id", read_only=True, allow_null=True)
    policy = serializers.IntegerField(source="policy_id", read_only=True, allow_null=True)
    budget = serializers.IntegerField(source="budget_id", read_only=True, allow_null=True)
    workflow = serializers.IntegerField(source="workflow_id", read_only=True, allow_null=True)
    project = serializers.UUIDField(source="project_id", read_only=True)

    class Meta:
        model = PolicyDecision
        fields = [
            "id",
            "project",
            "policy",
            "budget",
            "source_name",
            "kind",
            "mode",
            "run",
            "workflow",
            "node_id",
            "attempt",
            "point",
            "outcome",
            "reason",
            "details",
            "created_at",
        ]
        read_only_fields = fields


class BudgetSerializer(serializers.ModelSerializer):
    project = ProjectField(help_text="Chosen on create; read-only afterwards.")
    workflow = serializers.IntegerField(
        source="workflow_id",
        allow_null=True,
        required=False,
        help_text="Only this workflow's runs count (null: the whole project).",
    )
    agent = serializers.IntegerField(
        source="agent_id",
        allow_null=True,
        required=False,
        help_text="Only this agent's calls count (null: every agent).",
    )
    limit_usd = serializers.DecimalField(max_digits=14, decimal_places=6, min_value=Decimal(0))
    soft_threshold = serializers.IntegerField(
        min_value=1, max_value=100, required=False, help_text="Percent of the limit."
    )
    current = serializers.SerializerMethodField(
        help_text="The current period: its bounds, what was spent, and the state."
    )

    class Meta:
        model = Budget
        fields = [
            "id",
            "project",
            *Budget.EDITABLE_FIELDS,
            "current",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "current", "created_at", "updated_at"]
        validators: list[Any] = []

    @extend_schema_field(
        {
            "type": "object",
            "properties": {
                "period_start": {"type": "string", "format": "date-time", "nullable": True},
                "period_end": {"type": "string", "format": "date-time", "nullable": True},
                "spent": {"type": "string", "format": "decimal"},
                "remaining": {"type": "string", "format": "decimal"},
                "percent_used": {"type": "number"},
                "state": {"type": "string", "enum": ["ok", "threshold", "exceeded"]},
            },
        }
    )
    def get_current(self, obj: Budget) -> dict[str, Any]:
        # `latest_start` / `latest_spend` are annotated by the viewset (one query per page).
        start, end = period_bounds(obj.period, project_zone(obj.project), _now())
        latest = getattr(obj, "latest_start", None)
        if latest is None and not hasattr(obj, "latest_start"):
            amount = spent(obj)
        else:
            # Annotated on the queryset by the viewset, not a model field.
            amount = obj.latest_spend if latest == start else ZERO  # type: ignore[attr-defined]
        amount = amount or ZERO
        state = "ok"
        if amount >= obj.limit_usd:
            state = "exceeded"
        elif amount >= obj.threshold_usd:
            state = "threshold"
        return {
            "period_start": start.isoformat() if obj.period != Budget.Period.TOTAL else None,
            "period_end": end.isoformat() if end else None,
            "spent": f"{amount:.6f}",
            "remaining": f"{max(obj.limit_usd - amount, ZERO):.6f}",
            "percent_used": round(float(amount / obj.limit_usd * 100), 2) if obj.limit_usd else 0,
            "state": state,
        }


def _now() -> Any:
    return timezone.now()


class BudgetUpdateSerializer(BudgetSerializer):
    # An update never moves a budget between projects: the field is replaced by a read-only one.
    project = serializers.UUIDField(source="project_id", read_only=True)  # type: ignore[assignment]


class UsageRowSerializer(serializers.Serializer):
    key = serializers.JSONField(help_text="Day, workflow id, agent id or provider/model.")
    # A response field named `label`; DRF's metaclass takes declared fields off the class, so
    # Field.label (the stubs' view of this name) is untouched.
    label = serializers.CharField()  # type: ignore[assignment]
    cost = serializers.DecimalField(max_digits=18, decimal_places=6)
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    calls = serializers.IntegerField()


class UsageTotalSerializer(serializers.Serializer):
    cost = serializers.DecimalField(max_digits=18, decimal_places=6)
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    calls = serializers.IntegerField()


class ProjectUsageSerializer(serializers.Serializer):
    project = serializers.UUIDField()
    # `from` is a Python keyword: declared below.
    to = serializers.DateField()
    timezone = serializers.CharField()
    group_by = serializers.ChoiceField(choices=["day", "workflow", "agent", "model"])
    total = UsageTotalSerializer()
    results = UsageRowSerializer(many=True)


ProjectUsageSerializer._declared_fields["from"] = serializers.DateField()


class BudgetUsageSerializer(serializers.Serializer):
    budget = serializers.IntegerField()
    name = serializers.CharField()
    period = serializers.ChoiceField(choices=Budget.Period.choices)
    period_start = serializers.DateTimeField(allow_null=True)
    period_end = serializers.DateTimeField(allow_null=True)
    timezone = serializers.CharField()
    limit_usd = serializers.DecimalField(max_digits=14, decimal_places=6)
    spent = serializers.DecimalField(max_digits=14, decimal_places=6)
    remaining = serializers.DecimalField(max_digits=14, decimal_places=6)
    percent_used = serializers.FloatField()
    by_day = UsageRowSerializer(many=True)
    by_workflow = UsageRowSerializer(many=True)
    by_agent = UsageRowSerializer(many=True)
    by_model = UsageRowSerializer(many=True)


class EvaluateSerializer(serializers.Serializer):
    project = ProjectIdField()
    point = serializers.ChoiceField(choices=PolicyDecision.Point.choices)
    provider = serializers.CharField(required=False, allow_blank=True, default="")
    model = serializers.CharField(required=False, allow_blank=True, default="")
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1)
    text = serializers.CharField(
        required=False,
        allow_blank=True,
        default="",
        trim_whitespace=False,
        max_length=200_000,
        help_text="A prompt (point `prompt`, `model_call`) or a model output (`model_output`).",
    )
    tool = serializers.CharField(required=False, allow_blank=True, default="")
    arguments = serializers.JSONField(required=False, allow_null=True, default=None)
    run_cost = serializers.DecimalField(
        max_digits=14, decimal_places=6, required=False, allow_null=True, min_value=Decimal(0)
    )
    workflow = serializers.IntegerField(required=False, allow_null=True)
    agent = serializers.IntegerField(required=False, allow_null=True)
    at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="Evaluate as of this time (allowed_hours)."
    )


class DecisionOutSerializer(serializers.Serializer):
    policy = serializers.IntegerField(allow_null=True)
    budget = serializers.IntegerField(allow_null=True)
    name = serializers.CharField()
    kind = serializers.CharField()
    mode = serializers.CharField()
    point = serializers.CharField()
    outcome = serializers.ChoiceField(choices=PolicyDecision.Outcome.choices)
    enforced = serializers.BooleanField()
    reason = serializers.CharField()
    details = serializers.JSONField()


class EvaluateResultSerializer(serializers.Serializer):
    allowed = serializers.BooleanField(help_text="False if an enforced decision blocks.")
    decisions = DecisionOutSerializer(many=True)
    text = serializers.CharField(required=False, help_text="The text after redactions.")
    arguments = serializers.JSONField(required=False, help_text="Arguments after redactions.")
    max_tokens = serializers.IntegerField(
        required=False, allow_null=True, help_text="max_tokens after clamps."
    )


class AuditEventSerializer(serializers.ModelSerializer):
    actor = serializers.UUIDField(source="actor_id", read_only=True, allow_null=True)
    project = serializers.UUIDField(source="project_id", read_only=True, allow_null=True)

    class Meta:
        model = AuditEvent
        fields = [
            "id",
            "created_at",
            "actor",
            "actor_email",
            "project",
            "action",
            "object_type",
            "object_id",
            "object_repr",
            "changes",
            "ip",
        ]
        read_only_fields = fields
