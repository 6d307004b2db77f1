"""Anthropic through the official SDK's messages API."""

from __future__ import annotations

import json
import time
from typing import Any

import anthropic

from sparkops import egress

from .base import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    OnDelta,
    ProviderConfig,
    ToolCall,
    check_base_url,
    config_error,
    sdk_errors,
)

ANTHROPIC_BASE_URL = "https://api.anthropic.com"
# The messages API requires max_tokens; used when neither the request nor the agent sets one.
DEFAULT_MAX_TOKENS = 4096
JSON_INSTRUCTION = (
    "Answer with a single JSON value that conforms to the JSON schema below. Output only the "
    "JSON: no prose, no Markdown code fences.\n\nSchema:\n{schema}"
)


class AnthropicProvider:
    name = "anthropic"
    label = "Anthropic"

    def __init__(self, config: ProviderConfig) -> None:
        if not config.api_key:
            raise config_error("An Anthropic agent needs an API key.", provider=self.name)
        self.config = config

    def chat(self, request: ChatRequest, on_delta: OnDelta | None = None) -> ChatResponse:
        """The model's answer; with `on_delta`, streamed, each text piece handed to `on_delta`
        as it arrives and the answer (text, tool uses, usage) the SDK's assembled message."""
        config = self.config
        params = self._params(request)
        # Key and base URL are always explicit: the SDK would otherwise fall back to the
        # worker's ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL environment variables.
        check_base_url(config.base_url, label=self.label, provider=self.name)
        client = anthropic.Anthropic(
            api_key=config.api_key,
            base_url=config.base_url or ANTHROPIC_BASE_URL,
            http_client=egress.sdk_http_client(timeout=config.timeout),
            max_retries=0,  # retries belong to the engine, which knows the step's policy
            timeout=config.timeout,
        )
        started = time.perf_counter()
        errors = sdk_errors(
            anthropic, anthropic.AnthropicError, label=self.label, config=config, provider=self.name
        )
        with errors, client:
            if on_delta is None:
                message = client.messages.create(**params)
            else:
                with client.messages.stream(**params) as stream:
                    for event in stream:
                        if event.type == "text" and event.text:
                            on_delta(event.text)
                    message = stream.get_final_message()
        latency_ms = (time.perf_counter() - started) * 1000
        return self._response(message, request, latency_ms)

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        system_parts = [m.content for m in request.messages if m.role == "system" and m.content]
        if request.response_format is not None:
            system_parts.append(JSON_INSTRUCTION.format(schema=_schema_text(request)))
        params: dict[str, Any] = {
            "model": request.model or self.config.model,
            "messages": _messages(request.messages),
            "max_tokens": request.max_tokens
            or self.config.settings.get("max_tokens")
            or DEFAULT_MAX_TOKENS,
        }
        if system_parts:
            params["system"] = "\n\n".join(system_parts)
        if request.tools:
            params["tools"] = [
                {
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.parameters or {"type": "object", "properties": {}},
                }
                for tool in request.tools
            ]
        # request.temperature is not sent: this SDK's messages API has no such parameter
        # (current Claude models fix their sampling).
        return params

    def _response(self, message: Any, request: ChatRequest, latency_ms: float) -> ChatResponse:
        texts: list[str] = []
        tool_calls: list[ToolCall] = []
        for block in message.content or []:
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_use":
                arguments = block.input if isinstance(block.input, dict) else None
                tool_calls.append(
                    ToolCall(
                        id=block.id,
                        name=block.name,
                        arguments=dict(arguments) if arguments is not None else None,
                        raw_arguments=json.dumps(block.input),
                    )
                )
        usage = message.usage
        return ChatResponse(
            content="".join(texts) if texts else None,
            tool_calls=tool_calls,
            input_tokens=(usage.input_tokens or 0) if usage else 0,
            output_tokens=(usage.output_tokens or 0) if usage else 0,
            model=message.model or request.model,
            finish_reason=message.stop_reason,
            latency_ms=latency_ms,
            provider=self.name,
        )


def _messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    """Anthropic's shape: tool results are `tool_result` blocks in a user turn, and consecutive
    turns of one role are merged (all results of one assistant turn must share a user turn)."""
    out: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        blocks: list[dict[str, Any]] = []
        if message.role == "tool":
            role = "user"
            blocks.append(
                {
                    "type": "tool_result",
                    "tool_use_id": message.tool_call_id or "",
                    "content": message.content or "",
                }
            )
        else:
            role = "assistant" if message.role == "assistant" else "user"
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            for attachment in message.attachments:
                if attachment.kind == "image":
                    source = {
                        "type": "base64",
                        "media_type": attachment.media_type,
                        "data": attachment.data,
                    }
                    blocks.append({"type": "image", "source": source})
                else:
                    blocks.append({"type": "text", "text": attachment.as_text()})
            for call in message.tool_calls:
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call.id,
                        "name": call.name,
                        # A call whose arguments were not a JSON object is replayed as empty;
                        # the tool result fed back explains the problem to the model.
                        "input": call.arguments if call.arguments is not None else {},
                    }
                )
        if not blocks:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


def _schema_text(request: ChatRequest) -> str:
    response_format = request.response_format or {}
    schema = response_format.get("json_schema", {}).get("schema")
    if schema is None:
        return '{"type": "object"}'
    return json.dumps(schema, indent=2, sort_keys=True)
