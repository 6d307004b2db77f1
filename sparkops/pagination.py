from rest_framework import pagination


class PageNumberPagination(pagination.PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 100


class CreatedCursorPagination(pagination.CursorPagination):
    """Runs: stable under inserts, no COUNT(*) over a large table."""

    ordering = "-created_at"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200


class SeqCursorPagination(pagination.CursorPagination):
    """A run's events, oldest first."""

    ordering = "seq"
    page_size = 200
    page_size_query_param = "page_size"
    max_page_size = 1000
