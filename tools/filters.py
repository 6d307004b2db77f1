import django_filters

from .models import Tool


class ToolFilter(django_filters.FilterSet):
    project = django_filters.UUIDFilter(field_name="project_id", help_text="A project's id.")

    class Meta:
        model = Tool
        fields = ["project", "status", "kind", "is_global"]
