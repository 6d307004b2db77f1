from __future__ import annotations

from typing import Any

import pytest

from accounts.tests.factories import UserFactory
from policies.models import AuditEvent
from projects.secrets import SecretBag
from sparkops.errors import Conflict, Forbidden, InvalidInput
from tools import services
from tools.models import Tool
from tools.tests.factories import ToolFactory

pytestmark = pytest.mark.django_db

CALC = {"function": "calculator"}


def create(cast: Any, **fields: Any) -> Tool:
    fields = {"name": "calc", "kind": "builtin", "config": CALC, **fields}
    return services.tool_create(actor=cast.developer, project=cast.project, **fields)


def test_create_validates_records_version_1_and_the_creator(cast):
    tool = create(cast, description="Adds things.")
    assert tool.version == 1
    assert tool.created_by == cast.developer
    assert tool.parameters["required"] == ["expression"]  # the builtin's own schema
    (version,) = tool.versions.all()
    assert version.number == 1
    assert version.created_by == cast.developer
    assert version.snapshot == {
        "name": "calc",
        "description": "Adds things.",
        "parameters": tool.parameters,
        "kind": "builtin",
        "config": CALC,
        "status": "active",
    }


def test_update_writes_a_new_version(cast):
    tool = create(cast)
    tool = services.tool_update(tool=tool, actor=cast.admin, description="Now documented.")
    assert tool.version == 2
    assert tool.versions.get(number=2).snapshot["description"] == "Now documented."
    assert tool.versions.get(number=2).created_by == cast.admin
    assert Tool.objects.get(pk=tool.pk).description == "Now documented."


def test_a_no_op_update_writes_no_version(cast):
    tool = create(cast, description="Same.")
    updated_at = tool.updated_at
    tool = services.tool_update(
        tool=tool, actor=cast.developer, description="Same.", config=dict(CALC)
    )
    assert tool.version == 1
    assert tool.versions.count() == 1
    assert Tool.objects.get(pk=tool.pk).updated_at == updated_at


def test_only_an_update_that_changes_something_is_audited(cast):
    tool = create(cast, description="Same.")
    services.tool_update(tool=tool, actor=cast.developer, description="Same.")
    assert not AuditEvent.objects.filter(action="tool.update").exists()
    services.tool_update(tool=tool, actor=cast.developer, description="Other.")
    assert AuditEvent.objects.get(action="tool.update").changes == {"description": "Other."}


def test_rollback_is_a_new_version_equal_to_the_old_one(cast):
    tool = create(cast, description="v1")
    services.tool_update(tool=tool, actor=cast.developer, description="v2", status="disabled")
    tool = services.tool_rollback(tool=tool, actor=cast.developer, version=1)
    assert tool.version == 3
    assert (tool.description, tool.status) == ("v1", "active")
    v1, v3 = tool.versions.get(number=1), tool.versions.get(number=3)
    assert v3.snapshot == v1.snapshot
    assert list(tool.versions.values_list("number", flat=True)) == [3, 2, 1]


def test_rollback_to_an_unknown_version_is_refused(cast):
    tool = create(cast)
    with pytest.raises(InvalidInput) as caught:
        services.tool_rollback(tool=tool, actor=cast.developer, version=9)
    assert caught.value.errors == {"version": ["This tool has no version 9."]}


def test_rollback_cannot_take_a_name_now_used_by_another_tool(cast):
    tool = create(cast, name="first")
    services.tool_update(tool=tool, actor=cast.developer, name="second")
    create(cast, name="first")
    with pytest.raises(Conflict):
        services.tool_rollback(tool=tool, actor=cast.developer, version=1)


def test_names_are_unique_per_project_only(cast):
    create(cast, name="lookup")
    with pytest.raises(Conflict) as caught:
        create(cast, name="lookup")
    assert caught.value.errors == {"name": ["A tool with this name already exists."]}
    other = services.tool_create(
        actor=cast.outsider,
        project=cast.other_project,
        name="lookup",
        kind="builtin",
        config=CALC,
    )
    assert other.project == cast.other_project


def test_renaming_onto_a_taken_name_is_a_conflict(cast):
    create(cast, name="a")
    tool = create(cast, name="b")
    with pytest.raises(Conflict):
        services.tool_update(tool=tool, actor=cast.developer, name="a")


def test_invalid_tools_are_refused_with_every_field_error(cast):
    with pytest.raises(InvalidInput) as caught:
        create(cast, name="no spaces", kind="http", config={"method": "GET"}, parameters=[])
    assert set(caught.value.errors) == {"name", "config.url", "parameters"}
    assert not Tool.objects.exists()


def test_update_refuses_project_and_unknown_fields(cast):
    tool = create(cast)
    with pytest.raises(InvalidInput) as caught:
        services.tool_update(tool=tool, actor=cast.developer, project=cast.other_project)
    assert caught.value.errors == {"project": ["This field cannot be set here."]}


def test_viewers_and_outsiders_cannot_write(cast):
    tool = create(cast)
    for actor in (cast.viewer, cast.outsider):
        with pytest.raises(Forbidden):
            services.tool_create(
                actor=actor, project=cast.project, name="x", kind="builtin", config=CALC
            )
        with pytest.raises(Forbidden):
            services.tool_update(tool=tool, actor=actor, description="mine")
        with pytest.raises(Forbidden):
            services.tool_delete(tool=tool, actor=actor)
        with pytest.raises(Forbidden):
            services.tool_rollback(tool=tool, actor=actor, version=1)


def test_delete(cast):
    tool = create(cast)
    services.tool_delete(tool=tool, actor=cast.developer)
    assert not Tool.objects.exists()


def test_project_xor_global(cast):
    staff = UserFactory(is_staff=True)
    with pytest.raises(InvalidInput):
        services.tool_create(actor=staff, name="x", kind="builtin", config=CALC)
    with pytest.raises(InvalidInput):
        services.tool_create(
            actor=staff,
            project=cast.project,
            is_global=True,
            name="x",
            kind="builtin",
            config=CALC,
        )


def test_only_staff_write_global_tools(cast):
    staff = UserFactory(is_staff=True)
    with pytest.raises(Forbidden):
        services.tool_create(
            actor=cast.owner,
            is_global=True,
            name="clock",
            kind="builtin",
            config={"function": "current_time"},
        )
    tool = services.tool_create(
        actor=staff,
        is_global=True,
        name="clock",
        kind="builtin",
        config={"function": "current_time"},
    )
    assert (tool.project, tool.is_global, tool.version) == (None, True, 1)
    with pytest.raises(Forbidden):
        services.tool_update(tool=tool, actor=cast.owner, description="x")
    with pytest.raises(Forbidden):
        services.tool_delete(tool=tool, actor=cast.owner)
    assert services.tool_update(tool=tool, actor=staff, description="Time.").version == 2
    with pytest.raises(Conflict):
        services.tool_create(actor=staff, is_global=True, name="clock", kind="builtin", config=CALC)


def test_global_tools_are_visible_to_everyone_and_usable_in_every_project(cast):
    tool = ToolFactory(project=None, is_global=True)
    ToolFactory(project=cast.other_project)
    assert tool in Tool.objects.for_user(cast.viewer)
    assert tool in Tool.objects.usable_in(cast.project)
    assert set(Tool.objects.for_user(cast.viewer)) == {tool}


# --- invoke ----------------------------------------------------------------------------------


def test_invoke_runs_with_the_tools_project(cast):
    tool = create(cast)
    result = services.tool_invoke(
        tool=tool, actor=cast.developer, project=None, arguments={"expression": "6 * 7"}
    )
    assert (result.ok, result.output) == (True, {"result": 42})


def test_invoke_needs_the_developer_role(cast):
    tool = create(cast)
    with pytest.raises(Forbidden):
        services.tool_invoke(tool=tool, actor=cast.viewer, project=None, arguments={})


def test_invoke_of_a_global_tool_needs_a_project_of_the_caller(cast):
    tool = ToolFactory(project=None, is_global=True)
    with pytest.raises(InvalidInput) as caught:
        services.tool_invoke(tool=tool, actor=cast.developer, project=None, arguments={})
    assert "project" in caught.value.errors
    with pytest.raises(Forbidden):
        services.tool_invoke(tool=tool, actor=cast.viewer, project=cast.project, arguments={})
    with pytest.raises(Forbidden):
        services.tool_invoke(
            tool=tool, actor=cast.developer, project=cast.other_project, arguments={}
        )
    result = services.tool_invoke(
        tool=tool, actor=cast.developer, project=cast.project, arguments={"x": 1}
    )
    assert result.output == {"x": 1}


def test_invoke_refuses_another_project_for_a_project_tool(cast):
    tool = create(cast)
    with pytest.raises(InvalidInput):
        services.tool_invoke(
            tool=tool, actor=cast.developer, project=cast.other_project, arguments={}
        )


def test_tool_execute_uses_the_bag_it_is_given(cast):
    # The engine builds the bag; tool_execute never looks secrets up by itself.
    tool = ToolFactory(project=cast.project)
    bag = SecretBag(cast.project)
    result = services.tool_execute(tool=tool, arguments={"a": [1]}, secrets=bag)
    assert result.ok
    assert bag.used == {}
