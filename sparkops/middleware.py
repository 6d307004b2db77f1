"""Views outside DRF (health, admin, console) answer a lost or refused database connection like
the API does: 503, `Retry-After` and the JSON error shape, never a 500 page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

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


class JSONAPIErrorsMiddleware:
    """Under /api/, a 404 or 405 is JSON whatever DEBUG says: DRF views answer JSON themselves,
    but an unknown route under DEBUG gets Django's technical HTML page (handler404 is not
    called then), and a plain Django view's 405 has an empty body. Sits above CommonMiddleware,
    so `/api/v1/agents` still redirects to `/api/v1/agents/` first where that applies."""

    KINDS = {404: "not_found", 405: "method_not_allowed"}

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        code = response.status_code
        if (
            code in self.KINDS
            and request.path.startswith("/api/")
            and not response.get("Content-Type", "").startswith("application/json")
            and not getattr(response, "streaming", False)
        ):
            detail = "Not found." if code == 404 else f'Method "{request.method}" not allowed.'
            replaced = JsonResponse({"type": self.KINDS[code], "detail": detail}, status=code)
            if response.has_header("Allow"):
                replaced["Allow"] = response["Allow"]
            return replaced
        return response
