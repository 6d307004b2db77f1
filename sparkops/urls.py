from __future__ import annotations

import sys
from typing import Any

from csp.constants import SELF
from csp.decorators import csp_update
from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import URLPattern, URLResolver, include, path, re_path
from django.views.defaults import page_not_found, permission_denied, server_error
from drf_spectacular.views import (
    SpectacularAPIView,
    SpectacularRedocView,
    SpectacularSwaggerSplitView,
)

from runs.triggers.views import HookView

from . import health
from .api_root import APIRoot
from .console import views as console_views
from .errors import database_unavailable_response, is_database_unavailable
from .metrics import metrics_view

# The <style> elements drf-spectacular-sidecar's redoc.standalone.js (2.5.x) adds while it
# loads, before Redoc.init hands it the nonce: perfect-scrollbar's CSS, and an empty one. An
# upgrade that changes them shows up as a violation in tests/browser/test_csp.py.
REDOC_STYLE_HASHES = [
    "'sha256-QMIg+bpjm3JdElJ388KYke01izlUW0UoNOeKjpMxdgc='",
    "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='",
]

api_v1: list[URLPattern | URLResolver] = [
    path("", APIRoot.as_view(), name="api-root"),
    path("auth/", include("accounts.urls")),
    path("", include("projects.urls")),
    path("", include("agents.urls")),
    path("", include("tools.urls")),
    path("", include("workflows.urls")),
    path("", include("runs.urls")),
    path("", include("policies.urls")),
    # Public: the token in the URL (and an optional signature) is the only credential.
    re_path(r"^hooks/(?P<token>[A-Za-z0-9_-]{1,200})/?$", HookView.as_view(), name="hook"),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # Both pages keep the self-only Content-Security-Policy: Swagger UI's start-up script is
    # served apart (`?script`); ReDoc gets the response's nonce for the <style> elements it
    # adds (static/docs/redoc.js), a worker from a blob: URL for its search, and the hashes of
    # the two <style> elements its bundle adds before it sees the nonce.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="swagger-ui"),
    path(
        "api/redoc/",
        csp_update({"style-src": REDOC_STYLE_HASHES, "worker-src": [SELF, "blob:"]})(
            SpectacularRedocView.as_view(url_name="schema")
        ),
        name="redoc",
    ),
    re_path(r"^health/?$", health.health, name="health"),
    re_path(r"^ready/?$", health.ready, name="ready"),
    re_path(r"^metrics/?$", metrics_view, name="metrics"),
    # The operator console's dashboard replaces the admin index (the rest is the admin's).
    path("admin/", admin.site.admin_view(console_views.dashboard_view), name="console-dashboard"),
    path("admin/", admin.site.urls),
]


def _wants_json(request: HttpRequest) -> bool:
    return not request.path.startswith("/admin/")


def handler404(request: HttpRequest, exception: Any = None) -> Any:
    if _wants_json(request):
        return JsonResponse({"type": "not_found", "detail": "Not found."}, status=404)

    return page_not_found(request, exception)


def handler500(request: HttpRequest) -> Any:
    # Called while the exception is being handled: a database outside any view (a middleware's
    # session or user lookup) is a 503 too.
    exc = sys.exc_info()[1]
    if is_database_unavailable(exc):
        return database_unavailable_response(request, exc)
    if _wants_json(request):
        return JsonResponse(
            {"type": "server_error", "detail": "Internal server error."}, status=500
        )

    return server_error(request)


def handler400(request: HttpRequest, exception: Any = None) -> Any:
    return JsonResponse({"type": "bad_request", "detail": "Bad request."}, status=400)


def handler403(request: HttpRequest, exception: Any = None) -> Any:
    if _wants_json(request):
        return JsonResponse({"type": "permission_denied", "detail": "Forbidden."}, status=403)

    return permission_denied(request, exception)
