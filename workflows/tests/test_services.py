from __future__ import annotations

from typing import Any

import pytest

from agents.models import Agent
from policies.models import AuditEvent
from sparkops.errors import Conflict, InvalidInput, NotFound
from tools.models import Tool
from workflows import services
from workflows.models import Workflow, WorkflowVersion
from workflows.tests.factories import WorkflowFactory, transform_definition

pytestmark = pytest.mark.django_db


def make_agent(project: Any, slug: str = "researcher", **fields: Any) -> Agent:
    return Agent.objects.create(
        project=project, name=slug, slug=slug, provider="simulated", model="sim-1", **fields
    )


def make_tool(project: Any = None, name: str = "noop", **fields: Any) -> Tool:
    return Tool.objects.create(
        project=project,
        is_global=project is None,
        name=name,
        kind="builtin",
        config={"function": "noop"},
        **fields,
    )


def agent_then_tool() -> dict[str, Any]:
    return {
        "input_schema": {"type": "object", "properties": {"topic": {"type": "string"}}},
        "nodes": [
            {
                "id": "research",
                "type": "agent",
                "agent": "researcher",
                "prompt": "{{ input.topic }}",
            },
            {
                "id": "save",
                "type": "tool",
                "tool": "noop",
                "depends_on": ["research"],
                "args": {"text": "{{ steps.research.output }}"},
            },
        ],
        "output": {"text": "{{ steps.research.output }}"},
    }


def create(cast: Any, **fields: Any) -> Workflow:
    fields.setdefault("name", "Daily digest")
    fields.setdefault("definition", transform_definition())
    return services.workflow_create(actor=cast.developer, project=cast.project, **fields)


# --- create ---------------------------------------------------------------------------------


def test_create_validates_and_writes_version_one(cast):
    workflow = create(cast, timeout_seconds=600)
    assert workflow.slug == "daily-digest"
    assert workflow.created_by == cast.developer
    assert workflow.version == 1
    version = workflow.current_version
    assert version.created_by == cast.developer
    assert version.snapshot == {
        "definition": transform_definition(),
        "timeout_seconds": 600,
        "retry_policy": {"max_attempts": 1, "backoff_seconds": 2, "max_backoff_seconds": 300},
    }


def test_slug_is_unique_per_project(cast):
    first = create(cast)
    second = create(cast)
    assert second.slug.startswith("daily-digest-") and second.slug != first.slug
    other = services.workflow_create(
        actor=cast.outsider,
        project=cast.other_project,
        name="Daily digest",
        definition=transform_definition(),
    )
    assert other.slug == "daily-digest"  # another project: no suffix needed
    with pytest.raises(Conflict) as exc:
        create(cast, slug="daily-digest")
    assert exc.value.errors == {"slug": ["Taken."]}


def test_create_refuses_an_invalid_definition_and_saves_nothing(cast):
    definition = transform_definition()
    definition["nodes"][0]["depends_on"] = ["ghost"]
    with pytest.raises(InvalidInput) as exc:
        create(cast, definition=definition)
    assert exc.value.detail == "Invalid workflow definition."
    assert "definition.nodes[0].depends_on" in exc.value.errors
    assert not Workflow.objects.exists()


def test_retry_policy_gets_defaults_and_is_checked(cast):
    workflow = create(cast, retry_policy={"max_attempts": 3})
    assert workflow.retry_policy == {
        "max_attempts": 3,
        "backoff_seconds": 2,
        "max_backoff_seconds": 300,
    }
    with pytest.raises(InvalidInput) as exc:
        create(cast, retry_policy={"max_attempts": 0, "jitter": True})
    assert set(exc.value.errors) == {"retry_policy", "retry_policy.max_attempts"}
    with pytest.raises(InvalidInput) as exc:
        create(cast, retry_policy={"backoff_seconds": 60, "max_backoff_seconds": 10})
    assert set(exc.value.errors) == {"retry_policy.max_backoff_seconds"}


def test_run_settings_are_checked(cast):
    with pytest.raises(InvalidInput) as exc:
        create(cast, timeout_seconds=0, max_concurrent_runs=0, triggers=[], status="running")
    assert set(exc.value.errors) == {
        "timeout_seconds",
        "max_concurrent_runs",
        "triggers",
        "status",
    }


def test_references_are_resolved_in_the_project(cast):
    make_agent(cast.project)
    make_tool(cast.project)
    workflow = create(cast, definition=agent_then_tool())
    assert workflow.version == 1


def test_global_tools_are_usable_other_projects_tools_are_not(cast):
    make_agent(cast.project)
    make_tool(cast.other_project)
    with pytest.raises(InvalidInput) as exc:
        create(cast, definition=agent_then_tool())
    assert list(exc.value.errors) == ["definition.nodes[1].tool"]
    make_tool(None)  # a global "noop"
    assert create(cast, definition=agent_then_tool()).version == 1


def test_disabled_agents_and_tools_are_refused(cast):
    make_agent(cast.project, status="disabled")
    make_tool(cast.project, status="disabled")
    with pytest.raises(InvalidInput) as exc:
        create(cast, definition=agent_then_tool())
    assert set(exc.value.errors) == {"definition.nodes[0].agent", "definition.nodes[1].tool"}


def test_validate_returns_the_graph(cast):
    make_agent(cast.project)
    make_tool(cast.project)
    result = services.workflow_validate(project=cast.project, definition=agent_then_tool())
    assert result["layers"] == [["research"], ["save"]]
    assert result["edges"] == [{"source": "research", "target": "save", "conditional": False}]


# --- update and versions ---------------------------------------------------------------------


def test_an_update_through_a_stale_instance_snapshots_the_committed_row(cast):
    # The service reloads the locked row: a version never pins a definition that another
    # save has replaced since the caller read the workflow.
    workflow = create(cast)
    stale = Workflow.objects.get(pk=workflow.pk)
    services.workflow_update(
        workflow=workflow, actor=cast.admin, definition=transform_definition("hello")
    )
    updated = services.workflow_update(workflow=stale, actor=cast.admin, timeout_seconds=60)
    assert updated is stale
    assert (stale.version, stale.timeout_seconds) == (3, 60)
    assert stale.definition == transform_definition("hello")
    assert stale.current_version.snapshot["definition"] == transform_definition("hello")
    stale.refresh_from_db()
    assert (stale.version, stale.definition) == (3, transform_definition("hello"))


def test_an_update_that_sets_the_same_values_is_still_saved_and_audited(cast):
    workflow = create(cast)
    before = Workflow.objects.get(pk=workflow.pk).updated_at
    services.workflow_update(workflow=workflow, actor=cast.admin, name=workflow.name)
    event = AuditEvent.objects.filter(action="workflow.update").get()
    assert event.changes == {"name": "Daily digest"}
    assert Workflow.objects.get(pk=workflow.pk).updated_at > before
    assert workflow.versions.count() == 1


def test_versions_are_written_on_change_only(cast):
    workflow = create(cast)
    services.workflow_update(workflow=workflow, actor=cast.admin, name="Renamed", description="x")
    services.workflow_update(workflow=workflow, actor=cast.admin, definition=transform_definition())
    assert workflow.versions.count() == 1

    services.workflow_update(
        workflow=workflow, actor=cast.admin, definition=transform_definition("hello")
    )
    services.workflow_update(workflow=workflow, actor=cast.admin, timeout_seconds=60)
    services.workflow_update(workflow=workflow, actor=cast.admin, retry_policy={"max_attempts": 2})
    services.workflow_update(workflow=workflow, actor=cast.admin, max_concurrent_runs=2)
    workflow.refresh_from_db()
    assert workflow.version == 4
    assert list(workflow.versions.values_list("number", flat=True)) == [4, 3, 2, 1]
    latest = workflow.current_version
    assert latest.created_by == cast.admin
    assert latest.snapshot["retry_policy"]["max_attempts"] == 2
    assert latest.snapshot["timeout_seconds"] == 60


def test_versions_are_immutable(cast):
    version = create(cast).current_version
    version.snapshot = {}
    with pytest.raises(ValueError):
        version.save()


def test_update_refuses_invalid_definition_and_keeps_the_old_one(cast):
    workflow = create(cast)
    bad = transform_definition()
    bad["nodes"].append(dict(bad["nodes"][0]))
    with pytest.raises(InvalidInput) as exc:
        services.workflow_update(workflow=workflow, actor=cast.developer, definition=bad)
    assert set(exc.value.errors) == {"definition.nodes[0].id", "definition.nodes[1].id"}
    workflow.refresh_from_db()
    assert workflow.definition == transform_definition()
    assert workflow.versions.count() == 1


def test_update_refuses_project_and_unknown_fields(cast):
    workflow = create(cast)
    with pytest.raises(InvalidInput):
        services.workflow_update(workflow=workflow, actor=cast.owner, project=cast.other_project)


def test_slug_change_to_a_taken_slug_conflicts(cast):
    create(cast, name="One")
    two = create(cast, name="Two")
    with pytest.raises(Conflict):
        services.workflow_update(workflow=two, actor=cast.owner, slug="one")


# --- status ----------------------------------------------------------------------------------


def test_pause_never_validates_but_activate_does(cast):
    agent = make_agent(cast.project)
    make_tool(cast.project)
    workflow = create(cast, definition=agent_then_tool())
    Agent.objects.filter(pk=agent.pk).update(status="disabled")

    services.workflow_set_status(workflow=workflow, actor=cast.developer, status="paused")
    assert Workflow.objects.get(pk=workflow.pk).status == "paused"
    with pytest.raises(InvalidInput) as exc:
        services.workflow_set_status(workflow=workflow, actor=cast.developer, status="active")
    assert "definition.nodes[0].agent" in exc.value.errors
    assert Workflow.objects.get(pk=workflow.pk).status == "paused"

    Agent.objects.filter(pk=agent.pk).update(status="active")
    services.workflow_set_status(workflow=workflow, actor=cast.developer, status="active")
    assert Workflow.objects.get(pk=workflow.pk).status == "active"
    assert workflow.versions.count() == 1  # status is not versioned


# --- rollback --------------------------------------------------------------------------------


def test_rollback_writes_a_new_version_equal_to_the_old(cast):
    workflow = create(cast)
    services.workflow_update(
        workflow=workflow, actor=cast.developer, definition=transform_definition("v2")
    )
    services.workflow_update(workflow=workflow, actor=cast.developer, timeout_seconds=30)
    services.workflow_rollback(workflow=workflow, actor=cast.admin, version=1)
    workflow.refresh_from_db()
    assert workflow.version == 4
    assert workflow.definition == transform_definition()
    assert workflow.timeout_seconds == 3600
    v1, v4 = (WorkflowVersion.objects.get(workflow=workflow, number=n) for n in (1, 4))
    assert v4.snapshot == v1.snapshot
    assert v4.created_by == cast.admin
    # history is untouched
    assert workflow.versions.get(number=2).snapshot["definition"] == transform_definition("v2")


def test_rollback_to_the_current_state_writes_nothing(cast):
    workflow = create(cast)
    services.workflow_rollback(workflow=workflow, actor=cast.admin, version=1)
    assert workflow.versions.count() == 1


def test_rollback_to_an_unknown_version(cast):
    workflow = create(cast)
    with pytest.raises(InvalidInput) as exc:
        services.workflow_rollback(workflow=workflow, actor=cast.admin, version=9)
    assert exc.value.errors == {"version": ["No version 9; the latest is 1."]}


def test_rollback_validates_the_old_definition_again(cast):
    agent = make_agent(cast.project)
    make_tool(cast.project)
    workflow = create(cast, definition=agent_then_tool())
    services.workflow_update(workflow=workflow, actor=cast.owner, definition=transform_definition())
    agent.delete()
    with pytest.raises(InvalidInput) as exc:
        services.workflow_rollback(workflow=workflow, actor=cast.owner, version=1)
    assert list(exc.value.errors) == ["definition.nodes[0].agent"]
    assert workflow.versions.count() == 2


# --- diff ------------------------------------------------------------------------------------


def test_diff_names_nodes_and_keys(cast):
    make_agent(cast.project)
    make_tool(cast.project)
    workflow = create(cast, definition=agent_then_tool())
    changed = agent_then_tool()
    changed["nodes"][0]["prompt"] = "Research {{ input.topic }} carefully"
    changed["nodes"][0]["timeout_seconds"] = 30
    del changed["nodes"][1]
    changed["nodes"].append({"id": "shape", "type": "transform", "output": {"n": 1}})
    changed["input_schema"]["required"] = ["topic"]
    services.workflow_update(
        workflow=workflow, actor=cast.owner, definition=changed, timeout_seconds=10
    )
    diff = services.workflow_diff(workflow=workflow, from_number=1, to_number=2)
    assert diff == {
        "from_version": 1,
        "to_version": 2,
        "nodes": {
            "added": ["shape"],
            "removed": ["save"],
            "changed": [{"id": "research", "keys": ["prompt", "timeout_seconds"]}],
        },
        "changed_keys": ["input_schema"],
        "changed_settings": ["timeout_seconds"],
    }
    backwards = services.workflow_diff(workflow=workflow, from_number=2, to_number=1)
    assert backwards["nodes"]["added"] == ["save"]
    assert backwards["nodes"]["removed"] == ["shape"]
    same = services.workflow_diff(workflow=workflow, from_number=2, to_number=2)
    assert same["nodes"] == {"added": [], "removed": [], "changed": []}
    assert same["changed_keys"] == same["changed_settings"] == []


def test_diff_output_key_and_unknown_versions(cast):
    workflow = create(cast)
    changed = transform_definition()
    changed["output"] = {"greeting": "{{ steps.greet.output }}"}
    services.workflow_update(workflow=workflow, actor=cast.owner, definition=changed)
    assert services.workflow_diff(workflow=workflow, from_number=1, to_number=2)[
        "changed_keys"
    ] == ["output"]
    with pytest.raises(InvalidInput) as exc:
        services.workflow_diff(workflow=workflow, from_number=0, to_number=5)
    assert set(exc.value.errors) == {"from", "to"}


def test_version_get(cast):
    workflow = create(cast)
    assert services.workflow_version_get(workflow=workflow, number=1).number == 1
    with pytest.raises(NotFound):
        services.workflow_version_get(workflow=workflow, number=2)


# --- delete ----------------------------------------------------------------------------------


def test_delete_removes_the_workflow_and_its_versions(cast):
    workflow = WorkflowFactory(project=cast.project)
    services.workflow_delete(workflow=workflow, actor=cast.owner)
    assert not Workflow.objects.exists()
    assert not WorkflowVersion.objects.exists()


def test_delete_takes_finished_runs_along_and_refuses_active_ones(cast):
    from runs.models import Run

    def run(workflow: Workflow, status: str) -> Run:
        return Run.objects.create(
            project=cast.project,
            workflow=workflow,
            version=workflow.current_version,
            status=status,
            input={},
        )

    workflow = WorkflowFactory(project=cast.project)
    run(workflow, "succeeded")
    active = run(workflow, "running")
    with pytest.raises(Conflict) as exc:
        services.workflow_delete(workflow=workflow, actor=cast.owner)
    assert exc.value.extra == {"active_runs": 1}
    Run.objects.filter(pk=active.pk).update(status="cancelled")
    services.workflow_delete(workflow=workflow, actor=cast.owner)
    assert not Workflow.objects.exists() and not Run.objects.exists()
