from __future__ import annotations

from typing import Any

import pytest

from agents import services
from agents.models import Agent, AgentVersion
from agents.providers import ProviderError
from agents.tests.factories import AgentFactory, tool_for
from policies.models import AuditEvent
from projects import services as project_services
from projects.models import Secret
from projects.secrets import SecretBag
from sparkops.errors import Conflict, InvalidInput
from workflows.models import Workflow

pytestmark = pytest.mark.django_db


def create(cast: Any, **fields: Any) -> Agent:
    values = {"name": "Researcher", "provider": "simulated", "model": "sim-1", **fields}
    return services.agent_create(actor=cast.developer, project=cast.project, **values)


def add_secret(cast: Any, name: str = "OPENAI_KEY", value: str = "sk-secret-value") -> Secret:
    return project_services.secret_set(
        project=cast.project, actor=cast.owner, name=name, value=value
    )


def field_errors(excinfo: Any) -> dict[str, list[str]]:
    return excinfo.value.errors or {}


# --- create and versions ---------------------------------------------------------------------


def test_create_writes_version_one_with_the_configuration(cast):
    tool = tool_for(cast.project)
    agent = create(cast, system_prompt="Be brief.", tools=[tool.pk], temperature=0.2)
    assert agent.slug == "researcher"
    assert agent.version == 1
    assert agent.created_by == cast.developer
    version = agent.versions.get()
    assert version.number == 1
    assert version.created_by == cast.developer
    assert version.snapshot["system_prompt"] == "Be brief."
    assert version.snapshot["temperature"] == 0.2
    assert version.snapshot["tools"] == [str(tool.pk)]
    assert "slug" not in version.snapshot and "status" not in version.snapshot


def test_slug_is_derived_and_made_unique(cast):
    first = create(cast, name="Deep Research!")
    second = create(cast, name="Deep Research!")
    assert first.slug == "deep-research"
    assert second.slug.startswith("deep-research-") and second.slug != first.slug
    assert create(cast, name="???").slug == "agent"


def test_explicit_slug_that_is_taken_is_a_conflict(cast):
    create(cast, slug="writer")
    with pytest.raises(Conflict) as excinfo:
        create(cast, name="Other", slug="writer")
    assert field_errors(excinfo) == {"slug": ["Taken."]}
    # the same slug in another project is fine
    services.agent_create(
        actor=cast.outsider,
        project=cast.other_project,
        name="W",
        slug="writer",
        provider="simulated",
        model="m",
    )


def test_update_that_changes_the_configuration_writes_a_version(cast):
    agent = create(cast)
    agent = services.agent_update(agent=agent, actor=cast.admin, system_prompt="New prompt")
    assert agent.version == 2
    latest = agent.versions.order_by("-number").first()
    assert latest.number == 2 and latest.created_by == cast.admin
    assert latest.snapshot["system_prompt"] == "New prompt"
    assert AgentVersion.objects.get(agent=agent, number=1).snapshot["system_prompt"] == ""


def test_no_op_update_writes_no_version(cast):
    agent = create(cast, model="sim-1", temperature=0.5)
    agent = services.agent_update(agent=agent, actor=cast.developer, model="sim-1", temperature=0.5)
    assert agent.version == 1
    assert agent.versions.count() == 1


def test_status_and_slug_changes_are_not_versions(cast):
    agent = create(cast)
    agent = services.agent_update(agent=agent, actor=cast.developer, status="disabled", slug="r2")
    assert (agent.status, agent.slug, agent.version) == ("disabled", "r2", 1)
    assert agent.versions.count() == 1


def test_changing_tools_writes_a_version(cast):
    one, two = tool_for(cast.project), tool_for(cast.project)
    agent = create(cast, tools=[one.pk])
    agent = services.agent_update(agent=agent, actor=cast.developer, tools=[two.pk, one.pk])
    assert agent.version == 2
    assert set(agent.tools.all()) == {one, two}
    # the same set in another order is no change
    agent = services.agent_update(agent=agent, actor=cast.developer, tools=[one.pk, two.pk])
    assert agent.version == 2


def test_a_tools_only_change_saves_the_row_and_given_tools_are_audited(cast):
    one = tool_for(cast.project)
    agent = create(cast)
    before = Agent.objects.get(pk=agent.pk).updated_at
    services.agent_update(agent=agent, actor=cast.developer, tools=[one.pk])
    assert Agent.objects.get(pk=agent.pk).updated_at > before
    services.agent_update(agent=agent, actor=cast.developer, tools=[one.pk], description="d")
    events = AuditEvent.objects.filter(action="agent.update").order_by("created_at")
    assert [event.changes for event in events] == [
        {"tools": [one.pk]},
        {"description": "d", "tools": [one.pk]},  # the tools as given, though unchanged
    ]


def test_global_tools_may_be_used(cast):
    shared = tool_for(None, name="web_search")
    agent = create(cast, tools=[shared.pk])
    assert list(agent.tools.all()) == [shared]


def test_unknown_fields_are_refused(cast):
    agent = create(cast)
    with pytest.raises(InvalidInput) as excinfo:
        services.agent_update(agent=agent, actor=cast.developer, project=cast.other_project)
    assert "project" in field_errors(excinfo)


# --- validation ------------------------------------------------------------------------------


INVALID = [
    ({"provider": "gemini"}, "provider"),
    ({"provider": "openai_compatible"}, "base_url"),
    ({"provider": "openai_compatible", "base_url": "ftp://models.local/v1"}, "base_url"),
    ({"provider": "openai", "base_url": "https://user:pw@proxy.example/v1"}, "base_url"),
    ({"provider": "simulated", "base_url": "https://example.com/v1"}, "base_url"),
    ({"credentials_secret": "NOPE"}, "credentials_secret"),
    ({"credentials_secret": "bad name"}, "credentials_secret"),
    ({"response_format": {"type": "objekt"}}, "response_format"),
    ({"response_format": {"properties": {"a": {"minLength": -1}}}}, "response_format"),
    ({"response_format": ["not", "a", "schema"]}, "response_format"),
    ({"temperature": 2.5}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"provider": "anthropic", "temperature": 1.5}, "temperature"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_iterations": 0}, "max_iterations"),
    ({"max_iterations": 51}, "max_iterations"),
    ({"settings": ["a"]}, "settings"),
    ({"settings": {"timeout_seconds": 0}}, "settings"),
    ({"settings": {"mode": "poetry"}}, "settings"),
    ({"settings": {"mode": "script"}}, "settings"),
    ({"status": "paused"}, "status"),
    ({"name": "  "}, "name"),
    ({"model": ""}, "model"),
    ({"slug": "not a slug"}, "slug"),
]


@pytest.mark.parametrize(("fields", "field"), INVALID)
def test_invalid_configuration_is_refused_with_a_field_error(cast, fields, field):
    with pytest.raises(InvalidInput) as excinfo:
        create(cast, **fields)
    assert field in field_errors(excinfo), field_errors(excinfo)
    assert not Agent.objects.exists()


def test_all_bad_fields_are_reported_at_once(cast):
    with pytest.raises(InvalidInput) as excinfo:
        create(cast, provider="openai_compatible", temperature=9, max_iterations=99)
    assert set(field_errors(excinfo)) == {"base_url", "temperature", "max_iterations"}


def test_tool_of_another_project_is_refused(cast):
    foreign = tool_for(cast.other_project)
    mine = tool_for(cast.project)
    with pytest.raises(InvalidInput) as excinfo:
        create(cast, tools=[mine.pk, foreign.pk])
    assert field_errors(excinfo) == {
        "tools": [f"Not a tool of this project nor a global tool: {foreign.pk}."]
    }
    agent = create(cast, tools=[mine.pk])
    with pytest.raises(InvalidInput):
        services.agent_update(agent=agent, actor=cast.developer, tools=[foreign.pk])
    with pytest.raises(InvalidInput):
        services.agent_update(agent=agent, actor=cast.developer, tools=[999_999])


def test_valid_full_configuration(cast):
    add_secret(cast)
    agent = create(
        cast,
        provider="openai_compatible",
        base_url="http://ollama:11434/v1",  # a bare host name, as in docker compose
        credentials_secret="OPENAI_KEY",
        temperature=2,
        max_tokens=512,
        max_iterations=50,
        response_format={
            "type": "object",
            "properties": {"answer": {"type": "string"}},
            "required": ["answer"],
        },
        settings={"timeout_seconds": 30},
    )
    assert agent.base_url == "http://ollama:11434/v1"
    assert agent.temperature == 2.0


def test_update_validates_the_merged_configuration(cast):
    agent = create(cast)
    with pytest.raises(InvalidInput) as excinfo:
        services.agent_update(agent=agent, actor=cast.developer, provider="openai_compatible")
    assert "base_url" in field_errors(excinfo)
    agent.refresh_from_db()
    assert agent.provider == "simulated"


def test_an_agent_whose_secret_was_deleted_can_still_be_edited(cast):
    secret = add_secret(cast)
    agent = create(cast, provider="openai", model="gpt-4o", credentials_secret="OPENAI_KEY")
    secret.delete()
    agent = services.agent_update(agent=agent, actor=cast.developer, description="still fine")
    assert agent.description == "still fine"
    with pytest.raises(InvalidInput):
        services.agent_update(agent=agent, actor=cast.developer, credentials_secret="OTHER")


# --- rollback --------------------------------------------------------------------------------


def test_rollback_restores_fields_and_tools_as_a_new_version(cast):
    one, two = tool_for(cast.project), tool_for(cast.project)
    agent = create(cast, system_prompt="v1 prompt", tools=[one.pk], temperature=0.1)
    agent = services.agent_update(
        agent=agent, actor=cast.developer, system_prompt="v2 prompt", tools=[two.pk], temperature=1
    )
    agent = services.agent_update(agent=agent, actor=cast.developer, status="disabled")
    assert agent.version == 2

    agent = services.agent_rollback(agent=agent, actor=cast.admin, version=1)
    assert agent.version == 3
    assert (agent.system_prompt, agent.temperature) == ("v1 prompt", 0.1)
    assert list(agent.tools.all()) == [one]
    assert agent.status == "disabled"  # not part of a version
    v1, v3 = (agent.versions.get(number=n) for n in (1, 3))
    assert v3.snapshot == v1.snapshot
    assert v3.created_by == cast.admin
    assert agent.versions.count() == 3


def test_rollback_to_the_current_version_changes_nothing(cast):
    agent = create(cast)
    agent = services.agent_rollback(agent=agent, actor=cast.developer, version=1)
    assert agent.version == 1 and agent.versions.count() == 1


def test_rollback_to_an_unknown_version_is_refused(cast):
    agent = create(cast)
    with pytest.raises(InvalidInput) as excinfo:
        services.agent_rollback(agent=agent, actor=cast.developer, version=7)
    assert "version" in field_errors(excinfo)


def test_rollback_that_needs_a_deleted_tool_is_refused(cast):
    tool = tool_for(cast.project)
    agent = create(cast, tools=[tool.pk])
    agent = services.agent_update(agent=agent, actor=cast.developer, tools=[])
    tool.delete()
    with pytest.raises(InvalidInput) as excinfo:
        services.agent_rollback(agent=agent, actor=cast.developer, version=1)
    assert excinfo.value.detail.startswith("Version 1 cannot be restored")
    assert "tools" in field_errors(excinfo)
    assert agent.versions.count() == 2


# --- delete ----------------------------------------------------------------------------------


def test_delete(cast):
    agent = create(cast)
    services.agent_delete(agent=agent, actor=cast.developer)
    assert not Agent.objects.exists()
    assert not AgentVersion.objects.exists()


def test_an_agent_used_by_a_workflow_cannot_be_deleted(cast):
    agent = create(cast, slug="researcher")
    definition = {"nodes": [{"id": "r", "type": "agent", "agent": "researcher", "prompt": "Hi"}]}
    Workflow.objects.create(
        project=cast.project, name="Digest", slug="digest", definition=definition
    )
    with pytest.raises(Conflict) as excinfo:
        services.agent_delete(agent=agent, actor=cast.developer)
    assert "Digest" in excinfo.value.detail
    assert excinfo.value.extra == {"workflows": ["Digest"]}
    # an archived workflow does not hold it
    Workflow.objects.update(status=Workflow.Status.ARCHIVED)
    services.agent_delete(agent=agent, actor=cast.developer)


# --- provider config and test ----------------------------------------------------------------


def test_provider_config_reads_the_key_from_the_project_secret(cast):
    add_secret(cast, value="sk-live-123")
    agent = create(
        cast,
        provider="openai",
        model="gpt-4o",
        credentials_secret="OPENAI_KEY",
        base_url="https://proxy.example.com/v1",
        settings={"timeout_seconds": 12.5, "organization": "org-1"},
    )
    bag = SecretBag(cast.project)
    config = services.agent_provider_config(agent=agent, secrets=bag)
    assert (config.provider, config.model, config.api_key) == ("openai", "gpt-4o", "sk-live-123")
    assert config.base_url == "https://proxy.example.com/v1"
    assert config.timeout == 12.5
    assert config.settings == {"organization": "org-1"}
    assert bag.redact("key sk-live-123") == "key ***"


def test_provider_config_without_credentials_is_a_400(cast):
    agent = create(cast, provider="anthropic", model="claude-x")
    with pytest.raises(ProviderError) as excinfo:
        services.agent_provider_config(agent=agent, secrets=SecretBag(cast.project))
    assert excinfo.value.status_code == 400
    assert "no credentials" in excinfo.value.detail
    assert not excinfo.value.retryable


def test_provider_config_with_a_deleted_secret_is_a_400(cast):
    secret = add_secret(cast)
    agent = create(cast, provider="openai", model="gpt-4o", credentials_secret="OPENAI_KEY")
    secret.delete()
    with pytest.raises(ProviderError) as excinfo:
        services.agent_provider_config(agent=agent, secrets=SecretBag(cast.project))
    assert excinfo.value.status_code == 400
    assert "OPENAI_KEY" in excinfo.value.detail


def test_simulated_agent_test_echoes_the_prompt(cast):
    agent = create(cast, system_prompt="You are terse.")
    reply = services.agent_test(agent=agent, actor=cast.developer, prompt="Hello there")
    assert reply.content == "Echo: Hello there"
    assert reply.provider == "simulated"
    assert reply.input_tokens > 0 and reply.output_tokens > 0


def test_simulated_agent_test_returns_tool_calls_and_offers_active_tools(cast):
    active = tool_for(cast.project, name="lookup")
    disabled = tool_for(cast.project, name="off", status="disabled")
    settings = {"mode": "script", "turns": [{"tool_calls": [{"name": "lookup", "arguments": {}}]}]}
    agent = create(cast, settings=settings, tools=[active.pk, disabled.pk])
    specs = services.agent_tool_specs(agent=agent)
    assert [spec.name for spec in specs] == ["lookup"]
    reply = services.agent_test(agent=agent, actor=cast.developer, prompt="Find it")
    assert [call.name for call in reply.tool_calls] == ["lookup"]


def test_chat_request_carries_the_agent_settings(cast):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    agent = create(cast, temperature=0.3, max_tokens=99, response_format=schema, system_prompt="S")
    messages = services.agent_messages(agent=agent, prompt="P")
    request = services.agent_chat_request(agent=agent, messages=messages)
    assert [(m.role, m.content) for m in request.messages] == [("system", "S"), ("user", "P")]
    assert (request.model, request.temperature, request.max_tokens) == ("sim-1", 0.3, 99)
    assert request.response_format == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }


def test_agent_test_needs_a_prompt(cast):
    agent = create(cast)
    with pytest.raises(InvalidInput):
        services.agent_test(agent=agent, actor=cast.developer, prompt="   ")


def test_factory_creates_through_the_service(cast):
    agent = AgentFactory(project=cast.project)
    assert agent.provider == "simulated"
    assert agent.versions.count() == 1
    assert agent.created_by == cast.owner
