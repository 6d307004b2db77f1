"""The version pages of agents, tools and workflows are one read-only admin (sparkops.adminkit
VersionAdmin): the same columns, detail and refusals for all three."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from accounts.tests.factories import UserFactory
from agents.tests.factories import AgentFactory
from tools.tests.factories import ToolFactory
from workflows.tests.factories import WorkflowFactory

pytestmark = pytest.mark.django_db

VERSIONED = {
    "agent": ("agents", lambda cast: AgentFactory(project=cast.project)),
    "tool": ("tools", lambda cast: ToolFactory(project=cast.project)),
    "workflow": ("workflows", lambda cast: WorkflowFactory(project=cast.project)),
}


@pytest.fixture
def operator(db: Any) -> Client:
    client = Client()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    return client


@pytest.mark.parametrize("kind", sorted(VERSIONED))
def test_version_pages_are_read_only_and_alike(operator, cast, kind):
    app, make = VERSIONED[kind]
    obj = make(cast)
    version = obj.versions.get()
    base = f"/admin/{app}/{kind}version/"

    listing = operator.get(base, {"o": "3"})  # sorted by the project column
    assert listing.status_code == 200
    assert listing.context["cl"].list_display[:5] == [
        kind,
        "number",
        "project",
        "created_by",
        "created_at",
    ]
    assert str(cast.project) in listing.content.decode()
    detail = operator.get(f"{base}{version.pk}/change/")
    assert detail.status_code == 200
    assert "Snapshot" in detail.content.decode()
    assert not detail.context["has_change_permission"]

    assert operator.get(f"{base}add/").status_code == 403
    assert operator.get(f"{base}{version.pk}/delete/").status_code == 403
    refused = operator.post(f"{base}{version.pk}/change/", {"number": "7"})
    assert refused.status_code == 403
    version.refresh_from_db()
    assert version.number == 1


@pytest.mark.parametrize("kind", ["agent", "tool"])
def test_an_object_is_deleted_with_its_versions(operator, cast, kind):
    app, make = VERSIONED[kind]
    obj = make(cast)
    url = f"/admin/{app}/{kind}/{obj.pk}/delete/"
    page = operator.get(url)
    assert page.status_code == 200
    assert not page.context["perms_lacking"]
    assert operator.post(url, {"post": "yes"}).status_code == 302
    assert not type(obj).objects.filter(pk=obj.pk).exists()
