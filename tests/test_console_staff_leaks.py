"""What a staff member who is not a superuser must not learn from the admin's side doors: list
filters, autocompletes, raw-id pop-ups and simplejwt's token admins (a refresh token is enough
to take over an account). Checked through the real admin pages."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.test import Client, RequestFactory
from rest_framework_simplejwt.token_blacklist.models import OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken

from accounts.tests.factories import UserFactory
from projects import services as project_services
from projects.models import Role
from projects.tests.factories import MembershipFactory, ProjectFactory
from tests.test_console_scoping import populate
from workflows import schedules
from workflows.tests.factories import WorkflowFactory

pytestmark = pytest.mark.django_db

APPS = [
    *("accounts", "token_blacklist", "projects", "agents", "tools", "workflows", "runs"),
    "policies",
]


@pytest.fixture
def member(cast: Any) -> Any:
    """Staff, not superuser, an admin of Acme, with every view and change permission."""
    user = UserFactory(email="staff@example.com", is_staff=True)
    MembershipFactory(project=cast.project, user=user, role=Role.ADMIN)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label__in=APPS))
    return user


def client_of(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def filter_choices(response: Any) -> list[str]:
    """Every label every list filter of a changelist offers."""
    labels = []
    for spec in response.context["cl"].filter_specs:
        for choice in spec.choices(response.context["cl"]):
            labels.append(str(choice.get("display", "")))
    return labels


def test_secret_project_filter_lists_only_their_projects(cast: Any, member: Any) -> None:
    beta = ProjectFactory(name="Beta", slug="beta", owner=member)
    project_services.secret_set(project=cast.project, actor=cast.owner, name="MINE", value="v")
    project_services.secret_set(project=beta, actor=member, name="ALSO_MINE", value="v")
    project_services.secret_set(
        project=cast.other_project, actor=cast.outsider, name="THEIRS", value="v"
    )

    labels = filter_choices(client_of(member).get("/admin/projects/secret/"))

    # (A filter with one choice is not shown at all, hence two projects of their own.)
    assert {"Acme", "Beta"} <= set(labels)
    assert "Other" not in labels


def test_no_changelist_filter_names_another_tenant(cast: Any, member: Any) -> None:
    populate(cast.project, cast.owner, "mine")
    populate(cast.other_project, cast.outsider, "theirs")
    RefreshToken.for_user(cast.outsider)
    client = client_of(member)
    checked = 0
    for model, model_admin in admin.site._registry.items():
        if not model_admin.has_view_permission(_request(member)):
            continue
        url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        response = client.get(url)
        assert response.status_code == 200, url
        labels = filter_choices(response)
        assert "Other" not in labels, url
        assert not [label for label in labels if "outsider@" in label], url
        assert "outsider@example.com" not in response.content.decode(), url
        checked += 1
    assert checked > 30


def _request(user: Any) -> Any:
    request = RequestFactory().get("/admin/")
    request.user = user
    return request


def test_token_admins_show_staff_only_their_own_tokens(cast: Any, member: Any) -> None:
    mine = RefreshToken.for_user(member)
    theirs = RefreshToken.for_user(cast.outsider)
    RefreshToken.for_user(cast.outsider).blacklist()
    mine_blacklisted = RefreshToken.for_user(member)
    mine_blacklisted.blacklist()
    client = client_of(member)

    outstanding = client.get("/admin/token_blacklist/outstandingtoken/")
    assert {t.user for t in outstanding.context["cl"].queryset} == {member}
    assert {t.jti for t in outstanding.context["cl"].queryset} == {
        mine["jti"],
        mine_blacklisted["jti"],
    }
    blacklisted = client.get("/admin/token_blacklist/blacklistedtoken/")
    assert [b.token.jti for b in blacklisted.context["cl"].queryset] == [mine_blacklisted["jti"]]

    row = OutstandingToken.objects.get(jti=theirs["jti"])
    page = client.get(f"/admin/token_blacklist/outstandingtoken/{row.pk}/change/")
    assert page.status_code == 302 and page.url == "/admin/"  # "doesn't exist"
    assert str(theirs) not in client.get(page.url).content.decode()

    # A superuser still sees everyone's.
    boss = client_of(UserFactory(is_staff=True, is_superuser=True))
    everyone = boss.get("/admin/token_blacklist/outstandingtoken/").context["cl"].queryset
    assert {t.user for t in everyone} >= {member, cast.outsider}


def autocomplete(client: Client, model: str, field: str, term: str, app: str = "projects") -> Any:
    response = client.get(
        "/admin/autocomplete/",
        {"app_label": app, "model_name": model, "field_name": field, "term": term},
    )
    assert response.status_code == 200, response.content
    return [result["text"] for result in response.json()["results"]]


def test_autocompletes_offer_only_what_the_member_may_see(cast: Any, member: Any) -> None:
    client = client_of(member)

    assert autocomplete(client, "membership", "user", "outsider") == []
    assert autocomplete(client, "membership", "user", "viewer") == ["viewer@example.com"]
    assert autocomplete(client, "project", "owner", "example.com") == [
        "admin@example.com",
        "developer@example.com",
        "owner@example.com",
        "staff@example.com",
        "viewer@example.com",
    ]
    assert autocomplete(client, "secret", "project", "Other") == []
    assert autocomplete(client, "secret", "project", "Acme") == ["Acme"]


def test_user_list_and_raw_id_popups_show_only_co_members(cast: Any, member: Any) -> None:
    client = client_of(member)

    listed = client.get("/admin/accounts/user/?_popup=1&_to_field=id")
    emails = {u.email for u in listed.context["cl"].queryset}
    assert "outsider@example.com" not in emails
    assert {"owner@example.com", "staff@example.com"} <= emails
    page = client.get(f"/admin/accounts/user/{cast.outsider.pk}/change/")
    assert page.status_code == 302


def test_beat_entries_show_staff_only_their_projects_schedules(cast: Any, member: Any) -> None:
    member.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="django_celery_beat")
    )
    mine = schedules.schedule_create(
        actor=cast.owner,
        workflow=WorkflowFactory(project=cast.project, created_by=cast.owner),
        name="mine",
        cron="0 * * * *",
        input={"name": "x"},
    )
    theirs = schedules.schedule_create(
        actor=cast.outsider,
        workflow=WorkflowFactory(project=cast.other_project, created_by=cast.outsider),
        name="theirs",
        cron="0 * * * *",
        input={"name": "x"},
    )
    client = client_of(member)

    listed = client.get("/admin/django_celery_beat/periodictask/").context["cl"].queryset
    assert [task.pk for task in listed] == [mine.periodic_task_id]
    page = client.get(f"/admin/django_celery_beat/periodictask/{theirs.periodic_task_id}/change/")
    assert page.status_code == 302 and page.url == "/admin/"  # "doesn't exist"
