"""`GET /api/v1/`: DRF's browsable root, listing every resource the API's routers register.

The list is read from the URL patterns themselves (every top-level `<basename>-list` route), so
a resource registered in any app's router appears without being named here twice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from django.urls import URLPattern, URLResolver, get_resolver
from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.routers import APIRootView

API_PREFIX = "api/v1/"


def _patterns(
    patterns: list[URLPattern | URLResolver], prefix: str = ""
) -> Iterator[tuple[str, URLPattern]]:
    for entry in patterns:
        route = prefix + str(entry.pattern).lstrip("^")
        if isinstance(entry, URLResolver):
            yield from _patterns(entry.url_patterns, route)
        else:
            yield route, entry


def resources() -> dict[str, str]:
    """{resource prefix: URL name} of every top-level list route under /api/v1/, sorted."""
    found = {}
    for route, pattern in _patterns(get_resolver().url_patterns):
        name = pattern.name or ""
        if not route.startswith(API_PREFIX) or not name.endswith("-list") or "(?P" in route:
            continue
        key = route.removeprefix(API_PREFIX).removesuffix("$").removesuffix("/?").strip("/")
        found[key] = name
    return dict(sorted(found.items()))


class APIRoot(APIRootView):
    """The resources of the API, each with its URL. Public: it lists routes, no data."""

    permission_classes = [AllowAny]

    @extend_schema(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        self.api_root_dict = resources()
        return super().get(request, *args, **kwargs)
