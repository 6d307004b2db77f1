"""An agent step: the tool-calling loop.

system prompt + rendered prompt → model → for each tool call: validate the arguments against
the tool's JSON Schema (an invalid call is reported back to the model, not crashed on),
execute, feed the result back → until a final answer or `max_iterations`. Each model call is
charged and logged once (runs.services.usage.usage_record); each tool call is logged.

A call that an enforced `tool_requires_approval` policy holds pauses the step: the loop is
saved on it (`RunStep.state`: the conversation, the iteration, the calls of the iteration still
to make, the approved calls) and the worker is released. Approving re-queues the step; the
next attempt resumes from the saved loop without asking the model again, with that one call
approved (runs.services.step_decide). Approval is per call: the same tool asked for later
pauses again."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import asdict
from decimal import Decimal
from itertools import count
from typing import Any

from agents.attachments import attachment_for
from agents.models import Agent
from agents.pricing import price_for
from agents.providers import (
    Attachment,
    ChatMessage,
    ChatRequest,
    ProviderError,
    ToolCall,
    ToolSpec,
    get_provider,
)
from agents.services import agent_provider_config, agent_streams
from projects.files import file_ref
from projects.models import File
from runs import deltas, observability
from runs.models import RunEvent, RunStep
from runs.services import policy_hooks
from runs.services.usage import usage_record
from sparkops.db import release_connection
from sparkops.errors import InvalidInput, SparkOpsError
from tools.mcp_services import mcp_tools_of

from .checkpoint import Checkpoint
from .errors import PauseForApproval, StepError
from .toolcalls import call_tool, render

TOOL_RESULT_LIMIT = 20_000


def run_agent(
    *, step: RunStep, node: dict[str, Any], checkpoint: Checkpoint, context: dict[str, Any]
) -> Any:
    # The prompt's content rules and the first call's checks are one moment: the project's
    # policies are read once for them. Every later call (after a model or tool wait) reads
    # them afresh, as do tool calls.
    with contextlib.ExitStack() as before_first_call:
        before_first_call.enter_context(policy_hooks.cached())
        return _run_agent(step, node, checkpoint, context, before_first_call)


def _run_agent(
    step: RunStep,
    node: dict[str, Any],
    checkpoint: Checkpoint,
    context: dict[str, Any],
    before_first_call: contextlib.ExitStack,
) -> Any:
    agent = Agent.objects.filter(project=step.run.project, slug=node["agent"]).first()
    if agent is None or agent.status != Agent.Status.ACTIVE:
        raise StepError("agent_unavailable", f"Agent '{node['agent']}' is missing or disabled.")
    tools: dict[str, Any] = {tool.name: tool for tool in agent.tools.filter(status="active")}
    for mcp_tool in mcp_tools_of(agent.project_id, agent.mcp_tools, as_of=step.run.created_at):
        tools.setdefault(mcp_tool.name, mcp_tool)
    prompt = render(node.get("prompt", ""), context, "the prompt")
    if not isinstance(prompt, str):
        prompt = json.dumps(prompt, default=str)
    system = agent.system_prompt
    if node.get("system_prompt"):
        system = render(node["system_prompt"], context, "the system prompt")
    prompt = policy_hooks.on_prompt(step=step, agent=agent, text=prompt)
    system = policy_hooks.on_prompt(step=step, agent=agent, text=system) if system else system
    files = _files(step, render(node.get("files") or [], context, "the files"))
    attachments = _attachments(step, agent, files)
    recorded: dict[str, Any] = {"prompt": prompt, "system_prompt": system}
    if files:
        recorded["files"] = [file_ref(file) for file in files]
    checkpoint.record_input(recorded)

    try:
        config = agent_provider_config(agent=agent, secrets=checkpoint.secrets)
    except SparkOpsError as exc:
        raise StepError(exc.error_type, str(exc.detail)) from exc
    streams = agent_streams(agent)
    call_timeout = config.timeout
    provider = get_provider(config)
    response_format = None
    if agent.response_format:
        response_format = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": agent.response_format},
        }
    messages = [ChatMessage(role="system", content=system)] if system else []
    messages.append(ChatMessage(role="user", content=prompt, attachments=attachments))
    head = len(messages)
    specs = [
        ToolSpec(t.name, t.description, t.parameters or {"type": "object"}) for t in tools.values()
    ]
    # Resuming after an approval: the prompt is rendered afresh above (secrets are redacted in
    # the saved copy); the rest of the conversation and the iteration's calls come back saved.
    start = 1
    todo: list[ToolCall] = []  # calls of the iteration still to make
    approved: list[str] = []  # keys of the calls a person approved
    saved = step.state
    if saved:
        messages += [_message(m) for m in saved["messages"][saved["head"] :]]
        start = saved["iteration"]
        todo = [ToolCall(**call) for call in saved["calls"]]
        approved = list(saved.get("approved") or [])

    for iteration in range(start, agent.max_iterations + 1):
        checkpoint()
        if todo:  # the calls of a paused iteration: its model call is answered and charged
            before_first_call.close()
            _call_tools(step, checkpoint, tools, messages, head, iteration, todo, approved)
            continue
        # The provider reads this at each call: never wait past the step's own timeout.
        config.timeout = max(min(call_timeout, checkpoint.remaining()), 0.1)
        request = ChatRequest(
            model=agent.model,
            messages=messages,
            tools=specs,
            temperature=agent.temperature,
            max_tokens=agent.max_tokens,
            response_format=response_format,
        )
        policy_hooks.before_model_call(step=step, agent=agent, request=request)
        before_first_call.close()
        release_connection()  # no connection held while the model thinks (sparkops.db)
        checkpoint.calls += 1
        try:
            with observability.model_call(agent.provider, request) as call:
                on_delta = _publisher(step, checkpoint, iteration) if streams else None
                response = call.done(provider.chat(request, on_delta=on_delta))
        except ProviderError as exc:
            checkpoint()  # a call cut short by the step's timeout is a step timeout
            raise StepError(
                exc.error_type,
                str(exc.detail),
                retryable=exc.retryable,
                provider=agent.provider,
                **provider_details(exc),
            ) from exc
        price = price_for(
            agent.provider, response.model or agent.model, project_id=agent.project_id
        )
        cost = price.cost(response.input_tokens, response.output_tokens) if price else Decimal(0)
        usage_record(
            step=step,
            attempt=checkpoint.attempt,
            input_tokens=response.input_tokens,
            output_tokens=response.output_tokens,
            cost=cost,
            event={
                "type": RunEvent.Type.LLM_CALL,
                "payload": {
                    "provider": agent.provider,
                    "model": response.model or agent.model,
                    "iteration": iteration,
                    "input_tokens": response.input_tokens,
                    "output_tokens": response.output_tokens,
                    "cost": str(cost),
                    "price_unknown": price is None,
                    "latency_ms": round(response.latency_ms, 2),
                    "finish_reason": response.finish_reason,
                    "tool_calls": [call.name for call in response.tool_calls],
                },
            },
        )
        response.content = policy_hooks.on_model_output(
            step=step, agent=agent, content=response.content
        )
        if not response.tool_calls:
            return _final_output(agent, response.content)
        messages.append(
            ChatMessage(role="assistant", content=response.content, tool_calls=response.tool_calls)
        )
        todo = list(response.tool_calls)
        _call_tools(step, checkpoint, tools, messages, head, iteration, todo, approved)
    raise StepError(
        "max_iterations",
        f"The agent did not give a final answer within {agent.max_iterations} iterations.",
    )


def _files(step: RunStep, rendered: Any) -> list[File]:
    """The files the rendered `files` of the node name, in order: each item a file reference
    (`{"file": "<id>", ...}`: a file input, a step's file output) or a list of them; null
    items are skipped (an optional input left out). The files must be the run's project's."""
    refs: list[Any] = []
    for item in rendered if isinstance(rendered, list) else [rendered]:
        refs.extend(item if isinstance(item, list) else [item])
    ids: list[uuid.UUID] = []
    for ref in refs:
        if ref is None:
            continue
        try:
            ids.append(uuid.UUID(str(ref["file"])))
        except (TypeError, KeyError, ValueError):
            shown = json.dumps(ref, default=str)[:200]
            raise StepError(
                "invalid_file", f"The files of the node must be file references, not {shown}."
            ) from None
    found = File.objects.filter(pk__in=ids, project_id=step.run.project_id).in_bulk()
    missing = [str(key) for key in ids if key not in found]
    if missing:
        raise StepError("file_not_found", f"No file {missing[0]!r} in this project.")
    return [found[key] for key in ids]


def _attachments(step: RunStep, agent: Agent, files: list[File]) -> list[Attachment]:
    """What the model is sent of each file; text goes through the prompt's content rules."""
    attachments = []
    for file in files:
        try:
            attachment = attachment_for(file)
        except InvalidInput as exc:
            raise StepError("unreadable_file", str(exc.detail)) from exc
        if attachment.kind == "text":
            attachment.text = policy_hooks.on_prompt(step=step, agent=agent, text=attachment.text)
        attachments.append(attachment)
    return attachments


def _publisher(step: RunStep, checkpoint: Checkpoint, iteration: int) -> Callable[[str], None]:
    """Hands each piece of the model's streamed answer to the run's open event streams as an
    `llm.delta` event (runs.deltas: never a stored row)."""
    index = count()

    def on_delta(text: str) -> None:
        deltas.publish(
            step.run_id,
            {
                "run": step.run_id,
                "step": step.pk,
                "node_id": step.node_id,
                "attempt": checkpoint.attempt,
                "iteration": iteration,
                "index": next(index),
                "text": text,
            },
        )

    return on_delta


def _call_tools(
    step: RunStep,
    checkpoint: Checkpoint,
    tools: dict[str, Any],
    messages: list[ChatMessage],
    head: int,
    iteration: int,
    todo: list[ToolCall],
    approved: list[str],
) -> None:
    """Make the calls of one iteration in order, feeding each result back (`todo` empties as
    they are made). A call that needs an approval pauses the step: PauseForApproval."""
    while todo:
        call = todo[0]
        key = f"{iteration}:{call.id}"
        try:
            content = _tool_result(step, checkpoint, tools, call, iteration, key in approved)
        except policy_hooks.ToolApprovalRequired as held:
            if held.arguments != call.arguments:
                # Saved and shown is what the tool gets once approved (content rules applied);
                # the assistant message holds the same call object.
                call.arguments = held.arguments
                call.raw_arguments = json.dumps(held.arguments, default=str)
            arguments = checkpoint.secrets.redact(held.arguments)
            state = {
                "head": head,
                "messages": [_saved_message(m) for m in messages],
                "iteration": iteration,
                "calls": [asdict(c) for c in todo],
                "pending": {
                    "key": key,
                    "id": call.id,
                    "tool": call.name,
                    "arguments": arguments,
                    "message": held.reason,
                },
                "approved": approved,
            }
            raise PauseForApproval(
                state=checkpoint.secrets.redact(state),
                request={
                    "tool": call.name,
                    "arguments": arguments,
                    "iteration": iteration,
                    "call": call.id,
                    "message": held.reason,
                    "policy": True,
                },
            ) from held
        messages.append(
            ChatMessage(role="tool", tool_call_id=call.id, name=call.name, content=content)
        )
        todo.pop(0)


def _saved_message(message: ChatMessage) -> dict[str, Any]:
    saved = asdict(message)
    # Files are read again with the prompt on resume (the head of the conversation is rebuilt):
    # an image's bytes are not kept on the step.
    saved["attachments"] = []
    # Tool results already scanned before a model call keep their mark: not scanned twice.
    saved["checked"] = bool(getattr(message, "_policy_checked", False))
    return saved


def _message(saved: dict[str, Any]) -> ChatMessage:
    fields = dict(saved)
    checked = fields.pop("checked", False)
    fields["tool_calls"] = [ToolCall(**call) for call in fields.get("tool_calls") or []]
    message = ChatMessage(**fields)
    if checked:
        # A mark on the object, as policy_hooks sets it, not a field sent to a provider.
        message._policy_checked = True  # type: ignore[attr-defined]
    return message


def _tool_result(
    step: RunStep,
    checkpoint: Checkpoint,
    tools: dict[str, Any],
    call: Any,
    iteration: int,
    approved: bool,
) -> str:
    """The tool message fed back to the model; errors are reported to the model, not raised.
    A policy refusal fails the step; a call held for approval raises ToolApprovalRequired."""
    tool = tools.get(call.name)
    if tool is None:
        return json.dumps({"error": f"Unknown tool '{call.name}'. Available: {sorted(tools)}"})
    if call.arguments is None:
        return json.dumps(
            {"error": "The arguments are not a JSON object.", "raw": call.raw_arguments}
        )
    # Outside the try: a policy refusal fails the step instead of being told to the model.
    arguments = policy_hooks.before_tool_call(
        step=step, tool=tool, arguments=call.arguments, call_approved=approved
    )
    try:
        result = call_tool(
            step=step,
            checkpoint=checkpoint,
            tool=tool,
            arguments=arguments,
            idempotency_key=f"{step.run_id}:{step.node_id}:{iteration}:{call.id}",
            iteration=iteration,
        )
    except StepError as exc:  # invalid arguments: tell the model what was wrong
        if "policy" in exc.details:
            raise  # a policy refusal fails the step
        return json.dumps({"error": exc.message, "details": exc.details.get("errors")}, default=str)
    payload = result.output if result.ok else {"error": result.error, "status": result.http_status}
    text = payload if isinstance(payload, str) else json.dumps(payload, default=str)
    if len(text) > TOOL_RESULT_LIMIT:
        text = text[:TOOL_RESULT_LIMIT] + "…(truncated)"
    return checkpoint.secrets.redact(text)


def _final_output(agent: Agent, content: str | None) -> Any:
    text = content or ""
    if not agent.response_format:
        return {"text": text}
    cleaned = text.strip()
    if cleaned.startswith("```"):
        cleaned = cleaned.strip("`")
        cleaned = cleaned[cleaned.find("\n") + 1 :] if "\n" in cleaned else cleaned
    try:
        return json.loads(cleaned)
    except json.JSONDecodeError as exc:
        raise StepError(
            "invalid_json_output",
            f"The agent was asked for JSON but answered text that does not parse: {exc}",
            retryable=True,
        ) from exc


def provider_details(exc: ProviderError) -> dict[str, Any]:
    """What the retry policy reads off a provider's refusal: its HTTP status, whether it is a
    rate limit or server error (retried by default), and the wait it asked for."""
    details: dict[str, Any] = {}
    if exc.provider_status is not None:
        details["provider_status"] = exc.provider_status
    if exc.transient:
        details["transient"] = True
    if exc.retry_after is not None:
        details["retry_after"] = round(exc.retry_after, 3)
    return details
