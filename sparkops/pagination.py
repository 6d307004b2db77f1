from __future__ import annotations

from typing import Any

from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 100


class CreatedCursorPagination(pagination.CursorPagination):
    """Runs, policy decisions, audit events: stable under inserts, no COUNT(*) over a large
    table. A queryset scoped to several projects (`ProjectPartitionedQuerySet.in_projects`) is
    read as one index range per project, merged, so a page costs the same at a thousand rows
    and at a million."""

    # The id breaks ties: rows of one instant keep one order from query to query, which the
    # cursor's offset (the rows of its instant already shown) relies on.
    ordering = ("-created_at", "-id")
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200

    def paginate_queryset(self, queryset: Any, request: Any, view: Any = None) -> Any:
        if hasattr(queryset, "merge_partitions"):
            queryset = queryset.merge_partitions()
        return super().paginate_queryset(queryset, request, view)


class SeqCursorPagination(pagination.CursorPagination):
    """A run's events, oldest first."""

    ordering = "seq"
    page_size = 200
    page_size_query_param = "page_size"
    max_page_size = 1000
