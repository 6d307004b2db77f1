"""A deterministic provider for demos and tests: no key, no network.

`config.settings` picks the behaviour:

- `{"mode": "echo"}` (the default) answers `"Echo: <last user message>"`;
- `{"mode": "fixed", "reply": "..."}` always answers `reply`;
- `{"mode": "script", "turns": [{"tool_calls": [{"name": "add", "arguments": {"a": 1}}]},
  {"content": "The answer is {last_tool_result}"}]}` answers turn *i* where *i* is the number
  of assistant messages already in the conversation, so a tool-calling loop moves forward; the
  last turn repeats once the script runs out. A tool call may give `raw_arguments` (a string,
  e.g. invalid JSON) instead of `arguments`. Content may use `{last_tool_result}` (the latest
  tool message) and `{prompt}` (the first user message).

Token counts are an estimate (`len(text) // 4 + 1`) unless `input_tokens`/`output_tokens` are
set; `latency_ms` may be set too.
"""

from __future__ import annotations

import json

from .base import (
    ChatMessage,
    ChatRequest,
    ChatResponse,
    OnDelta,
    ProviderConfig,
    ToolCall,
    config_error,
    parse_arguments,
)

MODES = ("echo", "fixed", "script")


def estimate_tokens(text: str) -> int:
    return len(text) // 4 + 1


class SimulatedProvider:
    name = "simulated"

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.settings = config.settings or {}
        self.mode = self.settings.get("mode", "echo")
        if self.mode not in MODES:
            raise config_error(
                f"Unknown simulated mode {self.mode!r}; expected one of {', '.join(MODES)}.",
                provider=self.name,
            )
        if self.mode == "script" and not self.settings.get("turns"):
            raise config_error(
                "A scripted simulated agent needs a non-empty list of turns.", provider=self.name
            )

    def chat(self, request: ChatRequest, on_delta: OnDelta | None = None) -> ChatResponse:
        content, tool_calls = self._reply(request.messages)
        if on_delta is not None and content:
            on_delta(content)  # a simulated answer arrives in one piece
        output_text = (content or "") + "".join(c.name + c.raw_arguments for c in tool_calls)
        return ChatResponse(
            content=content,
            tool_calls=tool_calls,
            input_tokens=int(
                self.settings.get("input_tokens", estimate_tokens(_conversation_text(request)))
            ),
            output_tokens=int(self.settings.get("output_tokens", estimate_tokens(output_text))),
            model=request.model or self.config.model or "simulated",
            finish_reason="tool_calls" if tool_calls else "stop",
            latency_ms=float(self.settings.get("latency_ms", 0.0)),
            provider=self.name,
        )

    def _reply(self, messages: list[ChatMessage]) -> tuple[str | None, list[ToolCall]]:
        if self.mode == "fixed":
            return str(self.settings.get("reply", "")), []
        if self.mode == "echo":
            last_user = next((m.content for m in reversed(messages) if m.role == "user"), None)
            return f"Echo: {last_user or ''}", []

        turns = self.settings["turns"]
        index = sum(1 for m in messages if m.role == "assistant")
        turn = turns[min(index, len(turns) - 1)]
        content = turn.get("content")
        if content is not None:
            content = _fill(str(content), messages)
        tool_calls = []
        for position, call in enumerate(turn.get("tool_calls") or []):
            if "raw_arguments" in call:
                raw = str(call["raw_arguments"])
            else:
                raw = json.dumps(call.get("arguments") or {}, sort_keys=True)
            tool_calls.append(
                ToolCall(
                    id=str(call.get("id") or f"call_{index}_{position}"),
                    name=str(call["name"]),
                    arguments=parse_arguments(raw),
                    raw_arguments=raw,
                )
            )
        return content, tool_calls


def _fill(template: str, messages: list[ChatMessage]) -> str:
    # Plain replacement, not str.format: replies may contain JSON braces.
    last_tool = next((m.content for m in reversed(messages) if m.role == "tool"), None)
    prompt = next((m.content for m in messages if m.role == "user"), None)
    return template.replace("{last_tool_result}", last_tool or "").replace("{prompt}", prompt or "")


def _conversation_text(request: ChatRequest) -> str:
    parts: list[str] = []
    for message in request.messages:
        parts.append(message.content or "")
        parts.extend(call.name + call.raw_arguments for call in message.tool_calls)
    parts.extend(
        tool.name + tool.description + json.dumps(tool.parameters) for tool in request.tools
    )
    return "".join(parts)
