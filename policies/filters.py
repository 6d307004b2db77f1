import django_filters

from projects.api import IdFilter
from sparkops.audit import AuditEvent

from .models import Budget, Policy, PolicyDecision


class PolicyFilter(django_filters.FilterSet):
    # By id: an unknown project answers like a project the caller cannot see (empty).
    project = django_filters.UUIDFilter(field_name="project_id")
    is_global = django_filters.BooleanFilter(field_name="project", lookup_expr="isnull")

    class Meta:
        model = Policy
        fields = ["project", "kind", "mode", "enabled", "is_global"]


class PolicyDecisionFilter(django_filters.FilterSet):
    project = django_filters.UUIDFilter(field_name="project_id")
    run = django_filters.UUIDFilter(field_name="run_id")
    policy = IdFilter(field_name="policy_id")
    budget = IdFilter(field_name="budget_id")

    class Meta:
        model = PolicyDecision
        fields = ["project", "run", "policy", "budget", "point", "outcome", "kind", "mode"]


class BudgetFilter(django_filters.FilterSet):
    project = django_filters.UUIDFilter(field_name="project_id")
    workflow = IdFilter(field_name="workflow_id")
    agent = IdFilter(field_name="agent_id")

    class Meta:
        model = Budget
        fields = ["project", "workflow", "agent", "period", "action", "enabled"]


class AuditEventFilter(django_filters.FilterSet):
    actor = django_filters.UUIDFilter(field_name="actor_id")
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    action = django_filters.CharFilter(field_name="action", lookup_expr="startswith")

    class Meta:
        model = AuditEvent
        fields = ["actor", "action", "object_type", "object_id", "since", "until"]
