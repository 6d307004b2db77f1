"""Every write route under /api/v1/ (each POST/PUT/PATCH/DELETE, actions included) called once
with a valid body, as a user allowed to make it, with real transactions: pytest-django's default
test transaction hides a service that locks rows (`select_for_update`) or writes several rows
without `transaction.atomic`, so these tests run with `transaction=True`. A write route missing
from WRITES fails `test_every_write_route_is_declared`.

One transactional test per app walks that app's entries over a shared cast (flushing a
transactional database per call would be far slower)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.urls import reverse

from accounts.tests.factories import PASSWORD, UserFactory
from conftest import Cast, client_for
from tests.test_cross_tenant import _walk

WRITE_METHODS = {"post", "put", "patch", "delete"}
Body = dict[str, Any] | None
_SEQ = itertools.count(1)  # unique names


@dataclass
class Call:
    app: str
    # Builds (URL kwargs, JSON body) for the call, creating whatever it needs in cast.project.
    build: Callable[[Cast], tuple[dict[str, Any], Body]]
    status: int = 200
    who: str = "owner"  # a cast member, or "anonymous"
    format: str = "json"  # or "multipart" (uploads)


def _none(cast: Cast) -> tuple[dict[str, Any], Body]:
    return {}, None


def _with(body: Callable[[Cast], Body]) -> Callable[[Cast], tuple[dict[str, Any], Body]]:
    return lambda cast: ({}, body(cast))


def _pk(make: Callable[[Cast], Any], body: Body = None) -> Callable[[Cast], Any]:
    return lambda cast: ({"pk": make(cast).pk}, body)


# --- accounts -------------------------------------------------------------------------------


def _login(cast: Cast) -> dict[str, Any]:
    response = client_for().post(
        "/api/v1/auth/login", {"email": cast.developer.email, "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json()


def _api_key(cast: Cast) -> Any:
    from accounts import services

    return services.api_key_create(user=cast.owner, name="write-routes")[0]


ACCOUNTS = {
    ("auth-register", "post"): Call(
        "accounts",
        _with(lambda c: {"email": "new-user@example.com", "password": PASSWORD}),
        201,
        "anonymous",
    ),
    ("auth-login", "post"): Call(
        "accounts",
        _with(lambda c: {"email": c.viewer.email, "password": PASSWORD}),
        who="anonymous",
    ),
    ("auth-refresh", "post"): Call(
        "accounts", _with(lambda c: {"refresh": _login(c)["refresh"]}), who="anonymous"
    ),
    ("auth-logout", "post"): Call(
        "accounts", _with(lambda c: {"refresh": _login(c)["refresh"]}), 204, "developer"
    ),
    ("auth-me", "patch"): Call("accounts", _with(lambda c: {"name": "Ada"}), who="developer"),
    ("auth-password", "post"): Call(
        "accounts",
        _with(lambda c: {"old_password": PASSWORD, "new_password": "another-long-passphrase"}),
        204,
        "admin",
    ),
    ("auth-api-key", "post"): Call("accounts", _none, 201),
    ("auth-api-key", "delete"): Call("accounts", _none, 204),
    ("api-key-list", "post"): Call("accounts", _with(lambda c: {"name": "ci"}), 201),
    ("api-key-detail", "delete"): Call("accounts", _pk(_api_key), 204),
}


# --- projects -------------------------------------------------------------------------------


def _project(cast: Cast) -> Any:
    from projects.tests.factories import ProjectFactory

    return ProjectFactory(owner=cast.owner)


def _own_project(cast: Cast) -> dict[str, Any]:
    return {"pk": cast.project.pk}


def _new_member(cast: Cast) -> dict[str, Any]:
    from projects.tests.factories import MembershipFactory

    membership = MembershipFactory(project=cast.project, user=UserFactory(), role="viewer")
    return {"project_pk": cast.project.pk, "pk": membership.pk}


def _invitation(cast: Cast, email: str, key: str, nested: bool = False) -> dict[str, Any]:
    """A fresh pending invitation to cast.project (each call revokes the previous one for the
    address and undoes an accepted one, so the entries can run in any order)."""
    from projects import services
    from projects.models import Invitation, Membership

    Membership.objects.filter(project=cast.project, user__email=email).delete()
    for open_one in Invitation.objects.pending().filter(project=cast.project, email=email):
        services.invitation_revoke(invitation=open_one, actor=cast.owner)
    invitation, token = services.invitation_create(
        project=cast.project, actor=cast.owner, email=email, role="viewer"
    )
    kwargs = {key: invitation.pk}
    cast.last_invitation_token = token  # type: ignore[attr-defined]
    return {"project_pk": cast.project.pk, **kwargs} if nested else kwargs


def _accept(cast: Cast) -> tuple[dict[str, Any], Body]:
    kwargs = _invitation(cast, cast.outsider.email, "pk")
    return kwargs, {"token": cast.last_invitation_token}  # type: ignore[attr-defined]


def _secret(cast: Cast) -> Any:
    from projects import services

    return services.secret_create(
        project=cast.project, actor=cast.owner, name=f"S{next(_SEQ)}", value="v"
    )


def _upload_body(cast: Cast) -> Body:
    from django.core.files.uploadedfile import SimpleUploadedFile

    return {"project": str(cast.project.pk), "file": SimpleUploadedFile("n.txt", b"notes")}


def _file(cast: Cast) -> Any:
    from projects import files

    return files.file_save(project=cast.project, name="f.txt", content=b"x")


def _endpoint(cast: Cast) -> Any:
    from projects import webhooks

    return webhooks.endpoint_create(
        actor=cast.owner, project=cast.project, url="http://127.0.0.1:9/hook"
    )[0]


def _delivery(cast: Cast) -> tuple[dict[str, Any], Body]:
    from projects import webhooks

    endpoint = _endpoint(cast)
    delivery = webhooks.endpoint_ping(endpoint=endpoint, actor=cast.owner)
    # As if its attempts ran out (only a finished delivery can be sent again).
    type(delivery).objects.filter(pk=delivery.pk).update(status="failed")
    return {"pk": endpoint.pk, "delivery_id": delivery.pk}, None


def _archived(cast: Cast) -> Any:
    from projects import services

    project = _project(cast)
    return services.project_set_status(project=project, actor=cast.owner, status="archived")


def _endpoint_body(cast: Cast) -> dict[str, Any]:
    return {"project": str(cast.project.pk), "url": "http://127.0.0.1:9/other"}


PROJECTS = {
    ("project-list", "post"): Call("projects", _with(lambda c: {"name": "Created"}), 201),
    ("project-detail", "put"): Call(
        "projects", lambda c: (_own_project(c), {"name": "Renamed", "slug": "acme"})
    ),
    ("project-detail", "patch"): Call(
        "projects", lambda c: (_own_project(c), {"description": "d"})
    ),
    ("project-detail", "delete"): Call("projects", _pk(_project), 204),
    ("project-archive", "post"): Call("projects", _pk(_project)),
    ("project-restore", "post"): Call("projects", _pk(_archived)),
    ("project-clone", "post"): Call("projects", lambda c: (_own_project(c), {"name": "Copy"}), 201),
    ("project-transfer", "post"): Call(
        "projects", lambda c: ({"pk": _project_with_admin(c).pk}, {"email": c.admin.email})
    ),
    ("project-invitation-list", "post"): Call(
        "projects",
        lambda c: ({"project_pk": c.project.pk}, {"email": UserFactory().email, "role": "viewer"}),
        201,
    ),
    ("project-invitation-detail", "delete"): Call(
        "projects", lambda c: (_invitation(c, "invited@example.com", "pk", True), None), 204
    ),
    ("invitation-accept", "post"): Call("projects", _accept, 201, "outsider"),
    ("invitation-decline", "post"): Call(
        "projects", lambda c: (_invitation(c, c.outsider.email, "pk"), None), 200, "outsider"
    ),
    ("member-detail", "put"): Call("projects", lambda c: (_new_member(c), {"role": "developer"})),
    ("member-detail", "patch"): Call("projects", lambda c: (_new_member(c), {"role": "admin"})),
    ("member-detail", "delete"): Call("projects", lambda c: (_new_member(c), None), 204),
    ("secret-list", "post"): Call(
        "projects",
        _with(lambda c: {"project": str(c.project.pk), "name": "API_TOKEN", "value": "s3cret"}),
        201,
    ),
    ("secret-detail", "delete"): Call("projects", _pk(_secret), 204),
    ("secret-replace-value", "put"): Call("projects", _pk(_secret, {"value": "new-value"})),
    ("webhook-endpoint-list", "post"): Call("projects", _with(_endpoint_body), 201),
    ("webhook-endpoint-detail", "put"): Call(
        "projects", lambda c: ({"pk": _endpoint(c).pk}, _endpoint_body(c))
    ),
    ("webhook-endpoint-detail", "patch"): Call("projects", _pk(_endpoint, {"enabled": False})),
    ("webhook-endpoint-detail", "delete"): Call("projects", _pk(_endpoint), 204),
    ("webhook-endpoint-ping", "post"): Call("projects", _pk(_endpoint), 202),
    ("webhook-endpoint-rotate-secret", "post"): Call("projects", _pk(_endpoint)),
    ("webhook-endpoint-redeliver", "post"): Call("projects", _delivery, 202),
    ("file-list", "post"): Call("projects", _with(_upload_body), 201, format="multipart"),
    ("file-detail", "delete"): Call("projects", _pk(_file), 204),
}


def _project_with_admin(cast: Cast) -> Any:
    from projects.tests.factories import MembershipFactory

    project = _project(cast)
    MembershipFactory(project=project, user=cast.admin, role="admin")
    return project


# --- agents, tools --------------------------------------------------------------------------


def _agent(cast: Cast) -> Any:
    from agents.tests.factories import AgentFactory

    return AgentFactory(project=cast.project)


def _agent_body(cast: Cast) -> dict[str, Any]:
    return {
        "project": str(cast.project.pk),
        "name": f"Written agent {next(_SEQ)}",
        "provider": "simulated",
        "model": "sim-1",
    }


def _tool(cast: Cast) -> Any:
    from tools.tests.factories import ToolFactory

    return ToolFactory(project=cast.project, created_by=cast.owner)


def _tool_body(cast: Cast) -> dict[str, Any]:
    return {
        "project": str(cast.project.pk),
        "name": f"tool_{next(_SEQ)}",
        "kind": "builtin",
        "config": {"function": "noop"},
    }


AGENTS = {
    ("agent-list", "post"): Call("agents", _with(_agent_body), 201),
    ("agent-detail", "put"): Call("agents", lambda c: ({"pk": _agent(c).pk}, _agent_body(c))),
    ("agent-detail", "patch"): Call("agents", _pk(_agent, {"description": "d"})),
    ("agent-detail", "delete"): Call("agents", _pk(_agent), 204),
    ("agent-rollback", "post"): Call("agents", _pk(_agent, {"version": 1})),
    ("agent-test", "post"): Call("agents", _pk(_agent, {"prompt": "Hello"})),
}


def _model_price(cast: Cast) -> Any:
    from agents import services

    return services.model_price_create(
        actor=cast.owner,
        project=cast.project,
        provider="openai_compatible",
        model_pattern=f"llama-{next(_SEQ)}*",
        input_per_million=1,
        output_per_million=2,
    )


def _model_price_body(cast: Cast) -> dict[str, Any]:
    return {
        "project": str(cast.project.pk),
        "provider": "openai_compatible",
        "model_pattern": f"qwen-{next(_SEQ)}*",
        "input_per_million": "0.5",
        "output_per_million": "1.5",
    }


MODEL_PRICES = {
    ("model-price-list", "post"): Call("agents", _with(_model_price_body), 201),
    ("model-price-detail", "put"): Call(
        "agents", lambda c: ({"pk": _model_price(c).pk}, _model_price_body(c))
    ),
    ("model-price-detail", "patch"): Call("agents", _pk(_model_price, {"output_per_million": 3})),
    ("model-price-detail", "delete"): Call("agents", _pk(_model_price), 204),
}


def _mcp_body(cast: Cast) -> dict[str, Any]:
    from tools.tests.mcp_server import shared_server

    return {"project": str(cast.project.pk), "name": f"mcp{next(_SEQ)}", "url": shared_server().url}


def _mcp_server(cast: Cast) -> Any:
    from tools import mcp_services

    body = _mcp_body(cast)
    body.pop("project")
    return mcp_services.mcp_server_create(actor=cast.owner, project=cast.project, **body)


TOOLS = {
    ("tool-list", "post"): Call("tools", _with(_tool_body), 201),
    ("tool-detail", "put"): Call("tools", lambda c: ({"pk": _tool(c).pk}, _tool_body(c))),
    ("tool-detail", "patch"): Call("tools", _pk(_tool, {"description": "d"})),
    ("tool-detail", "delete"): Call("tools", _pk(_tool), 204),
    ("tool-rollback", "post"): Call("tools", _pk(_tool, {"version": 1})),
    ("tool-invoke", "post"): Call("tools", _pk(_tool, {"arguments": {}})),
    ("mcp-server-list", "post"): Call("tools", _with(_mcp_body), 201),
    ("mcp-server-detail", "put"): Call(
        "tools", lambda c: ({"pk": _mcp_server(c).pk}, {**_mcp_body(c), "enabled": False})
    ),
    ("mcp-server-detail", "patch"): Call("tools", _pk(_mcp_server, {"description": "d"})),
    ("mcp-server-detail", "delete"): Call("tools", _pk(_mcp_server), 204),
    ("mcp-server-discover", "post"): Call("tools", _pk(_mcp_server)),
    ("mcp-server-test", "post"): Call("tools", _pk(_mcp_server)),
}


# --- workflows ------------------------------------------------------------------------------


def _workflow(cast: Cast) -> Any:
    from workflows.tests.factories import WorkflowFactory

    return WorkflowFactory(project=cast.project, created_by=cast.owner)


def _workflow_body(cast: Cast) -> dict[str, Any]:
    from workflows.tests.factories import transform_definition

    return {
        "project": str(cast.project.pk),
        "name": f"Workflow {next(_SEQ)}",
        "definition": transform_definition(),
    }


def _paused(cast: Cast) -> Any:
    from workflows import services

    return services.workflow_set_status(workflow=_workflow(cast), actor=cast.owner, status="paused")


def _schedule(cast: Cast) -> Any:
    from workflows import schedules

    return schedules.schedule_create(
        actor=cast.owner, workflow=_workflow(cast), name="s", cron="0 * * * *", input={"name": "x"}
    )


def _schedule_body(cast: Cast, workflow: Any = None) -> dict[str, Any]:
    workflow = workflow or _workflow(cast)
    return {"workflow": workflow.pk, "name": "nightly", "cron": "0 2 * * *"} | {
        "input": {"name": "Ada"}
    }


def _webhook_trigger(cast: Cast) -> Any:
    from workflows import webhooks

    return webhooks.webhook_trigger_create(actor=cast.owner, workflow=_workflow(cast), name="w")[0]


def _put_webhook_trigger(cast: Cast) -> tuple[dict[str, Any], Body]:
    trigger = _webhook_trigger(cast)
    return {"pk": trigger.pk}, {"workflow": trigger.workflow_id, "name": "gh"}


def _hook(cast: Cast) -> tuple[dict[str, Any], Body]:
    from workflows import webhooks

    token = webhooks.webhook_trigger_create(actor=cast.owner, workflow=_workflow(cast), name="h")[1]
    return {"token": token}, {"name": "Ada"}


def _event_trigger(cast: Cast) -> Any:
    from workflows import event_triggers

    workflow = _workflow(cast)
    return event_triggers.event_trigger_create(
        actor=cast.owner, source_workflow=workflow, target_workflow=_workflow(cast), name="e"
    )


def _event_trigger_body(cast: Cast, trigger: Any = None) -> dict[str, Any]:
    return {
        "source_workflow": (trigger.source_workflow if trigger else _workflow(cast)).pk,
        "target_workflow": (trigger.target_workflow if trigger else _workflow(cast)).pk,
        "name": "chain",
    }


def _put_schedule(cast: Cast) -> tuple[dict[str, Any], Body]:
    schedule = _schedule(cast)
    return {"pk": schedule.pk}, _schedule_body(cast, schedule.workflow)


def _paused_schedule(cast: Cast) -> Any:
    from workflows import schedules

    return schedules.schedule_pause(schedule=_schedule(cast), actor=cast.owner)


_BACKFILL = {"from": "2025-06-02T09:00:00Z", "to": "2025-06-02T11:00:00Z"}


def _put_event_trigger(cast: Cast) -> tuple[dict[str, Any], Body]:
    trigger = _event_trigger(cast)
    return {"pk": trigger.pk}, _event_trigger_body(cast, trigger)


WORKFLOWS = {
    ("workflow-list", "post"): Call("workflows", _with(_workflow_body), 201),
    ("workflow-validate", "post"): Call(
        "workflows", _with(lambda c: {**_workflow_body(c), "name": None})
    ),
    ("workflow-detail", "put"): Call(
        "workflows", lambda c: ({"pk": _workflow(c).pk}, _workflow_body(c))
    ),
    ("workflow-detail", "patch"): Call("workflows", _pk(_workflow, {"description": "d"})),
    ("workflow-detail", "delete"): Call("workflows", _pk(_workflow), 204),
    ("workflow-activate", "post"): Call("workflows", _pk(_paused)),
    ("workflow-pause", "post"): Call("workflows", _pk(_workflow)),
    ("workflow-rollback", "post"): Call("workflows", _pk(_workflow, {"version": 1})),
    ("workflow-run", "post"): Call("workflows", _pk(_workflow, {"input": {"name": "Ada"}}), 201),
    ("schedule-list", "post"): Call("workflows", _with(_schedule_body), 201),
    ("schedule-preview-cron", "post"): Call("workflows", _with(lambda c: {"cron": "0 * * * *"})),
    ("schedule-detail", "put"): Call("workflows", _put_schedule),
    ("schedule-detail", "patch"): Call("workflows", _pk(_schedule, {"enabled": False})),
    ("schedule-detail", "delete"): Call("workflows", _pk(_schedule), 204),
    ("webhook-trigger-list", "post"): Call(
        "workflows", _with(lambda c: {"workflow": _workflow(c).pk, "name": "gh"}), 201
    ),
    ("webhook-trigger-detail", "put"): Call("workflows", _put_webhook_trigger),
    ("webhook-trigger-detail", "patch"): Call(
        "workflows", _pk(_webhook_trigger, {"enabled": False})
    ),
    ("webhook-trigger-detail", "delete"): Call("workflows", _pk(_webhook_trigger), 204),
    ("webhook-trigger-rotate", "post"): Call("workflows", _pk(_webhook_trigger)),
    ("hook", "post"): Call("workflows", _hook, 202, "anonymous"),
    ("event-trigger-list", "post"): Call("workflows", _with(_event_trigger_body), 201),
    ("event-trigger-detail", "put"): Call("workflows", _put_event_trigger),
    ("event-trigger-detail", "patch"): Call("workflows", _pk(_event_trigger, {"enabled": False})),
    ("event-trigger-detail", "delete"): Call("workflows", _pk(_event_trigger), 204),
}


# --- runs -----------------------------------------------------------------------------------


def _running_run(cast: Cast) -> Any:
    from runs.tests.factories import finished_run

    # A row, not a started run: a session worker of other tests would finish a started one.
    return finished_run(cast, status="running")


def _finished_run(cast: Cast) -> Any:
    from runs.tests.factories import finished_run

    return finished_run(cast)


def _waiting(cast: Cast) -> tuple[dict[str, Any], Body]:
    from runs.models import Run, RunStep
    from runs.tests.factories import finished_run

    run = finished_run(cast, status=Run.Status.WAITING_APPROVAL)
    RunStep.objects.filter(run=run).update(status=RunStep.Status.WAITING_APPROVAL)
    return {"pk": run.pk, "node_id": "a"}, {"comment": "ok"}


def _mcp_call(cast: Cast) -> tuple[dict[str, Any], Body]:
    workflow = _workflow(cast)
    return {"pk": cast.project.pk}, {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {
            "name": workflow.slug,
            "arguments": {"name": "Ada"},
            "_meta": {"io.sparkops/wait": 0},
        },
    }


RUNS = {
    ("run-list", "post"): Call(
        "runs", _with(lambda c: {"workflow": _workflow(c).pk, "input": {"name": "Ada"}}), 201
    ),
    ("run-cancel", "post"): Call("runs", _pk(_running_run)),
    ("run-cancel", "patch"): Call("runs", _pk(_running_run)),
    ("run-retry", "post"): Call("runs", _pk(_finished_run, {}), 201),
    ("run-approve", "post"): Call("runs", _waiting),
    ("run-reject", "post"): Call("runs", _waiting),
    ("schedule-pause", "post"): Call("runs", _pk(_schedule)),
    ("schedule-resume", "post"): Call("runs", _pk(_paused_schedule)),
    ("schedule-backfill", "post"): Call("runs", _pk(_schedule, _BACKFILL)),
    # An MCP tools/call starts a run (answered at once: `io.sparkops/wait` 0).
    ("project-mcp", "post"): Call("runs", lambda c: _mcp_call(c)),
}


# --- policies -------------------------------------------------------------------------------


def _policy(cast: Cast) -> Any:
    from policies.tests.factories import make_policy

    return make_policy(cast.project, cast.owner, "pii", {}, name=f"P{next(_SEQ)}")


def _policy_body(cast: Cast) -> dict[str, Any]:
    return {"project": str(cast.project.pk), "name": f"P{next(_SEQ)}", "kind": "pii"} | {"rule": {}}


def _budget(cast: Cast) -> Any:
    from policies.tests.factories import make_budget

    return make_budget(cast.project, cast.owner, name=f"B{next(_SEQ)}")


def _budget_body(cast: Cast) -> dict[str, Any]:
    return {"project": str(cast.project.pk), "name": f"B{next(_SEQ)}", "limit_usd": "25"}


POLICIES = {
    ("policy-list", "post"): Call("policies", _with(_policy_body), 201),
    ("policy-evaluate", "post"): Call(
        "policies",
        _with(lambda c: {"project": str(c.project.pk), "point": "prompt", "text": "hi"}),
    ),
    ("policy-detail", "put"): Call("policies", lambda c: ({"pk": _policy(c).pk}, _policy_body(c))),
    ("policy-detail", "patch"): Call("policies", _pk(_policy, {"enabled": False})),
    ("policy-detail", "delete"): Call("policies", _pk(_policy), 204),
    ("budget-list", "post"): Call("policies", _with(_budget_body), 201),
    ("budget-detail", "put"): Call("policies", lambda c: ({"pk": _budget(c).pk}, _budget_body(c))),
    ("budget-detail", "patch"): Call("policies", _pk(_budget, {"enabled": False})),
    ("budget-detail", "delete"): Call("policies", _pk(_budget), 204),
}


WRITES: dict[tuple[str, str], Call] = {
    **ACCOUNTS,
    **PROJECTS,
    **AGENTS,
    **MODEL_PRICES,
    **TOOLS,
    **WORKFLOWS,
    **RUNS,
    **POLICIES,
}
APPS = sorted({call.app for call in WRITES.values()})


def _write_routes() -> set[tuple[str, str]]:
    """(URL name, method) of every write the URL resolver answers under /api/v1/."""
    from django.urls import get_resolver

    found = set()
    for route, pattern in _walk(get_resolver().url_patterns):
        if not route.startswith("api/v1/") or "format" in pattern.pattern.regex.groupindex:
            continue
        callback = pattern.callback
        actions = getattr(callback, "actions", None)
        if actions:
            methods = set(actions)
        else:
            view = callback.view_class
            methods = {m for m in view.http_method_names if hasattr(view, m)}
        found.update((pattern.name, method) for method in methods & WRITE_METHODS)
    return found


def test_every_write_route_is_declared():
    routes = _write_routes()
    missing = sorted(routes - set(WRITES))
    assert not missing, f"Declare these write routes in WRITES ({__file__}): {missing}"
    stale = sorted(set(WRITES) - routes)
    assert not stale, f"No such write routes any more: {stale}"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("app", APPS)
def test_every_write_route_succeeds_in_a_real_transaction(cast: Cast, settings: Any, app: str):
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    failures = []
    for (name, method), call in WRITES.items():
        if call.app != app:
            continue
        kwargs, body = call.build(cast)
        client = client_for() if call.who == "anonymous" else cast.client(call.who)
        response = getattr(client, method)(reverse(name, kwargs=kwargs), body, format=call.format)
        if response.status_code != call.status:
            failures.append((name, method, response.status_code, response.content[:300]))
    assert not failures, failures


# Write routes that change nothing another person would audit: computations that answer
# without saving (validation, previews, a policy dry-run, an agent test call, a tool
# invocation), and token refreshes.
NOT_AUDITED = {
    ("auth-refresh", "post"),
    ("workflow-validate", "post"),
    ("schedule-preview-cron", "post"),
    ("policy-evaluate", "post"),
    ("agent-test", "post"),
    ("tool-invoke", "post"),
    ("mcp-server-test", "post"),
}


@pytest.mark.django_db
def test_every_write_leaves_an_audit_entry(cast: Cast, settings: Any):
    from policies.models import AuditEvent

    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    missing = []
    for (name, method), call in WRITES.items():
        kwargs, body = call.build(cast)
        before = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0
        client = client_for() if call.who == "anonymous" else cast.client(call.who)
        response = getattr(client, method)(reverse(name, kwargs=kwargs), body, format=call.format)
        assert response.status_code == call.status, (name, method, response.content[:300])
        written = AuditEvent.objects.filter(id__gt=before).exists()
        if written == ((name, method) in NOT_AUDITED):
            missing.append((name, method, "audited" if written else "no audit entry"))
    assert not missing, missing
