"""The filter backend every list uses: django-filter's, plus the checks no filter field makes.

PostgreSQL refuses a timestamp whose UTC offset is beyond ±15:59 (Python accepts up to ±23:59),
and converting `0001-01-01T00:00:00+05:00` to UTC overflows in Python: either was a 500 from any
datetime filter (`created_after`, `since`, ...). Checking the cleaned values here covers every
FilterSet, declared or generated from `filterset_fields`, without a per-filter fix."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from django_filters import utils
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.exceptions import ValidationError

MAX_UTC_OFFSET = timedelta(hours=16)  # exclusive: PostgreSQL's limit is ±15:59:59


def datetime_problem(value: datetime) -> str | None:
    offset = value.utcoffset()
    if offset is not None and abs(offset) >= MAX_UTC_OFFSET:
        return "The UTC offset must be between -15:59 and +15:59."
    try:
        if offset is not None:
            value.astimezone(UTC)
    except OverflowError:
        return "Out of the supported range of dates."
    return None


def _problems(value: Any) -> list[str]:
    if isinstance(value, datetime):
        problem = datetime_problem(value)
        return [problem] if problem else []
    if isinstance(value, slice):  # range filters
        return _problems(value.start) + _problems(value.stop)
    if isinstance(value, list | tuple):
        return [problem for item in value for problem in _problems(item)]
    return []


class FilterBackend(DjangoFilterBackend):
    def filter_queryset(self, request: Any, queryset: Any, view: Any) -> Any:
        filterset = self.get_filterset(request, queryset, view)
        if filterset is None:
            return queryset
        if not filterset.is_valid():
            # It returns DRF's ValidationError; its stub says a dict.
            raise utils.translate_validation(filterset.errors)  # type: ignore[misc]
        errors = {
            name: problems
            for name, value in filterset.form.cleaned_data.items()
            if (problems := _problems(value))
        }
        if errors:
            raise ValidationError(errors)
        return filterset.qs
