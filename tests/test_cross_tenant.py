"""Walks every route under /api/v1/ that addresses an object (its URL has an id) and checks,
for every method the route answers: a non-member gets 404 (nothing leaks), and a project
viewer gets 403 on writes. A new route fails this test until it declares how to build its
object below, so nothing joins the API unchecked."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from conftest import Cast
from tests.routes import ObjectRoute

pytestmark = pytest.mark.django_db

SAFE = {"get", "head", "options"}


def _project(cast: Cast) -> dict[str, Any]:
    return {"pk": cast.project.pk}


def _member(cast: Cast) -> dict[str, Any]:
    membership = cast.project.memberships.get(user=cast.developer)
    return {"project_pk": cast.project.pk, "pk": membership.pk}


def _invitation(cast: Cast) -> Any:
    from projects import services

    return services.invitation_create(
        project=cast.project, actor=cast.owner, email="invited@example.com", role="viewer"
    )[0]


def _project_invitation(cast: Cast) -> dict[str, Any]:
    return {"project_pk": cast.project.pk, "pk": _invitation(cast).pk}


def _received_invitation(cast: Cast) -> dict[str, Any]:
    return {"pk": _invitation(cast).pk}


def _api_key(cast: Cast) -> dict[str, Any]:
    from accounts import services

    key, _ = services.api_key_create(user=cast.owner, name="matrix")
    return {"pk": key.pk}


CORE_ROUTES: dict[str, ObjectRoute] = {
    "project-detail": ObjectRoute(_project),
    "project-archive": ObjectRoute(_project),
    "project-restore": ObjectRoute(_project),
    "project-transfer": ObjectRoute(_project),
    # Cloning is a read of the source: a viewer may copy a project into one of their own.
    "project-clone": ObjectRoute(_project, viewer_allowed=("post",)),
    "member-list": ObjectRoute(_project_pk := lambda c: {"project_pk": c.project.pk}),
    "member-detail": ObjectRoute(_member),
    # A project's invitations are for its admins; even its viewers get 403 on reads.
    "project-invitation-list": ObjectRoute(_project_pk, viewer_read=403),
    "project-invitation-detail": ObjectRoute(_project_invitation, viewer_read=403),
    # An invitation is seen only by the person it is addressed to; every member is "not found".
    "invitation-detail": ObjectRoute(_received_invitation, viewer_read=404, viewer_write=404),
    "invitation-accept": ObjectRoute(_received_invitation, viewer_read=404, viewer_write=404),
    "invitation-decline": ObjectRoute(_received_invitation, viewer_read=404, viewer_write=404),
    "api-key-detail": ObjectRoute(_api_key, viewer_write=404, viewer_read=404),
}


def _all_routes() -> dict[str, ObjectRoute]:
    """CORE_ROUTES plus every app's `<app>/tests/matrix.py` ROUTES (each app declares its own)."""
    import importlib
    from pathlib import Path

    from django.conf import settings

    routes = dict(CORE_ROUTES)
    for app in ("accounts", "projects", "agents", "tools", "workflows", "runs", "policies"):
        if (Path(settings.BASE_DIR) / app / "tests" / "matrix.py").exists():
            routes.update(importlib.import_module(f"{app}.tests.matrix").ROUTES)
    return routes


ROUTES = _all_routes()


def _walk(patterns: list[Any], prefix: str = "") -> list[tuple[str, URLPattern]]:
    found = []
    for entry in patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            found.extend(_walk(entry.url_patterns, route))
        elif isinstance(entry, URLPattern):
            found.append((route, entry))
    return found


def _object_routes() -> list[tuple[str, URLPattern]]:
    routes = {}
    for route, pattern in _walk(get_resolver().url_patterns):
        if not route.startswith("api/v1/") or pattern.pattern.regex.groupindex == {}:
            continue
        if "format" in pattern.pattern.regex.groupindex:
            continue
        routes.setdefault(pattern.name, (route, pattern))
    return sorted(routes.values(), key=lambda item: item[1].name or "")


def _methods(pattern: URLPattern) -> list[str]:
    callback = pattern.callback
    actions = getattr(callback, "actions", None)
    if actions:
        return sorted(m for m in actions if m not in {"head", "options"})
    view_class = callback.view_class
    return sorted(
        m
        for m in view_class.http_method_names
        if hasattr(view_class, m) and m not in {"head", "options"}
    )


OBJECT_ROUTES = _object_routes()


def test_every_object_route_is_in_the_matrix():
    missing = [pattern.name for _, pattern in OBJECT_ROUTES if pattern.name not in ROUTES]
    assert not missing, f"Add these routes to ROUTES in {__file__}: {missing}"
    assert len(OBJECT_ROUTES) >= len(ROUTES)


@pytest.mark.parametrize("name", [pattern.name for _, pattern in OBJECT_ROUTES])
def test_outsider_gets_404_and_viewer_cannot_write(cast: Cast, name: str):
    from django.urls import reverse

    route = ROUTES[name]
    pattern = next(p for _, p in OBJECT_ROUTES if p.name == name)
    url = reverse(name, kwargs=route.kwargs(cast))
    for method in _methods(pattern):
        outsider = getattr(cast.client("outsider"), method)(url, {}, format="json")
        assert outsider.status_code == 404, (name, method, outsider.status_code)
        assert outsider.json()["type"] == "not_found"
        viewer = getattr(cast.client("viewer"), method)(url, {}, format="json")
        if method in route.viewer_allowed:
            continue
        expected = route.viewer_read if method in SAFE else route.viewer_write
        assert viewer.status_code == expected, (name, method, viewer.status_code, viewer.content)


def _collection_routes() -> list[str]:
    names = set()
    for route, pattern in _walk(get_resolver().url_patterns):
        groups = pattern.pattern.regex.groupindex
        if route.startswith("api/v1/") and not groups and pattern.name:
            names.add(pattern.name)
    return sorted(names)


@pytest.mark.parametrize(
    "name", [pattern.name for _, pattern in OBJECT_ROUTES] + _collection_routes()
)
def test_options_answers_every_route(cast: Cast, name: str):
    """OPTIONS (the browsable API's and CORS preflights' method) answers every route with its
    description, also custom actions whose viewset declares no serializer."""
    from django.urls import reverse

    kwargs = ROUTES[name].kwargs(cast) if name in ROUTES else {}
    response = cast.client("owner").options(reverse(name, kwargs=kwargs))
    assert response.status_code in (200, 401, 403, 405), (name, response.status_code)
    if response.status_code == 200:
        assert response.json()["name"], name
