"""A project's workflows as MCP tools: `POST /api/v1/projects/{id}/mcp` (runs/triggers/views.py)
speaks the Model Context Protocol's streamable HTTP transport, stateless, with JSON responses.

The protocol itself is the official SDK's (`mcp`): a low-level `Server` whose handlers are
built per request for the caller and the project, under the SDK's own
`StreamableHTTPSessionManager`, which this module drives from the Django view through a
one-request ASGI bridge (`serve`). So both protocol eras the SDK speaks (the `initialize`
handshake of 2024-11-05…2025-11-25 and the per-request envelope of 2026-07-28) work, under
`make run`'s gunicorn (WSGI, threads) and Django's test client alike, with the API's own
authentication, project scoping, throttles and error bodies in front.

Each active workflow (not paused, not archived) is a tool named by its slug; `get_run` reads a
run. Calling a workflow starts a run through `runs.services.run_create` (trigger `mcp`: run-start
policies, budgets and audit apply as to any run) and answers its output if it ends within
SPARKOPS_MCP_WAIT seconds, else its id and the URLs to follow it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import mcp.types as types
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.urls import reverse
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError

from policies.enforcement import RunStartRefused
from projects.models import Membership, Project, Role
from runs.models import Run
from runs.services import run_create, run_create_idempotent
from sparkops.errors import SparkOpsError
from workflows.models import Workflow

from .hooks import run_wait

GET_RUN = "get_run"
# A workflow whose slug is taken by a built-in tool is served under this prefix (a slug has no
# dots, so the name cannot be another workflow's).
SHADOWED_PREFIX = "workflow."
# Per call, in the request's `_meta` (or, for the whole request, the Idempotency-Key header).
IDEMPOTENCY_META = "io.sparkops/idempotency-key"
# Per call, in `_meta`: seconds to wait for the run (from 0, capped by SPARKOPS_MCP_WAIT).
WAIT_META = "io.sparkops/wait"
SERVABLE = (Workflow.Status.DRAFT, Workflow.Status.ACTIVE)

GET_RUN_TOOL = types.Tool(
    name=GET_RUN,
    description="A run of this project started by a workflow tool: its status, output and "
    "error (null until it ends), and the URLs of the run and of its event stream.",
    input_schema={
        "type": "object",
        "properties": {"run_id": {"type": "string", "description": "The run's id."}},
        "required": ["run_id"],
        "additionalProperties": False,
    },
)


def tool_name(workflow: Workflow) -> str:
    return SHADOWED_PREFIX + workflow.slug if workflow.slug == GET_RUN else workflow.slug


def _slug_of(name: str) -> str:
    return name.removeprefix(SHADOWED_PREFIX) if name == SHADOWED_PREFIX + GET_RUN else name


def _input_schema(workflow: Workflow) -> dict[str, Any]:
    """The workflow's input schema; a tool's must be an object schema, as a run's input is."""
    definition = workflow.definition if isinstance(workflow.definition, dict) else {}
    schema = definition.get("input_schema")
    if not isinstance(schema, dict) or not schema:
        return {"type": "object"}
    return schema if schema.get("type") == "object" else {"type": "object", **schema}


@dataclass
class Caller:
    """Who calls, in which project, and how URLs are made absolute (the DRF request's host)."""

    user: Any
    project: Project
    absolute: Callable[[str], str]
    idempotency_key: str | None = None

    def tools(self) -> list[types.Tool]:
        # One query: the input schema is the workflow's current definition (its version's).
        workflows = Workflow.objects.filter(project=self.project, status__in=SERVABLE).only(
            "slug", "name", "description", "definition"
        )
        listed = [
            types.Tool(
                name=tool_name(workflow),
                title=workflow.name,
                description=workflow.description or f"Run the workflow {workflow.name!r}.",
                input_schema=_input_schema(workflow),
            )
            for workflow in workflows.order_by("slug")
        ]
        return [*listed, GET_RUN_TOOL]

    def _links(self, run_id: Any) -> dict[str, str]:
        return {
            "url": self.absolute(reverse("run-detail", kwargs={"pk": run_id})),
            "stream": self.absolute(reverse("run-stream", kwargs={"pk": run_id})),
        }

    def call_workflow(
        self, name: str, arguments: dict[str, Any], meta: Mapping[str, Any]
    ) -> types.CallToolResult:
        workflow = Workflow.objects.select_related("project").filter(
            project=self.project, slug=_slug_of(name), status__in=SERVABLE
        )
        found = workflow.first()
        if found is None:
            raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")
        if not Membership.objects.has_role(self.user, self.project, Role.DEVELOPER):
            return _error("permission_denied", "Your role in this project does not allow runs.")
        key = meta.get(IDEMPOTENCY_META) or self.idempotency_key
        if key is not None and not isinstance(key, str):
            return _error("validation_error", f"{IDEMPOTENCY_META} must be a string.")
        wait = _wait_of(meta.get(WAIT_META))
        if wait is None:
            return _error("validation_error", f"{WAIT_META} must be a number of seconds from 0.")
        try:
            if key:
                run, _, replayed = run_create_idempotent(
                    key=key,
                    body={"tool": name, "arguments": arguments},
                    actor=self.user,
                    workflow=found,
                    render=lambda run: {"run": str(run.pk)},
                    input=arguments,
                    trigger=Run.Trigger.MCP,
                )
            else:
                run = run_create(
                    workflow=found, input=arguments, actor=self.user, trigger=Run.Trigger.MCP
                )
                replayed = False
        except RunStartRefused as refused:
            return _error(refused.error_type, refused.detail, refused.errors, **refused.extra)
        except SparkOpsError as exc:  # bad input, paused workflow, archived project, reused key
            return _error(exc.error_type, exc.detail, exc.errors, **exc.extra)
        answer: dict[str, Any] = {"run": str(run.pk), "status": run.status, "replayed": replayed}
        answer.update(self._links(run.pk))
        ended = run_wait(run_id=run.pk, seconds=wait)
        if ended is None:
            answer["status"] = Run.objects.filter(pk=run.pk).values_list("status", flat=True)[0]
            answer["next"] = f"The run goes on: call {GET_RUN} with run_id, or follow the stream."
            return _result(answer)
        answer.update(ended)
        return _result(answer, is_error=ended["status"] != Run.Status.SUCCEEDED)

    def get_run(self, arguments: dict[str, Any]) -> types.CallToolResult:
        raw = arguments.get("run_id")
        try:
            run_id = uuid.UUID(str(raw))
        except ValueError:
            return _error("validation_error", "run_id must be a run's id (a UUID).")
        row = (
            Run.objects.filter(project=self.project, pk=run_id)
            .values("status", "output", "error", "workflow__slug")
            .first()
        )
        if row is None:
            return _error("not_found", "No such run in this project.")
        answer = {
            "run": str(run_id),
            "workflow": row["workflow__slug"],
            "status": row["status"],
            "output": row["output"],
            "error": row["error"],
        }
        answer.update(self._links(run_id))
        return _result(answer)


def _wait_of(raw: Any) -> float | None:
    limit = float(settings.SPARKOPS_MCP_WAIT)
    if raw is None:
        return limit
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw < float("inf"):
        return None
    return min(float(raw), limit)


def _result(answer: dict[str, Any], *, is_error: bool = False) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(text=json.dumps(answer, default=str))],
        structured_content=json.loads(json.dumps(answer, default=str)),
        is_error=is_error,
    )


def _error(error_type: str, detail: Any, errors: Any = None, **extra: Any) -> types.CallToolResult:
    """A tool error the model can read: the API's error body (`type`, `detail`, `errors`)."""
    body = {"type": error_type, "detail": detail, **extra}
    if errors:
        body["errors"] = errors
    return _result(body, is_error=True)


def build_server(caller: Caller) -> Server[Any]:
    async def list_tools(
        ctx: Any, params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        # thread_sensitive: back on the request's own thread (and its database connection).
        tools = await sync_to_async(caller.tools, thread_sensitive=True)()
        return types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = params.arguments or {}
        if params.name == GET_RUN:
            return await sync_to_async(caller.get_run, thread_sensitive=True)(arguments)
        meta = dict(ctx.meta or {})
        return await sync_to_async(caller.call_workflow, thread_sensitive=True)(
            params.name, arguments, meta
        )

    return Server(
        "spark-ops",
        version="1",
        title=f"Spark-Ops: {caller.project.name}",
        instructions="Each tool runs a workflow of this project; get_run follows a run.",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def serve(
    caller: Caller, *, method: str, path: str, headers: Mapping[str, str], body: bytes
) -> Answer:
    """One HTTP exchange with the SDK's stateless streamable-HTTP handler, from a sync view.
    Runs an event loop for the request (asgiref); the handlers' database work comes back to
    the calling thread."""
    return async_to_sync(_serve)(caller, method, path, headers, body)


async def _serve(
    caller: Caller, method: str, path: str, headers: Mapping[str, str], body: bytes
) -> Answer:
    manager = StreamableHTTPSessionManager(build_server(caller), stateless=True, json_response=True)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
        "client": ("127.0.0.1", 0),
        "server": ("127.0.0.1", 80),
    }
    answer = Answer(500, [], b"")
    delivered = False
    finished = anyio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: Mapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = [
                (k.decode("latin-1"), v.decode("latin-1")) for k, v in message.get("headers", [])
            ]
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")
            if not message.get("more_body"):
                finished.set()

    async with manager.run():
        await manager.handle_request(scope, receive, send)
    finished.set()
    return answer
