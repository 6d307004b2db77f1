"""OpenAI and OpenAI-compatible servers (vLLM, Ollama, LiteLLM, ...) through the official SDK's
chat completions API."""

from __future__ import annotations

import json
import time
from typing import Any

import openai

from sparkops import egress

from .base import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    OnDelta,
    ProviderConfig,
    ProviderError,
    ToolCall,
    check_base_url,
    config_error,
    parse_arguments,
    sdk_errors,
)

OPENAI_BASE_URL = "https://api.openai.com/v1"
# Local OpenAI-compatible servers usually ignore the key, but the SDK insists on one.
PLACEHOLDER_API_KEY = "not-needed"


class OpenAIProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.name = config.provider
        self.label = "OpenAI" if config.provider == "openai" else "The OpenAI-compatible server"
        if config.provider == "openai":
            if not config.api_key:
                raise config_error("An OpenAI agent needs an API key.", provider=self.name)
        elif not config.base_url:
            raise config_error(
                "An OpenAI-compatible agent needs a base URL (e.g. http://host:8000/v1).",
                provider=self.name,
            )

    def chat(self, request: ChatRequest, on_delta: OnDelta | None = None) -> ChatResponse:
        """The model's answer; with `on_delta`, streamed, each text piece handed to `on_delta`
        as it arrives and the answer (text, tool calls, usage) assembled from the chunks."""
        config = self.config
        params = self._params(request)
        # Always pass key and base URL explicitly: the SDK would otherwise fall back to the
        # worker's OPENAI_API_KEY / OPENAI_BASE_URL environment variables.
        check_base_url(config.base_url, label=self.label, provider=self.name)
        client = openai.OpenAI(
            api_key=config.api_key or PLACEHOLDER_API_KEY,
            base_url=config.base_url or OPENAI_BASE_URL,
            organization=config.settings.get("organization"),
            project=config.settings.get("project"),
            http_client=egress.sdk_http_client(timeout=config.timeout),
            max_retries=0,  # retries belong to the engine, which knows the step's policy
            timeout=config.timeout,
        )
        started = time.perf_counter()
        errors = sdk_errors(
            openai, openai.OpenAIError, label=self.label, config=config, provider=self.name
        )
        with errors, client:
            if on_delta is None:
                completion = client.chat.completions.create(**params)
            else:
                return self._streamed(client, params, request, on_delta, started)
        latency_ms = (time.perf_counter() - started) * 1000
        return self._response(completion, request, latency_ms)

    def _streamed(
        self,
        client: openai.OpenAI,
        params: dict[str, Any],
        request: ChatRequest,
        on_delta: OnDelta,
        started: float,
    ) -> ChatResponse:
        texts: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        model = finish = None
        usage = None
        stream = client.chat.completions.create(
            **params, stream=True, stream_options={"include_usage": True}
        )
        with stream:
            for chunk in stream:
                model = chunk.model or model
                usage = chunk.usage or usage
                for choice in chunk.choices:
                    delta = choice.delta
                    finish = choice.finish_reason or finish
                    if delta.content:
                        texts.append(delta.content)
                        on_delta(delta.content)
                    for call in delta.tool_calls or []:
                        part = calls.setdefault(call.index, {"id": "", "name": "", "args": ""})
                        part["id"] = call.id or part["id"]
                        if call.function is not None:
                            part["name"] += call.function.name or ""
                            part["args"] += call.function.arguments or ""
        return ChatResponse(
            content="".join(texts) if texts else None,
            tool_calls=[
                ToolCall(
                    id=part["id"],
                    name=part["name"],
                    arguments=parse_arguments(part["args"]),
                    raw_arguments=part["args"],
                )
                for _, part in sorted(calls.items())
            ],
            input_tokens=(usage.prompt_tokens or 0) if usage else 0,
            output_tokens=(usage.completion_tokens or 0) if usage else 0,
            model=model or request.model,
            finish_reason=finish,
            latency_ms=(time.perf_counter() - started) * 1000,
            provider=self.name,
        )

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": request.model or self.config.model,
            "messages": [_message(m) for m in request.messages],
        }
        if request.tools:
            params["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters or {"type": "object", "properties": {}},
                    },
                }
                for tool in request.tools
            ]
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.max_tokens is not None:
            # OpenAI's newer models refuse `max_tokens`; most compatible servers only know it.
            default = "max_completion_tokens" if self.name == "openai" else "max_tokens"
            params[self.config.settings.get("max_tokens_param", default)] = request.max_tokens
        if request.response_format is not None:
            params["response_format"] = request.response_format
        return params

    def _response(self, completion: Any, request: ChatRequest, latency_ms: float) -> ChatResponse:
        if not completion.choices:
            raise ProviderError(f"{self.label} answered without any choice.", provider=self.name)
        choice = completion.choices[0]
        message = choice.message
        tool_calls = [
            ToolCall(
                id=call.id,
                name=call.function.name,
                arguments=parse_arguments(call.function.arguments),
                raw_arguments=call.function.arguments or "",
            )
            for call in message.tool_calls or []
            if getattr(call, "type", "function") == "function"
        ]
        usage = completion.usage
        return ChatResponse(
            content=message.content,
            tool_calls=tool_calls,
            input_tokens=(usage.prompt_tokens or 0) if usage else 0,
            output_tokens=(usage.completion_tokens or 0) if usage else 0,
            model=completion.model or request.model,
            finish_reason=choice.finish_reason,
            latency_ms=latency_ms,
            provider=self.name,
        )


def _message(message: ChatMessage) -> dict[str, Any]:
    if message.role == "tool":
        return {
            "role": "tool",
            "tool_call_id": message.tool_call_id or "",
            "content": message.content or "",
        }
    if message.role == "assistant" and message.tool_calls:
        return {
            "role": "assistant",
            "content": message.content,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": call.raw_arguments or json.dumps(call.arguments or {}),
                    },
                }
                for call in message.tool_calls
            ],
        }
    if message.attachments:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content or ""}]
        for attachment in message.attachments:
            if attachment.kind == "image":
                url = f"data:{attachment.media_type};base64,{attachment.data}"
                parts.append({"type": "image_url", "image_url": {"url": url}})
            else:
                parts.append({"type": "text", "text": attachment.as_text()})
        return {"role": message.role, "content": parts}
    return {"role": message.role, "content": message.content or ""}
