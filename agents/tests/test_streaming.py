"""Streamed answers through the real OpenAI and Anthropic SDKs against the fake server streaming
Server-Sent Events: the text arrives piece by piece, in order, and the assembled answer (text,
tool calls, tokens) is the one the same reply gives unstreamed."""

from __future__ import annotations

import time
from typing import Any

import pytest

from agents.providers import get_provider
from agents.tests.test_providers import ADD, anthropic_config, ask, openai_config

pytestmark = pytest.mark.usefixtures("loopback_only")

REPLY = {"content": "The sum is three, as asked.", "input_tokens": 21, "output_tokens": 7}
TOOLS = {
    "tool_calls": [
        {"id": "call_a", "name": "add", "arguments": {"a": 1, "b": 2}},
        {"id": "call_b", "name": "add", "arguments": {"a": 40, "b": 2}},
    ],
    "input_tokens": 30,
    "output_tokens": 11,
}
CONFIGS = {"openai": openai_config, "anthropic": anthropic_config}


def both(fake_llm: Any, kind: str, spec: dict[str, Any], **kwargs: Any) -> tuple[Any, Any, list]:
    """The reply unstreamed, then streamed (with the pieces `on_delta` got)."""
    provider = get_provider(CONFIGS[kind](fake_llm))
    model = "gpt-test" if kind == "openai" else "claude-test"
    fake_llm.enqueue(kind, spec)
    plain = provider.chat(ask("Add 1 and 2", model=model, **kwargs))
    fake_llm.enqueue(kind, spec)
    pieces: list[str] = []
    streamed = provider.chat(ask("Add 1 and 2", model=model, **kwargs), on_delta=pieces.append)
    return plain, streamed, pieces


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_streamed_text_arrives_in_pieces_and_matches_the_plain_answer(
    fake_llm, allow_loopback, kind
):
    plain, streamed, pieces = both(fake_llm, kind, REPLY)

    assert len(pieces) == 6
    assert "".join(pieces) == plain.content == streamed.content == REPLY["content"]
    assert (streamed.input_tokens, streamed.output_tokens) == (21, 7)
    assert (plain.input_tokens, plain.output_tokens) == (21, 7)
    assert streamed.finish_reason == plain.finish_reason
    assert streamed.model == plain.model
    assert fake_llm.requests[1].body["stream"] is True
    assert "stream" not in fake_llm.requests[0].body
    if kind == "openai":
        assert fake_llm.requests[1].body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_streamed_tool_calls_are_assembled_from_their_deltas(fake_llm, allow_loopback, kind):
    plain, streamed, pieces = both(fake_llm, kind, TOOLS, tools=[ADD])

    assert pieces == []
    assert streamed.content is None
    assert [(c.id, c.name, c.arguments) for c in streamed.tool_calls] == [
        ("call_a", "add", {"a": 1, "b": 2}),
        ("call_b", "add", {"a": 40, "b": 2}),
    ]
    assert [(c.id, c.name, c.arguments) for c in plain.tool_calls] == [
        (c.id, c.name, c.arguments) for c in streamed.tool_calls
    ]
    assert (streamed.input_tokens, streamed.output_tokens) == (30, 11)
    assert streamed.finish_reason == plain.finish_reason


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_each_piece_is_handed_over_as_the_server_sends_it(fake_llm, allow_loopback, kind):
    """With 200 ms between chunks, each piece reaches `on_delta` long before the next is sent:
    the SDK does not wait for the whole answer."""
    provider = get_provider(CONFIGS[kind](fake_llm))
    fake_llm.enqueue(kind, {**REPLY, "chunk_delay": 0.2})
    arrived: list[float] = []
    provider.chat(ask("Add", model="m"), on_delta=lambda piece: arrived.append(time.time()))

    sent = fake_llm.chunk_times
    first_text = 1 if kind == "openai" else 2  # after the role chunk / message_start + block
    assert len(arrived) == 6
    for index, when in enumerate(arrived):
        assert when - sent[first_text + index] < 0.1
