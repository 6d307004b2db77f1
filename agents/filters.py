import django_filters

from projects.api import IdFilter

from .models import Agent, ModelPrice


class AgentFilter(django_filters.FilterSet):
    # By id, not a ModelChoiceFilter: an unknown project must not answer differently from a
    # project the caller cannot see (the queryset is already scoped).
    project = django_filters.UUIDFilter(field_name="project_id")
    tool = IdFilter(field_name="tools", label="Agents that use this tool id")

    class Meta:
        model = Agent
        fields = ["project", "status", "provider", "tool"]


class ModelPriceFilter(django_filters.FilterSet):
    project = django_filters.UUIDFilter(field_name="project_id")
    is_global = django_filters.BooleanFilter(
        field_name="project",
        lookup_expr="isnull",
        label="Only global prices (true) or only project overrides (false)",
    )

    class Meta:
        model = ModelPrice
        fields = ["project", "is_global", "provider"]
