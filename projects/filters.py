from typing import Any

import django_filters

from .models import File, Project


class ProjectFilter(django_filters.FilterSet):
    class Meta:
        model = Project
        fields = ["status", "is_template", "is_public"]


class FileFilter(django_filters.FilterSet):
    name = django_filters.CharFilter(lookup_expr="icontains")
    content_type = django_filters.CharFilter(
        method="filter_content_type", help_text="An exact type, or `image/*`."
    )
    run = django_filters.UUIDFilter(field_name="run_id")

    class Meta:
        model = File
        fields = ["project", "name", "content_type", "source", "run"]

    def filter_content_type(self, queryset: Any, name: str, value: str) -> Any:
        if value.endswith("/*"):
            return queryset.filter(content_type__startswith=value[:-1])
        return queryset.filter(content_type=value)
