"""Views outside DRF (health, admin, console) answer a lost or refused database connection like
the API does: 503, `Retry-After` and the JSON error shape, never a 500 page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from .errors import database_unavailable_response, is_database_unavailable


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> Any:
        if is_database_unavailable(exception):
            return database_unavailable_response(request, exception)
        return None
