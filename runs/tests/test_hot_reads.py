"""The engine's per-step reads written as SQL (sparkops.db.select_models) return what the ORM's
querysets they stand for return: the project's policies (`Policy.objects.applicable_to`) and
the tool a node names (`Tool.objects.usable_in(...).filter(name=...)`), on both databases."""

from __future__ import annotations

from typing import Any

from django.forms.models import model_to_dict

from policies.enforcement import applicable_policies, policies_of
from policies.models import Policy
from runs.services.state import find_tool
from tools.models import Tool
from tools.tests.factories import ToolFactory


def policy(project: Any, name: str, kind: str, **fields: Any) -> Policy:
    return Policy.objects.create(
        project=project, name=name, kind=kind, rule={"models": ["m-*"], "n": [1, 2]}, **fields
    )


def test_the_policies_read_matches_applicable_to(cast: Any) -> None:
    policy(cast.project, "late", Policy.Kind.ALLOWED_MODELS, priority=50)
    policy(cast.project, "early", Policy.Kind.TOOL_DENYLIST, priority=5, mode="audit")
    policy(cast.project, "off", Policy.Kind.TOOL_ALLOWLIST, enabled=False)
    policy(None, "everyone", Policy.Kind.MAX_TOKENS_PER_CALL, priority=5)
    policy(None, "everyone off", Policy.Kind.MAX_TOKENS_PER_CALL, enabled=False)
    policy(cast.other_project, "theirs", Policy.Kind.ALLOWED_MODELS)

    for project in (cast.project, cast.other_project):
        expected = list(Policy.objects.applicable_to(project.pk))
        read = applicable_policies(project.pk)
        assert [p.pk for p in read] == [p.pk for p in expected]
        assert [model_to_dict(p) for p in read] == [model_to_dict(p) for p in expected]
        assert [p.created_at for p in read] == [p.created_at for p in expected]
    names = [p.name for p in policies_of(cast.project.pk, (Policy.Kind.ALLOWED_MODELS,))]
    assert names == ["late"]
    assert [p.name for p in applicable_policies(cast.project.pk)] == ["early", "everyone", "late"]


def test_the_tool_read_matches_usable_in(cast: Any) -> None:
    own: Any = ToolFactory(project=cast.project, name="fetch")
    ToolFactory(project=cast.other_project, name="theirs")
    shared: Any = ToolFactory(project=None, is_global=True, name="shared")

    for name, expected in (("fetch", own), ("shared", shared), ("theirs", None), ("nope", None)):
        found = find_tool(cast.project.pk, name)
        assert (found.pk if found else None) == (expected.pk if expected else None), name
        orm = Tool.objects.usable_in(cast.project.pk).filter(name=name).first()
        assert (found.pk if found else None) == (orm.pk if orm else None), name
    found = find_tool(cast.project.pk, "fetch")
    assert model_to_dict(found) == model_to_dict(own)
    # A global tool and the project's own of one name: the project's shadows the global one,
    # whichever is older (the other project still sees the global one).
    ToolFactory(project=None, is_global=True, name="fetch")
    assert find_tool(cast.project.pk, "fetch").pk == own.pk
    mine: Any = ToolFactory(project=cast.project, name="shared")
    assert find_tool(cast.project.pk, "shared").pk == mine.pk
    assert find_tool(cast.other_project.pk, "shared").pk == shared.pk
    assert found.updated_at == Tool.objects.get(pk=own.pk).updated_at
