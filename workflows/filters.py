import django_filters

from .models import Workflow


class WorkflowFilter(django_filters.FilterSet):
    project = django_filters.UUIDFilter(field_name="project_id")
    slug = django_filters.CharFilter()

    class Meta:
        model = Workflow
        fields = ["project", "status", "slug"]
