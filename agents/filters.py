import django_filters

from sparkops.api import IdFilter

from .models import Agent


class AgentFilter(django_filters.FilterSet):
    # By id, not a ModelChoiceFilter: an unknown project must not answer differently from a
    # project the caller cannot see (the queryset is already scoped).
    project = django_filters.UUIDFilter(field_name="project_id")
    tool = IdFilter(field_name="tools", label="Agents that use this tool id")

    class Meta:
        model = Agent
        fields = ["project", "status", "provider", "tool"]
