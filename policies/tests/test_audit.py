"""An audit row for each audited action, written by the services (so the API, the admin and
commands are all covered), with the actor, the project, the client's IP and the changes (a
secret's value never); and the log is append-only."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from accounts import services as account_services
from accounts.tests.factories import UserFactory
from agents import services as agent_services
from policies.tests.factories import make_budget, make_policy
from projects import services as project_services
from sparkops.audit import AuditEvent
from tools import services as tool_services
from workflows import services as workflow_services
from workflows.tests.factories import make_workflow, transform

pytestmark = pytest.mark.django_db

SECRET_VALUE = "sk-live-never-in-the-audit-log"


def actions(**filters):
    return list(
        AuditEvent.objects.filter(**filters).order_by("id").values_list("action", flat=True)
    )


def last(action):
    return AuditEvent.objects.filter(action=action).latest("id")


def test_catalog_actions(cast):
    owner, project = cast.owner, cast.project
    tool = tool_services.tool_create(
        actor=owner,
        project=project,
        name="calc",
        kind="builtin",
        config={"function": "calculator"},
    )
    tool_services.tool_update(tool=tool, actor=owner, description="Adds")
    tool_services.tool_rollback(tool=tool, actor=owner, version=1)
    agent = agent_services.agent_create(
        actor=owner, project=project, name="Bot", provider="simulated", model="sim-1"
    )
    agent_services.agent_update(agent=agent, actor=owner, model="sim-2")
    agent_id = agent.pk
    workflow = make_workflow(project, owner, [transform("a", 1)])
    workflow_services.workflow_update(workflow=workflow, actor=owner, description="d")
    workflow_services.workflow_delete(workflow=workflow, actor=owner)
    agent_services.agent_delete(agent=agent, actor=owner)
    tool_services.tool_delete(tool=tool, actor=owner)
    assert actions(project=project) == [
        "tool.create",
        "tool.update",
        "tool.rollback",
        "agent.create",
        "agent.update",
        "workflow.create",
        "workflow.update",
        "workflow.delete",
        "agent.delete",
        "tool.delete",
    ]
    update = last("agent.update")
    assert update.changes == {"model": "sim-2"}
    assert (update.object_type, update.object_id, update.object_repr) == (
        "agents.agent",
        str(agent_id),
        "Bot",
    )
    assert update.actor_id == owner.pk and update.actor_email == owner.email
    deleted = last("agent.delete")
    assert deleted.object_id == str(agent_id)  # kept although the agent is gone
    assert last("tool.update").changes == {"description": "Adds"}
    assert last("workflow.create").changes["definition"]["nodes"][0]["id"] == "a"


def test_global_tool_actions_have_no_project(cast):
    staff = UserFactory(is_staff=True)
    tool = tool_services.tool_create(
        actor=staff, is_global=True, name="g", kind="builtin", config={"function": "noop"}
    )
    event = last("tool.create")
    assert event.project_id is None and event.object_id == str(tool.pk)


def test_member_actions(cast):
    newcomer = UserFactory(email="new@example.com")
    membership = project_services.membership_add(
        project=cast.project, actor=cast.admin, user=newcomer, role="viewer"
    )
    project_services.membership_update(membership=membership, actor=cast.admin, role="developer")
    project_services.membership_remove(membership=membership, actor=cast.admin)
    assert actions(project=cast.project) == ["member.add", "member.update", "member.remove"]
    assert last("member.update").changes == {"email": newcomer.email, "role": "developer"}
    assert last("member.remove").actor_email == "admin@example.com"


def test_secret_actions_record_the_name_only(cast):
    secret = project_services.secret_create(
        project=cast.project, actor=cast.admin, name="OPENAI_KEY", value=SECRET_VALUE
    )
    project_services.secret_set(
        project=cast.project, actor=cast.admin, name="OPENAI_KEY", value=SECRET_VALUE + "2"
    )
    project_services.secret_delete(secret=secret, actor=cast.admin)
    assert actions(project=cast.project) == ["secret.create", "secret.update", "secret.delete"]
    assert last("secret.create").changes == {"name": "OPENAI_KEY"}
    dump = json.dumps(list(AuditEvent.objects.values()), default=str)
    assert SECRET_VALUE not in dump


def test_policy_and_budget_actions(cast):
    policy = make_policy(cast.project, cast.admin, "pii", {})
    from policies import services

    services.policy_update(policy=policy, actor=cast.admin, mode="audit")
    services.policy_delete(policy=policy, actor=cast.admin)
    budget = make_budget(cast.project, cast.admin, limit="5")
    services.budget_update(budget=budget, actor=cast.admin, limit_usd="6")
    services.budget_delete(budget=budget, actor=cast.admin)
    assert actions(project=cast.project) == [
        "policy.create",
        "policy.update",
        "policy.delete",
        "budget.create",
        "budget.update",
        "budget.delete",
    ]
    assert last("policy.update").changes == {"mode": "audit"}
    assert last("budget.update").changes == {"limit_usd": "6.000000"}


def test_project_actions(cast):
    project = project_services.project_create(actor=cast.owner, name="New")
    project_id = project.pk
    project_services.project_update(project=project, actor=cast.owner, description="x")
    project_services.membership_add(
        project=project, actor=cast.owner, user=cast.admin, role="admin"
    )
    project_services.project_transfer(project=project, actor=cast.owner, new_owner=cast.admin)
    project_services.project_delete(project=project, actor=cast.admin)
    assert actions(project_id=project_id) == [
        "project.create",
        "project.update",
        "member.add",
        "project.transfer",
        "project.delete",
    ]
    # the project is gone; its audit trail is not
    assert AuditEvent.objects.filter(project_id=project_id).count() == 5


def test_api_keys_logins_and_password_changes(cast, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = UserFactory(email="keys@example.com", password="Old-password-123")
    key, raw = account_services.api_key_create(user=user, name="ci")
    account_services.api_key_revoke(user=user, key_id=key.pk)
    account_services.api_key_replace_default(user=user)
    client = Client(REMOTE_ADDR="203.0.113.7")
    response = client.post(
        "/api/v1/auth/login",
        {"email": user.email, "password": "Old-password-123"},
        content_type="application/json",
    )
    assert response.status_code == 200, response.content
    response = client.post(
        "/api/v1/auth/login",
        {"email": user.email, "password": "wrong"},
        content_type="application/json",
    )
    assert response.status_code == 401
    account_services.user_change_password(
        user=user, old_password="Old-password-123", new_password="New-password-456"
    )
    assert actions(actor=user) == [
        "api_key.create",
        "api_key.revoke",
        "api_key.revoke",
        "api_key.create",
        "auth.login",
        "auth.password_change",
    ]
    assert last("api_key.create").changes == {"name": "default"}
    assert raw not in json.dumps(list(AuditEvent.objects.values("changes")))
    login = last("auth.login")
    assert login.ip == "203.0.113.7" and login.changes == {"via": "jwt"}
    failed = last("auth.login_failed")
    assert failed.actor_id is None and failed.changes == {"email": user.email}
    assert failed.ip == "203.0.113.7"


def test_session_login_to_the_console_is_audited(cast):
    staff = UserFactory(is_staff=True, password="Console-pass-123")
    response = Client().post(
        "/admin/login/?next=/admin/",
        {"username": staff.email, "password": "Console-pass-123"},
    )
    assert response.status_code == 302
    assert last("auth.login").changes == {"via": "session"}


def test_changes_are_masked_and_api_writes_carry_the_ip(cast):
    response = cast.client("developer").post(
        "/api/v1/tools/",
        {
            "project": str(cast.project.pk),
            "name": "hook",
            "kind": "http",
            "config": {
                "method": "POST",
                "url": "https://example.com/hook",
                "headers": {"Authorization": "Bearer {{ secrets.TOKEN }}", "X-Trace": "1"},
            },
        },
        format="json",
        REMOTE_ADDR="198.51.100.9",
    )
    assert response.status_code == 201, response.json()
    event = last("tool.create")
    assert event.ip == "198.51.100.9" and event.actor_email == "developer@example.com"
    assert event.changes["config"]["headers"] == {"Authorization": "***", "X-Trace": "1"}


def test_the_log_is_append_only(cast):
    make_policy(cast.project, cast.owner, "pii", {})
    event = AuditEvent.objects.get()
    event.action = "forged"
    with pytest.raises(ValueError, match="append-only"):
        event.save()
    with pytest.raises(ValueError, match="append-only"):
        event.delete()
    with pytest.raises(ValueError, match="append-only"):
        AuditEvent.objects.update(action="forged")
    with pytest.raises(ValueError, match="append-only"):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get().action == "policy.create"


def test_clone_is_audited_on_the_new_project(cast):
    clone = workflow_services.project_clone(project=cast.project, actor=cast.viewer, name="Copy")
    assert actions(project=clone) == ["project.create", "project.clone"]
    assert last("project.clone").changes == {"source": str(cast.project.pk)}
