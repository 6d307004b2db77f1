"""The adapters through the real OpenAI and Anthropic SDKs, the real egress client and a real
HTTP server on 127.0.0.1 (`sparkops.testing.fake_llm`). Nothing else is ever contacted: the
refused addresses are refused before any connection is attempted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agents.providers import (
    ChatMessage,
    ChatRequest,
    ProviderConfig,
    ProviderError,
    ToolCall,
    ToolSpec,
    get_provider,
)
from sparkops.testing.fake_llm import FakeLLMServer

# Every test runs under a socket tripwire that refuses anything but loopback.
pytestmark = pytest.mark.usefixtures("loopback_only")

API_KEY = "sk-test-0123456789abcdef"
ADD = ToolSpec(
    name="add",
    description="Add two integers.",
    parameters={
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
    },
)
SUMMARY_FORMAT = {
    "type": "json_schema",
    "json_schema": {
        "name": "summary",
        "schema": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
}


def openai_config(server: FakeLLMServer, **overrides: Any) -> ProviderConfig:
    values: dict[str, Any] = {
        "provider": "openai",
        "model": "gpt-test",
        "api_key": API_KEY,
        "base_url": server.openai_base_url,
        "timeout": 5.0,
    }
    return ProviderConfig(**{**values, **overrides})


def anthropic_config(server: FakeLLMServer, **overrides: Any) -> ProviderConfig:
    values: dict[str, Any] = {
        "provider": "anthropic",
        "model": "claude-test",
        "api_key": API_KEY,
        "base_url": server.anthropic_base_url,
        "timeout": 5.0,
    }
    return ProviderConfig(**{**values, **overrides})


def ask(text: str, *, model: str = "gpt-test", **kwargs: Any) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=[
            ChatMessage(role="system", content="You are terse."),
            ChatMessage(role="user", content=text),
        ],
        **kwargs,
    )


def tool_round_trip(model: str) -> ChatRequest:
    """A conversation after the model asked for two tool calls and both answered."""
    calls = [
        ToolCall(
            id="call_1", name="add", arguments={"a": 1, "b": 2}, raw_arguments='{"a":1,"b":2}'
        ),
        ToolCall(
            id="call_2", name="add", arguments={"a": 3, "b": 4}, raw_arguments='{"a":3,"b":4}'
        ),
    ]
    return ChatRequest(
        model=model,
        messages=[
            ChatMessage(role="system", content="Use the tools."),
            ChatMessage(role="user", content="What are 1+2 and 3+4?"),
            ChatMessage(role="assistant", content=None, tool_calls=calls),
            ChatMessage(role="tool", content="3", tool_call_id="call_1", name="add"),
            ChatMessage(role="tool", content="7", tool_call_id="call_2", name="add"),
        ],
        tools=[ADD],
    )


def auth_sent(headers: dict[str, str]) -> str | None:
    """The key an SDK sent, whichever header it used."""
    if "x-api-key" in headers:
        return headers["x-api-key"]
    authorization = headers.get("authorization", "")
    return authorization.removeprefix("Bearer ") if authorization else None


def call_failing(config: ProviderConfig, request: ChatRequest) -> ProviderError:
    with pytest.raises(ProviderError) as caught:
        get_provider(config).chat(request)
    error = caught.value
    assert API_KEY not in str(error)
    assert API_KEY not in json.dumps(error.extra)
    return error


# -- OpenAI ----------------------------------------------------------------------------------


def test_openai_reply_has_content_and_tokens(fake_llm, allow_loopback):
    fake_llm.enqueue("openai", {"content": "Hello!", "input_tokens": 12, "output_tokens": 3})

    response = get_provider(openai_config(fake_llm)).chat(
        ask("Say hello", temperature=0.2, max_tokens=50)
    )

    assert response.content == "Hello!"
    assert response.tool_calls == []
    assert (response.input_tokens, response.output_tokens) == (12, 3)
    assert response.model == "gpt-test"
    assert response.finish_reason == "stop"
    assert response.provider == "openai"
    assert response.latency_ms > 0
    (sent,) = fake_llm.requests
    assert sent.path == "/v1/chat/completions"
    assert auth_sent(sent.headers) == API_KEY
    assert sent.body["model"] == "gpt-test"
    assert sent.body["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Say hello"},
    ]
    assert sent.body["temperature"] == 0.2
    assert sent.body["max_completion_tokens"] == 50
    assert "tools" not in sent.body
    assert "response_format" not in sent.body


def test_openai_tool_calls_are_mapped(fake_llm, allow_loopback):
    fake_llm.enqueue(
        "openai",
        {
            "tool_calls": [
                {"id": "call_a", "name": "add", "arguments": {"a": 1, "b": 2}},
                {"id": "call_b", "name": "add", "arguments": '{"a": 1,'},
            ]
        },
    )

    response = get_provider(openai_config(fake_llm)).chat(ask("Add", tools=[ADD]))

    assert response.content is None
    assert response.finish_reason == "tool_calls"
    first, broken = response.tool_calls
    assert (first.id, first.name, first.arguments) == ("call_a", "add", {"a": 1, "b": 2})
    assert json.loads(first.raw_arguments) == {"a": 1, "b": 2}
    assert (broken.id, broken.arguments, broken.raw_arguments) == ("call_b", None, '{"a": 1,')
    assert fake_llm.requests[0].body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "add",
                "description": "Add two integers.",
                "parameters": ADD.parameters,
            },
        }
    ]


def test_openai_tool_results_are_fed_back(fake_llm, allow_loopback):
    fake_llm.enqueue("openai", {"content": "3 and 7"})

    response = get_provider(openai_config(fake_llm)).chat(tool_round_trip("gpt-test"))

    assert response.content == "3 and 7"
    messages = fake_llm.requests[0].body["messages"]
    assert messages[2] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a":1,"b":2}'},
            },
            {
                "id": "call_2",
                "type": "function",
                "function": {"name": "add", "arguments": '{"a":3,"b":4}'},
            },
        ],
    }
    assert messages[3:] == [
        {"role": "tool", "tool_call_id": "call_1", "content": "3"},
        {"role": "tool", "tool_call_id": "call_2", "content": "7"},
    ]


def test_openai_json_response_format_is_sent(fake_llm, allow_loopback):
    fake_llm.enqueue("openai", {"content": '{"text": "ok"}'})

    response = get_provider(openai_config(fake_llm)).chat(
        ask("Summarise", response_format=SUMMARY_FORMAT)
    )

    assert response.content == '{"text": "ok"}'
    assert fake_llm.requests[0].body["response_format"] == SUMMARY_FORMAT


def test_openai_bad_key_is_an_auth_error_that_is_not_retried(fake_llm, allow_loopback):
    # A provider that echoes the key back must not leak it into our error.
    fake_llm.enqueue("openai", {"status": 401, "message": f"Incorrect API key: {API_KEY}"})

    error = call_failing(openai_config(fake_llm), ask("Hi"))

    assert error.error_type == "provider_auth_error"
    assert error.status_code == 502
    assert error.provider_status == 401
    assert error.retryable is False
    assert "rejected the credentials" in error.detail
    assert "[redacted]" in error.detail
    assert len(fake_llm.requests) == 1  # max_retries=0: the engine owns retries


def test_openai_rate_limit_is_retryable(fake_llm, allow_loopback):
    fake_llm.enqueue("openai", {"status": 429, "headers": {"retry-after": "0"}})

    error = call_failing(openai_config(fake_llm), ask("Hi"))

    assert error.error_type == "provider_rate_limited"
    assert error.provider_status == 429
    assert error.retryable is True
    assert len(fake_llm.requests) == 1


def test_openai_timeout_is_retryable(fake_llm, allow_loopback):
    fake_llm.enqueue("openai", {"delay": 30, "content": "too late"})

    error = call_failing(openai_config(fake_llm, timeout=0.3), ask("Hi"))

    assert error.error_type == "provider_timeout"
    assert error.status_code == 504
    assert error.retryable is True
    assert "0.3 seconds" in error.detail


@pytest.mark.parametrize(
    ("status", "error_type", "retryable"),
    [
        (400, "provider_bad_request", False),
        (403, "provider_auth_error", False),
        (404, "provider_not_found", False),
        (500, "provider_error", True),
        (503, "provider_error", True),
    ],
)
def test_openai_status_mapping(fake_llm, allow_loopback, status, error_type, retryable):
    fake_llm.enqueue("openai", {"status": status})

    error = call_failing(openai_config(fake_llm), ask("Hi"))

    assert (error.error_type, error.retryable, error.provider_status) == (
        error_type,
        retryable,
        status,
    )
    assert error.status_code == 502


def test_openai_compatible_needs_no_api_key(fake_llm, allow_loopback):
    config = openai_config(fake_llm, provider="openai_compatible", api_key=None, model="llama")

    response = get_provider(config).chat(ask("ping", model="llama", max_tokens=20))

    assert response.content == "ping"  # the fake echoes with an empty queue
    assert response.provider == "openai_compatible"
    assert response.input_tokens > 0
    sent = fake_llm.requests[0]
    assert auth_sent(sent.headers) == "not-needed"
    # Compatible servers mostly know only the classic parameter name.
    assert sent.body["max_tokens"] == 20
    assert "max_completion_tokens" not in sent.body


def test_openai_compatible_needs_a_base_url():
    config = ProviderConfig(provider="openai_compatible", model="llama")

    with pytest.raises(ProviderError) as caught:
        get_provider(config)

    assert caught.value.error_type == "provider_config_error"
    assert caught.value.status_code == 400


def test_openai_needs_an_api_key():
    with pytest.raises(ProviderError) as caught:
        get_provider(ProviderConfig(provider="openai", model="gpt-test"))

    assert caught.value.error_type == "provider_config_error"


# -- Anthropic -------------------------------------------------------------------------------


def test_anthropic_reply_has_content_and_tokens(fake_llm, allow_loopback):
    fake_llm.enqueue("anthropic", {"content": "Hello!", "input_tokens": 21, "output_tokens": 4})

    response = get_provider(anthropic_config(fake_llm)).chat(
        ask("Say hello", model="claude-test", temperature=0.1)
    )

    assert response.content == "Hello!"
    assert response.tool_calls == []
    assert (response.input_tokens, response.output_tokens) == (21, 4)
    assert response.model == "claude-test"
    assert response.finish_reason == "end_turn"
    assert response.provider == "anthropic"
    (sent,) = fake_llm.requests
    assert sent.path == "/v1/messages"
    assert auth_sent(sent.headers) == API_KEY
    assert "anthropic-version" in sent.headers
    assert sent.body["system"] == "You are terse."
    assert sent.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Say hello"}]}
    ]
    assert sent.body["max_tokens"] == 4096
    assert "temperature" not in sent.body  # the messages API no longer takes one


def test_anthropic_tool_use_is_mapped(fake_llm, allow_loopback):
    fake_llm.enqueue(
        "anthropic",
        {
            "content": "Let me add.",
            "tool_calls": [{"id": "toolu_1", "name": "add", "arguments": {"a": 1, "b": 2}}],
        },
    )

    response = get_provider(anthropic_config(fake_llm)).chat(
        ask("Add", model="claude-test", tools=[ADD], max_tokens=100)
    )

    assert response.content == "Let me add."
    assert response.finish_reason == "tool_use"
    (call,) = response.tool_calls
    assert (call.id, call.name, call.arguments) == ("toolu_1", "add", {"a": 1, "b": 2})
    assert json.loads(call.raw_arguments) == {"a": 1, "b": 2}
    sent = fake_llm.requests[0].body
    assert sent["tools"] == [
        {"name": "add", "description": "Add two integers.", "input_schema": ADD.parameters}
    ]
    assert sent["max_tokens"] == 100


def test_anthropic_tool_results_are_fed_back_in_one_user_turn(fake_llm, allow_loopback):
    fake_llm.enqueue("anthropic", {"content": "3 and 7"})

    response = get_provider(anthropic_config(fake_llm)).chat(tool_round_trip("claude-test"))

    assert response.content == "3 and 7"
    sent = fake_llm.requests[0].body
    assert sent["system"] == "Use the tools."
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "What are 1+2 and 3+4?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "add", "input": {"a": 1, "b": 2}},
                {"type": "tool_use", "id": "call_2", "name": "add", "input": {"a": 3, "b": 4}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "3"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "7"},
            ],
        },
    ]


def test_anthropic_json_is_asked_for_in_the_system_prompt(fake_llm, allow_loopback):
    fake_llm.enqueue("anthropic", {"content": '{"text": "ok"}'})

    response = get_provider(anthropic_config(fake_llm)).chat(
        ask("Summarise", model="claude-test", response_format=SUMMARY_FORMAT)
    )

    assert response.content == '{"text": "ok"}'
    sent = fake_llm.requests[0].body
    assert "response_format" not in sent
    assert sent["system"].startswith("You are terse.\n\n")
    assert "JSON" in sent["system"]
    assert '"text": {' in sent["system"]


def test_anthropic_bad_key_is_an_auth_error_that_is_not_retried(fake_llm, allow_loopback):
    fake_llm.enqueue("anthropic", {"status": 401, "message": f"invalid x-api-key {API_KEY}"})

    error = call_failing(anthropic_config(fake_llm), ask("Hi", model="claude-test"))

    assert error.error_type == "provider_auth_error"
    assert error.status_code == 502
    assert error.provider_status == 401
    assert error.retryable is False
    assert "Anthropic rejected the credentials" in error.detail
    assert len(fake_llm.requests) == 1


def test_anthropic_rate_limit_is_retryable(fake_llm, allow_loopback):
    fake_llm.enqueue("anthropic", {"status": 429, "headers": {"retry-after": "0"}})

    error = call_failing(anthropic_config(fake_llm), ask("Hi", model="claude-test"))

    assert error.error_type == "provider_rate_limited"
    assert error.retryable is True
    assert len(fake_llm.requests) == 1


def test_anthropic_timeout_is_retryable(fake_llm, allow_loopback):
    fake_llm.enqueue("anthropic", {"delay": 30, "content": "too late"})

    error = call_failing(anthropic_config(fake_llm, timeout=0.3), ask("Hi", model="claude-test"))

    assert error.error_type == "provider_timeout"
    assert error.status_code == 504
    assert error.retryable is True


@pytest.mark.parametrize(
    ("status", "error_type", "retryable"),
    [
        (400, "provider_bad_request", False),
        (404, "provider_not_found", False),
        (500, "provider_error", True),
        (529, "provider_error", True),  # Anthropic's "overloaded"
    ],
)
def test_anthropic_status_mapping(fake_llm, allow_loopback, status, error_type, retryable):
    fake_llm.enqueue("anthropic", {"status": status})

    error = call_failing(anthropic_config(fake_llm), ask("Hi", model="claude-test"))

    assert (error.error_type, error.retryable, error.provider_status) == (
        error_type,
        retryable,
        status,
    )


@pytest.mark.parametrize(("kind", "label"), [("openai", "OpenAI"), ("anthropic", "Anthropic")])
def test_the_providers_own_message_is_shown_without_the_key(fake_llm, allow_loopback, kind, label):
    # One mapping reads both SDKs' error bodies: OpenAI's unwrapped error, Anthropic's whole one.
    fake_llm.enqueue(kind, {"status": 400, "message": f"No such model; key {API_KEY}"})
    config = openai_config(fake_llm) if kind == "openai" else anthropic_config(fake_llm)

    error = call_failing(config, ask("Hi", model="claude-test"))

    assert error.detail == f"{label} refused the request (HTTP 400): No such model; key [redacted]"
    assert (error.error_type, error.retryable, error.provider) == (
        "provider_bad_request",
        False,
        kind,
    )


def test_anthropic_needs_an_api_key():
    with pytest.raises(ProviderError) as caught:
        get_provider(ProviderConfig(provider="anthropic", model="claude-test"))

    assert caught.value.error_type == "provider_config_error"


# -- Egress ----------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai_compatible", "anthropic"])
def test_private_base_url_is_refused_by_the_egress_guard(provider, allow_loopback, loopback_only):
    config = ProviderConfig(
        provider=provider,
        model="m",
        api_key=API_KEY,
        base_url="http://10.0.0.1/v1" if provider != "anthropic" else "http://10.0.0.1",
        timeout=2.0,
    )

    error = call_failing(config, ask("Hi", model="m"))

    assert error.error_type == "provider_egress_denied"
    assert error.retryable is False
    assert "outbound policy" in error.detail
    assert "10.0.0.1" in error.detail
    assert loopback_only == []  # refused before any connection attempt


def test_loopback_is_refused_unless_allow_listed(fake_llm, settings, loopback_only):
    settings.SPARKOPS_OUTBOUND_ALLOW = []

    error = call_failing(openai_config(fake_llm), ask("Hi"))

    assert error.error_type == "provider_egress_denied"
    assert fake_llm.requests == []
    assert loopback_only == []  # refused before connecting


def test_a_server_that_is_down_is_unreachable_and_retryable(allow_loopback):
    with FakeLLMServer() as server:
        config = openai_config(server)
    # The port is closed now: the connection is refused on 127.0.0.1.

    error = call_failing(config, ask("Hi"))

    assert error.error_type == "provider_unreachable"
    assert error.retryable is True


# -- Simulated -------------------------------------------------------------------------------


def simulated(**settings: Any) -> ProviderConfig:
    return ProviderConfig(provider="simulated", model="sim-1", settings=settings)


def test_simulated_echoes_the_last_user_message_by_default():
    request = ChatRequest(
        model="sim-1",
        messages=[
            ChatMessage(role="user", content="first"),
            ChatMessage(role="assistant", content="ok"),
            ChatMessage(role="user", content="second"),
        ],
    )

    response = get_provider(simulated()).chat(request)

    assert response.content == "Echo: second"
    assert response.tool_calls == []
    assert response.finish_reason == "stop"
    assert response.provider == "simulated"
    assert response.model == "sim-1"


def test_simulated_fixed_reply():
    response = get_provider(simulated(mode="fixed", reply='{"ok": true}')).chat(ask("anything"))

    assert response.content == '{"ok": true}'


def test_simulated_script_progresses_by_turn():
    config = simulated(
        mode="script",
        turns=[
            {
                "tool_calls": [
                    {"name": "add", "arguments": {"a": 1, "b": 2}},
                    {"name": "add", "arguments": {"a": 3, "b": 4}},
                ]
            },
            {"content": "For {prompt}: {last_tool_result}"},
        ],
    )
    provider = get_provider(config)
    messages = [ChatMessage(role="user", content="add things")]

    first = provider.chat(ChatRequest(model="sim-1", messages=messages, tools=[ADD]))

    assert first.content is None
    assert first.finish_reason == "tool_calls"
    assert [(c.name, c.arguments) for c in first.tool_calls] == [
        ("add", {"a": 1, "b": 2}),
        ("add", {"a": 3, "b": 4}),
    ]
    assert len({c.id for c in first.tool_calls}) == 2
    messages.append(ChatMessage(role="assistant", tool_calls=first.tool_calls))
    for call, result in zip(first.tool_calls, ["3", "7"], strict=True):
        messages.append(ChatMessage(role="tool", content=result, tool_call_id=call.id))

    second = provider.chat(ChatRequest(model="sim-1", messages=messages, tools=[ADD]))

    assert second.content == "For add things: 7"
    assert second.tool_calls == []
    # Past the end of the script the last turn repeats.
    messages.append(ChatMessage(role="assistant", content=second.content))
    third = provider.chat(ChatRequest(model="sim-1", messages=messages))
    assert third.content == "For add things: 7"


def test_simulated_script_can_send_invalid_arguments():
    config = simulated(
        mode="script", turns=[{"tool_calls": [{"name": "add", "raw_arguments": "{"}]}]
    )

    (call,) = get_provider(config).chat(ask("go")).tool_calls

    assert (call.arguments, call.raw_arguments) == (None, "{")


def test_simulated_tokens_are_deterministic_and_overridable():
    request = ask("x" * 40)
    first = get_provider(simulated()).chat(request)
    again = get_provider(simulated()).chat(request)

    assert (first.input_tokens, first.output_tokens) == (again.input_tokens, again.output_tokens)
    assert first.input_tokens == len("You are terse." + "x" * 40) // 4 + 1
    assert first.output_tokens == len("Echo: " + "x" * 40) // 4 + 1

    fixed = get_provider(simulated(input_tokens=100, output_tokens=7)).chat(request)
    assert (fixed.input_tokens, fixed.output_tokens) == (100, 7)


def test_simulated_rejects_an_unknown_mode():
    with pytest.raises(ProviderError) as caught:
        get_provider(simulated(mode="chaos"))

    assert caught.value.error_type == "provider_config_error"


def test_unknown_provider_is_a_config_error():
    with pytest.raises(ProviderError) as caught:
        get_provider(ProviderConfig(provider="palm", model="x"))

    assert caught.value.error_type == "provider_config_error"
    assert caught.value.status_code == 400


def test_retry_after_is_read_in_seconds_milliseconds_or_as_a_date():
    from datetime import UTC, datetime

    from agents.providers.base import retry_after_seconds

    now = datetime(2025, 1, 6, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds({"retry-after": "7"}) == 7.0
    assert retry_after_seconds({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = "Mon, 06 Jan 2025 12:00:30 GMT"
    assert retry_after_seconds({"retry-after": date}, now=now) == 30.0
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({"retry-after": "-3"}) == 0.0
    assert retry_after_seconds({"retry-after": "99999"}) == 3600.0
    assert retry_after_seconds({}) is None
