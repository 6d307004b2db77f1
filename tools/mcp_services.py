"""MCP servers as tool sources: writes (the API and the admin call these; nothing else saves an
McpServer), discovery into numbered snapshots, and the tools they give agents and workflows.

A server's tool is called `<server>__<tool>` (an OpenAI function name) by agents, workflow
steps and policies; it is an McpTool, which the engine calls like any Tool (tools.services.
tool_execute: arguments validated against its input schema, then tools.executors.mcp)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from projects.models import Membership, Project, Role
from projects.secrets import SecretBag
from sparkops.audit import audit_record
from sparkops.egress import static_url_problem
from sparkops.errors import Conflict, Forbidden, InvalidInput, SparkOpsError

from . import mcp_client
from .models import McpServer, McpToolset, Tool

__all__ = [
    "SEPARATOR",
    "McpTool",
    "McpUnavailable",
    "mcp_server_clean",
    "mcp_server_create",
    "mcp_server_delete",
    "mcp_server_discover",
    "mcp_server_test",
    "mcp_server_update",
    "mcp_tool_named",
    "mcp_tools_of",
]

SEPARATOR = "__"
EDITABLE_FIELDS = frozenset(
    {
        "name",
        "description",
        "transport",
        "url",
        "command",
        "args",
        "headers",
        "enabled",
        "timeout_seconds",
    }
)
MAX_TIMEOUT = 300.0


class McpUnavailable(SparkOpsError):
    """The server could not be reached or answered with an error."""

    status_code = 502
    error_type = "mcp_unavailable"


@dataclass
class McpTool:
    """A tool of an MCP server's snapshot, shaped like a Tool for the engine and policies."""

    server: McpServer
    tool_name: str
    description: str
    parameters: dict[str, Any]
    tools_version: int
    kind: str = "mcp"
    status: str = Tool.Status.ACTIVE
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.server.name}{SEPARATOR}{self.tool_name}"

    @property
    def pk(self) -> str:
        return f"mcp:{self.server.pk}:{self.tool_name}"

    @property
    def event_fields(self) -> dict[str, Any]:
        """What a `tool.call` event adds: the server, its tool and the snapshot used."""
        return {
            "mcp_server": self.server.name,
            "mcp_server_id": self.server.pk,
            "mcp_tool": self.tool_name,
            "mcp_tools_version": self.tools_version,
        }


def _require_write(actor: Any, project: Project) -> None:
    if actor is not None and getattr(actor, "is_staff", False):
        return
    if not Membership.objects.has_role(actor, project, Role.DEVELOPER):
        raise Forbidden("Your role in this project does not allow changing its MCP servers.")


Add = Any  # (field, message) -> None


def _check_name(name: Any, add: Add) -> None:
    if not isinstance(name, str) or not re.fullmatch(McpServer.NAME_RE, name):
        add("name", "1-32 characters: lower-case letters, digits, '-' or '_', from a letter.")
    elif SEPARATOR in name:
        add("name", f"Cannot contain '{SEPARATOR}' (it separates server and tool names).")


def _check_stdio(clean: dict[str, Any], add: Add) -> None:
    allowed = stdio_allowed()
    if not allowed:
        add(
            "transport",
            "stdio MCP servers run commands on the workers and are not enabled on this "
            "installation (SPARKOPS_MCP_STDIO_COMMANDS is empty); use streamable_http or sse.",
        )
        return
    if clean.get("command") not in allowed:
        add("command", f"Not an allowed command; allowed: {', '.join(allowed)}.")
    args = clean.get("args")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        add("args", "Must be a list of strings.")
    if clean.get("url"):
        add("url", "A stdio server has no URL.")


def _check_target(clean: dict[str, Any], add: Add) -> None:
    transport, url = clean["transport"], clean.get("url")
    if clean.get("args") is None:
        clean["args"] = []
    clean.setdefault("command", "")
    if transport == McpServer.Transport.STDIO:
        _check_stdio(clean, add)
        return
    if transport not in McpServer.Transport.values:
        add("transport", "Must be one of: streamable_http, sse, stdio.")
    if clean.get("command") or clean.get("args"):
        add("command", "Only stdio servers have a command and args.")
    if not isinstance(url, str) or not url:
        add("url", "This field is required.")
    elif len(url) > 2000:
        add("url", "At most 2000 characters.")
    else:
        problem = static_url_problem(url)
        if problem:
            add("url", f"Refused: {problem}.")


def _check_headers(headers: Any, add: Add) -> None:
    if not isinstance(headers, dict):
        add("headers", "Must be a JSON object of header name to string value.")
        return
    for key, value in headers.items():
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}", key):
            add(f"headers.{key}", "Not a valid header name.")
        elif not isinstance(value, str) or "\n" in value or "\r" in value:
            add(f"headers.{key}", "Must be a string on one line.")


def mcp_server_clean(values: dict[str, Any]) -> dict[str, Any]:
    """A server's fields checked and normalised; InvalidInput names every bad field."""
    errors: dict[str, list[str]] = {}
    clean = dict(values)

    def add(name: str, message: str) -> None:
        errors.setdefault(name, []).append(message)

    _check_name(clean.get("name"), add)
    clean["transport"] = clean.get("transport") or McpServer.Transport.STREAMABLE_HTTP
    _check_target(clean, add)
    if clean.get("headers") is None:
        clean["headers"] = {}
    _check_headers(clean["headers"], add)
    if not isinstance(clean.get("description", ""), str):
        add("description", "Must be a string.")
    if not isinstance(clean.get("enabled", True), bool):
        add("enabled", "Must be a boolean.")
    timeout = clean.get("timeout_seconds", 30.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        add("timeout_seconds", "Must be a number.")
    elif not 0 < timeout <= MAX_TIMEOUT:
        add("timeout_seconds", f"Must be over 0 and at most {MAX_TIMEOUT:g}.")
    if errors:
        raise InvalidInput("Invalid MCP server.", errors=errors)
    return clean


def _refuse_unknown(fields: dict[str, Any]) -> None:
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(
            "Invalid input.",
            errors={name: ["This field cannot be set here."] for name in sorted(unknown)},
        )


def _name_taken(project: Project, name: str, exclude: int | None) -> None:
    taken = McpServer.objects.filter(project=project, name=name)
    if exclude is not None:
        taken = taken.exclude(pk=exclude)
    if taken.exists():
        raise Conflict(
            f"An MCP server named '{name}' already exists in this project.",
            errors={"name": ["An MCP server with this name already exists."]},
        )


def mcp_server_create(*, actor: Any, project: Project, **fields: Any) -> McpServer:
    """Save the server, then discover its tools (a failed discovery is kept on the server as
    `discovery_error`; `POST .../discover` tries again)."""
    _refuse_unknown(fields)
    _require_write(actor, project)
    cleaned = mcp_server_clean({"name": None, "url": "", **fields})
    with transaction.atomic():
        _name_taken(project, cleaned["name"], None)
        server = McpServer.objects.create(project=project, created_by=actor, **cleaned)
        audit_record(
            actor=actor, project=project, action="mcp_server.create", obj=server, changes=cleaned
        )
    if server.enabled:
        with contextlib.suppress(McpUnavailable):  # recorded on the server
            server = mcp_server_discover(server=server, actor=actor)
    return server


def mcp_server_update(*, server: McpServer, actor: Any, **fields: Any) -> McpServer:
    _refuse_unknown(fields)
    _require_write(actor, server.project)
    with transaction.atomic():
        locked = McpServer.objects.select_for_update().get(pk=server.pk)
        current = {name: getattr(locked, name) for name in EDITABLE_FIELDS}
        cleaned = mcp_server_clean({**current, **fields})
        changed = {k: v for k, v in cleaned.items() if current.get(k) != v}
        if "name" in changed:
            _name_taken(locked.project, cleaned["name"], locked.pk)
        if changed:
            for name, value in changed.items():
                setattr(locked, name, value)
            locked.save()
            audit_record(
                actor=actor,
                project=locked.project,
                action="mcp_server.update",
                obj=locked,
                changes=changed,
            )
    return locked


def mcp_server_delete(*, server: McpServer, actor: Any) -> None:
    _require_write(actor, server.project)
    with transaction.atomic():
        audit_record(actor=actor, project=server.project, action="mcp_server.delete", obj=server)
        server.delete()


def _timeout(server: McpServer) -> float:
    return float(min(server.timeout_seconds, MAX_TIMEOUT))


def _digest(tools: list[dict[str, Any]]) -> str:
    return hashlib.sha256(json.dumps(tools, sort_keys=True).encode()).hexdigest()


def mcp_server_discover(*, server: McpServer, actor: Any) -> McpServer:
    """List the server's tools now; a new numbered snapshot when they changed (runs name the
    number they used). Raises McpUnavailable (502) when the server cannot be listed."""
    _require_write(actor, server.project)
    try:
        tools = mcp_client.list_tools(server, SecretBag(server.project_id), _timeout(server))
    except mcp_client.McpFailure as exc:
        McpServer.objects.filter(pk=server.pk).update(discovery_error=exc.message[:2000])
        server.discovery_error = exc.message[:2000]
        raise McpUnavailable(exc.message) from exc
    tools.sort(key=lambda tool: tool["name"])
    digest = _digest(tools)
    with transaction.atomic():
        locked = McpServer.objects.select_for_update().get(pk=server.pk)
        latest = locked.toolsets.order_by("-number").first()
        changed = latest is None or latest.digest != digest
        if changed:
            number = (latest.number if latest else 0) + 1
            McpToolset.objects.create(server=locked, number=number, tools=tools, digest=digest)
            locked.tools_version = number
        audit_record(
            actor=actor,
            project=locked.project,
            action="mcp_server.discover",
            obj=locked,
            changes={
                "tools_version": locked.tools_version,
                "new_snapshot": changed,
                "tools": [t["name"] for t in tools],
            },
        )
        locked.discovered_at = timezone.now()
        locked.discovery_error = ""
        locked.save(update_fields=["tools_version", "discovered_at", "discovery_error"])
    return locked


def mcp_server_test(*, server: McpServer, actor: Any) -> dict[str, Any]:
    """Connect and list the tools without storing anything: {ok, tools, latency_ms, error}."""
    _require_write(actor, server.project)
    started = time.perf_counter()
    error: str | None
    try:
        tools = mcp_client.list_tools(server, SecretBag(server.project_id), _timeout(server))
    except mcp_client.McpFailure as exc:
        ok, names, error = False, [], exc.message
    else:
        ok, names, error = True, sorted(t["name"] for t in tools), None
    return {
        "ok": ok,
        "tools": names,
        "latency_ms": round((time.perf_counter() - started) * 1000.0, 2),
        "error": error,
    }


def _toolset(server: McpServer, as_of: Any = None) -> McpToolset | None:
    """The snapshot in use: the current one, or with `as_of` (a run's start) the newest one
    stored by then (the first one for a server discovered later)."""
    if not server.tools_version:
        return None
    if as_of is not None:
        pinned = server.toolsets.filter(created_at__lte=as_of).order_by("-number").first()
        if pinned is not None:
            return pinned
        return server.toolsets.order_by("number").first()
    return server.toolsets.filter(number=server.tools_version).first()


def _current_tools(server: McpServer) -> list[dict[str, Any]]:
    toolset = _toolset(server)
    return list(toolset.tools) if toolset else []


def _as_tool(server: McpServer, entry: dict[str, Any], number: int) -> McpTool:
    return McpTool(
        server=server,
        tool_name=entry["name"],
        description=entry.get("description") or "",
        parameters=entry.get("input_schema") or {"type": "object"},
        tools_version=number,
    )


def mcp_tool_named(project_id: Any, name: str, *, as_of: Any = None) -> McpTool | None:
    """The tool `<server>__<tool>` of an enabled server of the project, from its current
    snapshot or, with `as_of`, the one a run that started then uses."""
    if SEPARATOR not in name:
        return None
    server_name, tool_name = name.split(SEPARATOR, 1)
    server = McpServer.objects.filter(project_id=project_id, name=server_name, enabled=True).first()
    toolset = _toolset(server, as_of) if server is not None else None
    if server is None or toolset is None:
        return None
    for entry in toolset.tools:
        if entry["name"] == tool_name:
            return _as_tool(server, entry, toolset.number)
    return None


def mcp_tools_of(
    project_id: Any, attachments: list[dict[str, Any]], *, as_of: Any = None
) -> list[McpTool]:
    """An agent's MCP tools: for each `{"server": name, "tools": [names] | null}` (null: all),
    the enabled server's tools in its current snapshot whose full name is a valid tool name."""
    if not attachments:
        return []
    wanted = {a["server"]: a.get("tools") for a in attachments}
    found: list[McpTool] = []
    servers = McpServer.objects.filter(project_id=project_id, name__in=wanted, enabled=True)
    for server in servers:
        names = wanted[server.name]
        toolset = _toolset(server, as_of)
        if toolset is None:
            continue
        for entry in toolset.tools:
            if names is not None and entry["name"] not in names:
                continue
            tool = _as_tool(server, entry, toolset.number)
            if re.fullmatch(Tool.NAME_RE, tool.name):
                found.append(tool)
    return found


def check_attachments(project: Project, value: Any) -> list[str]:
    """Problems with an agent's `mcp_tools` value (for agents.services)."""
    if value is None:
        return []
    if not isinstance(value, list):
        return ['Must be a list of {"server": name, "tools": [names] or null}.']
    problems: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(value):
        if not isinstance(item, dict) or set(item) - {"server", "tools"}:
            problems.append(f'[{index}]: must be {{"server": name, "tools": [names] or null}}.')
            continue
        name = item.get("server")
        tools = item.get("tools")
        if not isinstance(name, str) or name in seen:
            problems.append(f"[{index}].server: a server name, once.")
            continue
        seen.add(name)
        server = McpServer.objects.filter(project=project, name=name).first()
        if server is None:
            problems.append(f"[{index}].server: no MCP server '{name}' in this project.")
            continue
        if tools is None:
            continue
        if not isinstance(tools, list) or not all(isinstance(t, str) for t in tools):
            problems.append(f"[{index}].tools: a list of tool names, or null for all.")
            continue
        known = {entry["name"] for entry in _current_tools(server)}
        unknown = [t for t in tools if t not in known]
        if unknown:
            problems.append(
                f"[{index}].tools: not tools of '{name}' (as last discovered): "
                + ", ".join(sorted(unknown))
                + "."
            )
    return problems


def stdio_allowed() -> list[str]:
    """The commands an operator allowed for stdio servers (none: stdio is off)."""
    return list(getattr(settings, "SPARKOPS_MCP_STDIO_COMMANDS", None) or [])
