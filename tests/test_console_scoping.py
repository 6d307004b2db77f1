"""Staff scoping in the admin: a staff member who is not a superuser sees only what the API
would show them, in every list, page and figure, and writes only with the API's role."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.tests.factories import UserFactory
from agents.tests.factories import AgentFactory
from projects import files
from projects import services as project_services
from projects.admin_scoping import ProjectScopedAdmin
from projects.models import Project, Role
from projects.tests.factories import MembershipFactory
from runs import services as run_services
from runs.models import IdempotencyKey
from runs.tests.factories import finished_run, make_workflow, transform
from tools.tests.factories import ToolFactory

pytestmark = pytest.mark.django_db

APPS = ["projects", "agents", "tools", "workflows", "runs", "policies"]


def staff(cast, role: str = Role.DEVELOPER) -> Any:
    user = UserFactory(is_staff=True)
    MembershipFactory(project=cast.project, user=user, role=role)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label__in=APPS))
    return user


def client_of(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def populate(project: Any, owner: Any, tag: str) -> Any:
    """One of everything in `project`."""
    project_services.secret_set(project=project, actor=owner, name=f"KEY_{tag}", value="v")
    files.file_save(project=project, name=f"file-{tag}.txt", content=b"x", uploaded_by=owner)
    AgentFactory(project=project, slug=f"agent-{tag}", created_by=owner)
    ToolFactory(project=project, name=f"tool_{tag}", created_by=owner)
    workflow = make_workflow(project, owner, [transform("a", 1)], name=f"wf-{tag}")
    run = run_services.run_create(workflow=workflow, input={}, actor=owner)
    IdempotencyKey.objects.create(
        project=project, user=owner, key=f"key-{tag}", request_hash="x", run=run
    )
    return workflow


def _populated() -> set[Any]:
    from agents.models import Agent, AgentVersion
    from projects.models import File, Membership, Secret
    from runs.models import Run, RunEvent, RunStep
    from tools.models import Tool, ToolVersion
    from workflows.models import Workflow, WorkflowVersion

    return {
        Project,
        Membership,
        Secret,
        File,
        Agent,
        AgentVersion,
        Tool,
        ToolVersion,
        Workflow,
        WorkflowVersion,
        Run,
        RunStep,
        RunEvent,
        IdempotencyKey,
    }


POPULATED = _populated()


def scoped_admins() -> list[tuple[Any, Any]]:
    return [
        (model, model_admin)
        for model, model_admin in admin.site._registry.items()
        if isinstance(model_admin, ProjectScopedAdmin)
    ]


def test_staff_lists_show_only_their_projects(cast):
    populate(cast.project, cast.owner, "mine")
    populate(cast.other_project, cast.outsider, "theirs")
    ToolFactory(project=None, is_global=True, name="global_tool")
    member, boss = client_of(staff(cast)), client_of(UserFactory(is_staff=True, is_superuser=True))
    checked = 0
    for model, model_admin in scoped_admins():
        url = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        seen = member.get(url)
        assert seen.status_code == 200, url
        rows = list(seen.context["cl"].queryset)
        for obj in rows:
            project = model_admin.project_of(obj)
            assert project in (None, cast.project), f"{url} shows {obj!r} of {project}"
        everything = list(boss.get(url).context["cl"].queryset)
        if model in POPULATED:  # rows of both projects exist: the member sees only theirs
            assert rows and len(everything) > len(rows), url
            assert any(model_admin.project_of(o) == cast.other_project for o in everything)
            checked += 1
    assert checked == len(POPULATED)


def test_other_projects_objects_are_not_found(cast):
    theirs = populate(cast.other_project, cast.outsider, "theirs")
    member = client_of(staff(cast))
    run = theirs.runs.get()
    for url in (
        f"/admin/workflows/workflow/{theirs.pk}/change/",
        f"/admin/runs/run/{run.pk}/change/",
    ):
        response = member.get(url)
        assert response.status_code == 302 and response.url == "/admin/"  # "doesn't exist"
    for url in (
        f"/admin/workflows/workflow/{theirs.pk}/graph/",
        f"/admin/workflows/workflow/{theirs.pk}/run/",
        f"/admin/runs/run/{run.pk}/live/",
    ):
        assert member.get(url).status_code == 404, url
    assert member.post(f"/admin/runs/run/{run.pk}/do/cancel/").status_code == 404
    response = member.post(
        "/admin/runs/run/", {"action": "cancel_runs", "_selected_action": [str(run.pk)]}
    )
    assert run.__class__.objects.get(pk=run.pk).status == "pending"
    assert response.status_code == 302  # nothing selected that this member can see


def test_a_viewer_reads_but_cannot_change(cast):
    mine = populate(cast.project, cast.owner, "mine")
    run = finished_run(cast, "failed")
    viewer = client_of(staff(cast, Role.VIEWER))
    page = viewer.get(f"/admin/workflows/workflow/{mine.pk}/change/")
    assert page.status_code == 200 and 'name="_save"' not in page.content.decode()
    assert viewer.get(f"/admin/workflows/workflow/{mine.pk}/run/").status_code == 403
    assert viewer.post(f"/admin/runs/run/{run.pk}/do/retry/").status_code == 403
    response = viewer.post(
        "/admin/runs/run/", {"action": "retry_runs", "_selected_action": [str(run.pk)]}
    )
    notes = [str(m) for m in response.wsgi_request._messages]
    assert any("your role in its project does not allow this" in n for n in notes)
    assert run.retries.count() == 0
    html = viewer.get(f"/admin/runs/run/{run.pk}/change/").content.decode()
    assert 'id="run-retry"' not in html


def test_new_objects_only_go_into_projects_where_the_member_may_write(cast):
    member = staff(cast, Role.DEVELOPER)
    MembershipFactory(project=cast.other_project, user=member, role=Role.VIEWER)
    form = client_of(member).get("/admin/workflows/workflow/add/").context["adminform"].form
    assert list(form.fields["project"].queryset) == [cast.project]


def test_dashboard_counts_only_their_projects(cast):
    populate(cast.project, cast.owner, "mine")
    populate(cast.other_project, cast.outsider, "theirs")
    html = client_of(staff(cast)).get("/admin/").content.decode()
    assert "wf-theirs" not in html
    assert "Other" not in html.split('id="workers"')[0]
    assert "<b>1</b><small>1 in 30 days</small>" in html  # one run in 24 h, not two


def test_every_project_owned_model_admin_is_scoped():
    """A new ModelAdmin for a model that belongs to a project must use ProjectScopedAdmin."""

    def owned(model: Any, depth: int = 0) -> bool:
        if model is Project:
            return True
        if depth > 1:
            return False
        return any(
            field.many_to_one
            and field.related_model is not None
            and owned(field.related_model, depth + 1)
            for field in model._meta.get_fields()
            if field.concrete
        )

    missing = [
        f"{model._meta.label}: {type(model_admin).__name__}"
        for model, model_admin in admin.site._registry.items()
        if owned(model) and not isinstance(model_admin, ProjectScopedAdmin)
    ]
    assert missing == []
