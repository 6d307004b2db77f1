from __future__ import annotations

from typing import Any

import pytest

from agents import services
from agents.models import Agent
from agents.tests.factories import AgentFactory, tool_for
from conftest import client_for
from projects import services as project_services
from projects.tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/agents/"
KEY = "sk-live-THIS-MUST-NEVER-LEAK-42"


def detail(agent: Agent) -> str:
    return f"{URL}{agent.pk}/"


def payload(cast: Any, **fields: Any) -> dict[str, Any]:
    return {
        "project": str(cast.project.pk),
        "name": "Researcher",
        "provider": "simulated",
        "model": "sim-1",
        **fields,
    }


def add_key(cast: Any, name: str = "LLM_KEY", value: str = KEY) -> None:
    project_services.secret_set(project=cast.project, actor=cast.owner, name=name, value=value)


# --- CRUD and permissions --------------------------------------------------------------------


def test_developer_creates_an_agent(cast):
    tool = tool_for(cast.project)
    response = cast.client("developer").post(
        URL,
        payload(cast, tools=[tool.pk], system_prompt="Be brief.", temperature=0.5),
        format="json",
    )
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["slug"] == "researcher"
    assert body["project"] == str(cast.project.pk)
    assert body["tools"] == [tool.pk]
    assert body["version"] == 1
    assert body["created_by"] == str(cast.developer.pk)
    assert body["response_format"] is None and body["settings"] == {}
    assert body["max_iterations"] == 8 and body["status"] == "active"
    agent = Agent.objects.get(pk=body["id"])
    assert agent.versions.count() == 1


def test_viewer_reads_but_cannot_write(cast):
    agent = AgentFactory(project=cast.project)
    client = cast.client("viewer")
    assert client.get(URL).json()["count"] == 1
    assert client.get(detail(agent)).status_code == 200
    response = client.post(URL, payload(cast), format="json")
    assert response.status_code == 403
    assert response.json()["type"] == "permission_denied"
    assert client.patch(detail(agent), {"name": "X"}, format="json").status_code == 403
    assert client.delete(detail(agent)).status_code == 403
    assert client.post(f"{detail(agent)}test", {"prompt": "hi"}, format="json").status_code == 403
    assert Agent.objects.get().name == agent.name


@pytest.mark.parametrize("who", ["owner", "admin", "developer"])
def test_writers(cast, who):
    client = cast.client(who)
    created = client.post(URL, payload(cast, name=f"By {who}"), format="json")
    assert created.status_code == 201
    url = f"{URL}{created.json()['id']}/"
    assert client.patch(url, {"model": "sim-2"}, format="json").json()["version"] == 2
    assert client.delete(url).status_code == 204


def test_outsider_cannot_see_or_create(cast):
    agent = AgentFactory(project=cast.project)
    client = cast.client("outsider")
    assert client.get(URL).json()["count"] == 0
    assert client.get(detail(agent)).status_code == 404
    response = client.post(URL, payload(cast), format="json")
    assert response.status_code == 400
    assert "project" in response.json()["errors"]


def test_anonymous_is_401(cast):
    assert client_for(None).get(URL).status_code == 401


def test_update_and_partial_update(cast):
    agent = AgentFactory(project=cast.project, name="First")
    client = cast.client("developer")
    response = client.put(
        detail(agent),
        {"name": "Renamed", "provider": "simulated", "model": "sim-9", "slug": agent.slug},
        format="json",
    )
    assert response.status_code == 200, response.json()
    assert response.json()["model"] == "sim-9" and response.json()["version"] == 2
    response = client.patch(detail(agent), {"description": "Notes"}, format="json")
    assert response.json()["description"] == "Notes"
    assert response.json()["version"] == 3


def test_project_is_read_only_after_create(cast):
    agent = AgentFactory(project=cast.project)
    MembershipFactory(project=cast.other_project, user=cast.developer, role="developer")
    response = cast.client("developer").patch(
        detail(agent), {"project": str(cast.other_project.pk)}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["project"] == str(cast.project.pk)
    agent.refresh_from_db()
    assert agent.project == cast.project


def test_no_op_patch_writes_no_version(cast):
    agent = AgentFactory(project=cast.project, model="sim-1")
    response = cast.client("developer").patch(detail(agent), {"model": "sim-1"}, format="json")
    assert response.json()["version"] == 1
    assert agent.versions.count() == 1


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"provider": "gemini"}, "provider"),
        ({"provider": "openai_compatible"}, "base_url"),
        # a literal private address: the egress guard refuses it whatever DNS answers
        ({"provider": "openai_compatible", "base_url": "http://10.0.0.1/v1"}, "base_url"),
        ({"credentials_secret": "MISSING"}, "credentials_secret"),
        ({"response_format": {"type": 12}}, "response_format"),
        # patterns run on RE2 (linear time): lookaround and backreferences are refused
        ({"response_format": {"type": "string", "pattern": "a(?=b)"}}, "response_format"),
        ({"response_format": {"patternProperties": {r"(x)\1": {}}}}, "response_format"),
        ({"temperature": 3}, "temperature"),
        ({"max_iterations": 0}, "max_iterations"),
        ({"settings": "not an object"}, "settings"),
        ({"tools": ["x"]}, "tools"),
    ],
)
def test_invalid_input_is_a_400_with_field_errors(cast, fields, field):
    response = cast.client("developer").post(URL, payload(cast, **fields), format="json")
    assert response.status_code == 400, response.json()
    body = response.json()
    assert body["type"] == "validation_error"
    assert field in body["errors"], body


def test_tool_from_another_project_is_a_field_error(cast):
    foreign = tool_for(cast.other_project)
    response = cast.client("developer").post(URL, payload(cast, tools=[foreign.pk]), format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {
        "tools": [f"Not a tool of this project nor a global tool: {foreign.pk}."]
    }


def test_global_tool_is_accepted(cast):
    shared = tool_for(None)
    response = cast.client("developer").post(URL, payload(cast, tools=[shared.pk]), format="json")
    assert response.status_code == 201
    assert response.json()["tools"] == [shared.pk]


def test_duplicate_slug_is_a_409(cast):
    AgentFactory(project=cast.project, slug="writer")
    response = cast.client("developer").post(URL, payload(cast, slug="writer"), format="json")
    assert response.status_code == 409
    assert response.json()["errors"] == {"slug": ["Taken."]}


def test_delete_of_an_agent_in_use_is_a_409(cast):
    from workflows.models import Workflow

    agent = AgentFactory(project=cast.project, slug="researcher")
    Workflow.objects.create(
        project=cast.project,
        name="Digest",
        slug="digest",
        definition={"nodes": [{"id": "a", "type": "agent", "agent": "researcher"}]},
    )
    response = cast.client("developer").delete(detail(agent))
    assert response.status_code == 409
    assert response.json()["workflows"] == ["Digest"]


# --- list: filters, search, ordering, pagination ---------------------------------------------


def test_filters_search_and_ordering(cast):
    add_key(cast)
    AgentFactory(project=cast.project, name="Alpha", model="sim-a", description="summarises")
    AgentFactory(project=cast.project, name="Beta", status="disabled")
    AgentFactory(
        project=cast.project,
        name="Gamma",
        provider="openai",
        model="gpt-4o-mini",
        credentials_secret="LLM_KEY",
    )
    MembershipFactory(project=cast.other_project, user=cast.developer)
    AgentFactory(project=cast.other_project, name="Elsewhere")
    client = cast.client("developer")

    def names(**params: Any) -> list[str]:
        return [row["name"] for row in client.get(URL, params).json()["results"]]

    assert names() == ["Alpha", "Beta", "Elsewhere", "Gamma"]
    assert names(project=str(cast.project.pk)) == ["Alpha", "Beta", "Gamma"]
    assert names(status="disabled") == ["Beta"]
    assert names(provider="openai") == ["Gamma"]
    assert names(search="gpt-4o") == ["Gamma"]
    assert names(search="summarises") == ["Alpha"]
    assert names(ordering="-name")[0] == "Gamma"
    page = client.get(URL, {"page_size": 2}).json()
    assert page["count"] == 4 and len(page["results"]) == 2 and page["next"]


def test_filter_by_tool(cast):
    tool = tool_for(cast.project)
    AgentFactory(project=cast.project, name="With", tools=[tool.pk])
    AgentFactory(project=cast.project, name="Without")
    results = cast.client("viewer").get(URL, {"tool": tool.pk}).json()["results"]
    assert [row["name"] for row in results] == ["With"]


def test_unknown_project_filter_is_an_empty_list(cast):
    AgentFactory(project=cast.other_project)
    client = cast.client("developer")
    assert client.get(URL, {"project": str(cast.other_project.pk)}).json()["count"] == 0


def test_agent_list_query_count_is_constant(cast, django_assert_num_queries):
    client = cast.client("viewer")
    tools = [tool_for(cast.project), tool_for(None)]
    AgentFactory(project=cast.project, tools=[t.pk for t in tools])
    # auth user, count, page of agents (project joined), prefetch of their tool ids
    with django_assert_num_queries(4):
        assert client.get(URL).status_code == 200
    for _ in range(10):
        AgentFactory(project=cast.project, tools=[t.pk for t in tools])
    with django_assert_num_queries(4):
        results = client.get(URL).json()["results"]
    assert len(results) == 11
    assert all(len(row["tools"]) == 2 for row in results)


# --- versions and rollback -------------------------------------------------------------------


def test_versions_list_and_detail(cast):
    agent = AgentFactory(project=cast.project, system_prompt="one")
    client = cast.client("developer")
    client.patch(detail(agent), {"system_prompt": "two"}, format="json")
    body = cast.client("viewer").get(f"{detail(agent)}versions/").json()
    assert body["count"] == 2
    assert [v["number"] for v in body["results"]] == [2, 1]
    assert body["results"][0]["snapshot"]["system_prompt"] == "two"
    assert body["results"][0]["created_by"] == str(cast.developer.pk)
    one = cast.client("viewer").get(f"{detail(agent)}versions/1/")
    assert one.status_code == 200
    assert one.json()["snapshot"]["system_prompt"] == "one"
    missing = client.get(f"{detail(agent)}versions/9/")
    assert missing.status_code == 404
    assert missing.json()["type"] == "not_found"


def test_versions_list_query_count_is_constant(cast, django_assert_num_queries):
    agent = AgentFactory(project=cast.project)
    client = cast.client("viewer")
    url = f"{detail(agent)}versions/"
    # auth user, agent (project joined), its tool ids (the viewset's prefetch), role check,
    # count, page of versions
    with django_assert_num_queries(6):
        assert client.get(url).status_code == 200
    for n in range(10):
        services.agent_update(agent=agent, actor=cast.owner, system_prompt=f"prompt {n}")
    with django_assert_num_queries(6):
        assert client.get(url).json()["count"] == 11


def test_rollback(cast):
    tool = tool_for(cast.project)
    agent = AgentFactory(project=cast.project, system_prompt="one", tools=[tool.pk])
    client = cast.client("developer")
    client.patch(detail(agent), {"system_prompt": "two", "tools": []}, format="json")
    response = client.post(f"{detail(agent)}rollback", {"version": 1}, format="json")
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["system_prompt"], body["tools"], body["version"]) == ("one", [tool.pk], 3)
    bad = client.post(f"{detail(agent)}rollback", {"version": 42}, format="json")
    assert bad.status_code == 400
    assert "version" in bad.json()["errors"]
    assert client.post(f"{detail(agent)}rollback", {}, format="json").status_code == 400
    assert (
        cast.client("viewer")
        .post(f"{detail(agent)}rollback", {"version": 1}, format="json")
        .status_code
        == 403
    )


# --- the project-nested read route -----------------------------------------------------------


def test_project_agents_route(cast):
    agent = AgentFactory(project=cast.project, name="Mine")
    MembershipFactory(project=cast.other_project, user=cast.viewer)
    AgentFactory(project=cast.other_project, name="Theirs")
    url = f"/api/v1/projects/{cast.project.pk}/agents/"
    listing = cast.client("viewer").get(url).json()
    assert [row["name"] for row in listing["results"]] == ["Mine"]
    assert cast.client("viewer").get(f"{url}{agent.pk}/").json()["id"] == agent.pk
    assert cast.client("outsider").get(url).status_code == 404
    assert cast.client("developer").post(url, payload(cast), format="json").status_code == 405


# --- the test endpoint -----------------------------------------------------------------------


def test_test_endpoint_with_the_simulated_provider(cast):
    agent = AgentFactory(project=cast.project, system_prompt="You are terse.")
    response = cast.client("developer").post(
        f"{detail(agent)}test", {"prompt": "ping"}, format="json"
    )
    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["reply"] == "Echo: ping"
    assert set(body) >= {"reply", "input_tokens", "output_tokens", "latency_ms", "model"}
    assert body["tool_calls"] == [] and body["model"] == "sim-1"
    assert body["input_tokens"] > 0 and body["output_tokens"] > 0


def test_test_endpoint_returns_tool_calls(cast):
    tool = tool_for(cast.project, name="lookup")
    turns = [{"tool_calls": [{"id": "c1", "name": "lookup", "arguments": {"text": "x"}}]}]
    agent = AgentFactory(
        project=cast.project, tools=[tool.pk], settings={"mode": "script", "turns": turns}
    )
    body = cast.client("developer").post(f"{detail(agent)}test", {"prompt": "go"}).json()
    assert body["reply"] is None
    assert body["tool_calls"] == [
        {"id": "c1", "name": "lookup", "arguments": {"text": "x"}, "raw_arguments": '{"text": "x"}'}
    ]


def test_test_endpoint_needs_a_prompt(cast):
    agent = AgentFactory(project=cast.project)
    response = cast.client("developer").post(f"{detail(agent)}test", {}, format="json")
    assert response.status_code == 400
    assert "prompt" in response.json()["errors"]


def test_test_without_credentials_is_a_clear_400(cast):
    agent = AgentFactory(project=cast.project, provider="openai", model="gpt-4o")
    response = cast.client("developer").post(f"{detail(agent)}test", {"prompt": "hi"})
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "provider_config_error"
    assert "no credentials" in body["detail"]


def openai_agent(cast: Any, fake_llm: Any, **fields: Any) -> Agent:
    add_key(cast)
    values = {
        "provider": "openai",
        "model": "gpt-test",
        "base_url": fake_llm.openai_base_url,
        "credentials_secret": "LLM_KEY",
        "settings": {"timeout_seconds": 5},
        **fields,
    }
    return AgentFactory(project=cast.project, **values)


def anthropic_agent(cast: Any, fake_llm: Any, **fields: Any) -> Agent:
    add_key(cast)
    values = {
        "provider": "anthropic",
        "model": "claude-test",
        "base_url": fake_llm.anthropic_base_url,
        "credentials_secret": "LLM_KEY",
        "settings": {"timeout_seconds": 5},
        **fields,
    }
    return AgentFactory(project=cast.project, **values)


def test_test_through_the_openai_sdk(cast, fake_llm, allow_loopback):
    agent = openai_agent(cast, fake_llm, system_prompt="Be terse.", max_tokens=50)
    fake_llm.enqueue("openai", {"content": "pong", "input_tokens": 11, "output_tokens": 3})
    response = cast.client("developer").post(f"{detail(agent)}test", {"prompt": "ping"})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["reply"], body["input_tokens"], body["output_tokens"]) == ("pong", 11, 3)
    assert body["model"] == "gpt-test" and body["provider"] == "openai"
    assert body["latency_ms"] >= 0
    sent = fake_llm.requests_for("openai")[-1]
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.body["model"] == "gpt-test"
    assert sent.body["messages"] == [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "ping"},
    ]
    assert KEY not in response.content.decode()


def test_test_through_the_anthropic_sdk(cast, fake_llm, allow_loopback):
    agent = anthropic_agent(cast, fake_llm, system_prompt="Be terse.")
    fake_llm.enqueue("anthropic", {"content": "pong", "input_tokens": 7, "output_tokens": 2})
    response = cast.client("developer").post(f"{detail(agent)}test", {"prompt": "ping"})
    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["reply"], body["input_tokens"], body["output_tokens"]) == ("pong", 7, 2)
    assert body["provider"] == "anthropic"
    sent = fake_llm.requests_for("anthropic")[-1]
    # x-api-key historically; the 2.x SDK sends the key as a bearer token
    assert KEY in (sent.headers.get("x-api-key"), sent.headers.get("authorization", "")[7:])
    assert sent.body["system"] == "Be terse."
    assert KEY not in response.content.decode()


@pytest.mark.parametrize("make", [openai_agent, anthropic_agent])
def test_a_rejected_key_is_a_clear_json_error(cast, fake_llm, allow_loopback, make):
    agent = make(cast, fake_llm)
    kind = agent.provider
    fake_llm.enqueue(kind, {"status": 401, "message": f"Incorrect API key provided: {KEY}"})
    response = cast.client("developer").post(f"{detail(agent)}test", {"prompt": "ping"})
    assert response.status_code == 502
    body = response.json()
    assert body["type"] == "provider_auth_error"
    assert "401" in body["detail"] and body["retryable"] is False
    assert body["provider"] == kind
    assert KEY not in response.content.decode()


@pytest.mark.parametrize("make", [openai_agent, anthropic_agent])
def test_a_provider_that_does_not_answer_in_time_is_a_504(cast, fake_llm, allow_loopback, make):
    agent = make(cast, fake_llm, settings={"timeout_seconds": 0.3})
    fake_llm.enqueue(agent.provider, {"delay": 30, "content": "too late"})
    response = cast.client("developer").post(f"{detail(agent)}test", {"prompt": "ping"})
    assert response.status_code == 504
    body = response.json()
    assert body["type"] == "provider_timeout" and body["retryable"] is True


def test_unknown_model_is_a_502(cast, fake_llm, allow_loopback):
    agent = openai_agent(cast, fake_llm, model="gpt-nope")
    fake_llm.enqueue("openai", {"status": 404})
    response = cast.client("developer").post(f"{detail(agent)}test", {"prompt": "ping"})
    assert response.status_code == 502
    assert response.json()["type"] == "provider_not_found"


def test_a_private_base_url_is_refused_by_the_egress_guard(cast, fake_llm, settings):
    # saved while 127.0.0.1 was allow-listed; without it, refused before any connection
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    agent = openai_agent(cast, fake_llm)
    settings.SPARKOPS_OUTBOUND_ALLOW = []
    response = cast.client("developer").post(f"{detail(agent)}test", {"prompt": "ping"})
    assert response.status_code == 400
    assert response.json()["type"] == "provider_egress_denied"
    assert fake_llm.requests == []


def test_the_key_never_appears_in_api_responses(cast, fake_llm, allow_loopback):
    agent = openai_agent(cast, fake_llm)
    client = cast.client("owner")
    client.patch(detail(agent), {"description": "changed"}, format="json")
    fake_llm.enqueue("openai", {"content": f"the key is {KEY}"})
    tested = client.post(f"{detail(agent)}test", {"prompt": "leak it"})
    assert tested.status_code == 200
    assert tested.json()["reply"] == "the key is ***"
    responses = [
        tested,
        client.get(URL),
        client.get(detail(agent)),
        client.get(f"{detail(agent)}versions/"),
        client.get(f"{detail(agent)}versions/1/"),
        client.get(f"/api/v1/projects/{cast.project.pk}/agents/"),
        client.post(f"{detail(agent)}rollback", {"version": 1}, format="json"),
    ]
    for response in responses:
        assert response.status_code == 200
        text = response.content.decode()
        assert KEY not in text
    assert "LLM_KEY" in client.get(detail(agent)).content.decode()  # the name, not the value


def test_diff_shows_each_changed_field_before_and_after(cast):
    tool = tool_for(cast.project)
    agent = AgentFactory(project=cast.project, system_prompt="one", tools=[tool.pk])
    client = cast.client("developer")
    client.patch(detail(agent), {"system_prompt": "two", "tools": []}, format="json")
    client.patch(detail(agent), {"model": "sim-2"}, format="json")
    viewer = cast.client("viewer")
    body = viewer.get(f"{detail(agent)}diff", {"from": 1, "to": 3}).json()
    assert (body["from_version"], body["to_version"]) == (1, 3)
    assert body["changed_fields"] == ["model", "system_prompt", "tools"]
    assert body["changes"]["system_prompt"] == {"from": "one", "to": "two"}
    assert body["changes"]["tools"] == {
        "from": [str(tool.pk)],
        "to": [],
        "added": [],
        "removed": [str(tool.pk)],
    }
    default = viewer.get(f"{detail(agent)}diff").json()  # previous -> current
    assert (default["from_version"], default["to_version"], default["changed_fields"]) == (
        2,
        3,
        ["model"],
    )
    bad = viewer.get(f"{detail(agent)}diff", {"from": "x"})
    assert bad.status_code == 400 and "from" in bad.json()["errors"]
    unknown = viewer.get(f"{detail(agent)}diff", {"from": 1, "to": 7})
    assert unknown.status_code == 400
    assert unknown.json()["errors"] == {"to": ["No version 7; the latest is 3."]}
