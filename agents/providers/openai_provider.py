"""OpenAI and OpenAI-compatible servers (vLLM, Ollama, LiteLLM, ...) through the official SDK's
chat completions API."""

from __future__ import annotations

import json
import time
from typing import Any

import openai

from sparkops import egress
from sparkops.errors import SparkOpsError

from .base import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    ProviderConfig,
    ProviderError,
    ToolCall,
    check_base_url,
    config_error,
    connection_error,
    parse_arguments,
    redact,
    status_error,
    timeout_error,
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

    def chat(self, request: ChatRequest) -> ChatResponse:
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
        try:
            with client:
                completion = client.chat.completions.create(**params)
        except openai.APITimeoutError as exc:
            raise timeout_error(self.label, config.timeout, provider=self.name) from exc
        except openai.APIConnectionError as exc:
            raise connection_error(self.label, exc, provider=self.name) from exc
        except openai.APIStatusError as exc:
            message = _error_message(exc.body) or exc.message
            raise status_error(
                self.label, exc.status_code, redact(message, config.api_key), provider=self.name
            ) from exc
        except ProviderError:
            raise
        except SparkOpsError as exc:  # the egress guard, raised through the SDK unwrapped
            raise connection_error(self.label, exc, provider=self.name) from exc
        except openai.OpenAIError as exc:
            raise ProviderError(
                f"{self.label} returned an unusable answer: {redact(str(exc), config.api_key)}",
                provider=self.name,
            ) from exc
        latency_ms = (time.perf_counter() - started) * 1000
        return self._response(completion, request, latency_ms)

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
    return {"role": message.role, "content": message.content or ""}


def _error_message(body: object) -> str:
    # The SDK hands over the body's "error" object when there is one.
    if isinstance(body, dict):
        message = body.get("message")
        if isinstance(message, str):
            return message
    elif isinstance(body, str):
        return body
    return ""
