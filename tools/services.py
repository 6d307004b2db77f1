"""Writes for tools, and tool execution. The API, the admin and the run engine call these;
nothing else saves a Tool. Every save validates the tool (tools.schema) and records an
immutable ToolVersion when a versioned field changed.

Who may write: a developer (or above) of the tool's project, or staff. Global tools
(`is_global`, no project) are readable by everyone and writable by staff only."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction

from projects.models import Membership, Project, Role
from projects.secrets import SecretBag
from sparkops.audit import audit_record
from sparkops.errors import Conflict, Forbidden, InvalidInput
from sparkops.services import duplicate_as, object_update
from sparkops.versioning import version_record, version_restore_fields

from .executors import FileScope, ToolResult, execute
from .models import Tool
from .schema import clean_tool, validate_arguments

__all__ = [
    "ToolResult",
    "tool_create",
    "tool_delete",
    "tool_execute",
    "tool_invoke",
    "tool_rollback",
    "tool_update",
]

logger = logging.getLogger(__name__)

VERSIONED_FIELDS = ["name", "description", "parameters", "kind", "config", "status"]
EDITABLE_FIELDS = set(VERSIONED_FIELDS)


def _require_write(actor: Any, *, project: Project | None, is_global: bool) -> None:
    if actor is not None and getattr(actor, "is_staff", False):
        return
    if is_global:
        raise Forbidden("Only staff can create, change or delete global tools.")
    if project is None or not Membership.objects.has_role(actor, project, Role.DEVELOPER):
        raise Forbidden("Your role in this project does not allow changing its tools.")


def _require_unique_name(*, name: str, project: Project | None, exclude: int | None) -> None:
    taken = Tool.objects.filter(name=name, project=project)
    if exclude is not None:
        taken = taken.exclude(pk=exclude)
    if taken.exists():
        where = "this project" if project is not None else "the global tools"
        raise Conflict(
            f"A tool named '{name}' already exists in {where}.",
            errors={"name": ["A tool with this name already exists."]},
        )


def _name_conflict(tool: Tool) -> Callable[[], Conflict]:
    """A lost race on the unique name, as the same 409 as the check."""
    return lambda: Conflict(
        f"A tool named '{tool.name}' already exists.",
        errors={"name": ["A tool with this name already exists."]},
    )


def _refuse_unknown(fields: dict[str, Any]) -> None:
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(
            "Invalid input.",
            errors={name: ["This field cannot be set here."] for name in sorted(unknown)},
        )


@transaction.atomic
def tool_create(
    *, actor: Any, project: Project | None = None, is_global: bool = False, **fields: Any
) -> Tool:
    _refuse_unknown(fields)
    if is_global and project is not None:
        raise InvalidInput(
            "Invalid input.", errors={"project": ["A global tool belongs to no project."]}
        )
    if not is_global and project is None:
        raise InvalidInput(
            "Invalid input.",
            errors={"project": ["This field is required (or set is_global for a global tool)."]},
        )
    _require_write(actor, project=project, is_global=is_global)
    cleaned = clean_tool(**{"name": None, "kind": None, **fields})
    _require_unique_name(name=cleaned["name"], project=project, exclude=None)
    tool = Tool(project=project, is_global=is_global, created_by=actor, **cleaned)
    with duplicate_as(_name_conflict(tool)):
        tool.save()
    version_record(obj=tool, fields=VERSIONED_FIELDS, actor=actor)
    audit_record(actor=actor, project=project, action="tool.create", obj=tool, changes=cleaned)
    return tool


@transaction.atomic
def tool_update(*, tool: Tool, actor: Any, **fields: Any) -> Tool:
    """Change some of the versioned fields; an update that changes nothing writes nothing."""
    _refuse_unknown(fields)
    _require_write(actor, project=tool.project, is_global=tool.is_global)

    def clean(locked: Tool) -> dict[str, Any]:
        current = {name: getattr(locked, name) for name in VERSIONED_FIELDS}
        return _clean_renamed(locked, {**current, **fields})

    update = object_update(
        tool,
        actor=actor,
        clean=clean,
        versioned_fields=VERSIONED_FIELDS,
        conflict=_name_conflict(tool),
    )
    if update.changed:
        audit_record(
            actor=actor,
            project=tool.project,
            action="tool.update",
            obj=tool,
            changes=update.changed,
        )
    return tool


def _clean_renamed(tool: Tool, values: dict[str, Any]) -> dict[str, Any]:
    """`values` checked as the tool's new configuration, its name free in its scope."""
    cleaned = clean_tool(**values)
    if cleaned["name"] != tool.name:
        _require_unique_name(name=cleaned["name"], project=tool.project, exclude=tool.pk)
    return cleaned


@transaction.atomic
def tool_delete(*, tool: Tool, actor: Any) -> None:
    _require_write(actor, project=tool.project, is_global=tool.is_global)
    audit_record(actor=actor, project=tool.project, action="tool.delete", obj=tool)
    tool.delete()


@transaction.atomic
def tool_rollback(*, tool: Tool, actor: Any, version: int) -> Tool:
    """Make the tool what it was at `version`, as a NEW version (history is never rewritten)."""
    _require_write(actor, project=tool.project, is_global=tool.is_global)

    def clean(locked: Tool) -> dict[str, Any]:
        old = locked.versions.filter(number=version).first()
        if old is None:
            raise InvalidInput(
                "Invalid input.", errors={"version": [f"This tool has no version {version}."]}
            )
        current = {name: getattr(locked, name) for name in VERSIONED_FIELDS}
        restored = version_restore_fields(obj=locked, version=old, fields=VERSIONED_FIELDS)
        return _clean_renamed(locked, {**current, **restored})

    object_update(
        tool,
        actor=actor,
        clean=clean,
        only_changed=False,
        versioned_fields=VERSIONED_FIELDS,
        force_version=True,
        conflict=_name_conflict(tool),
    )
    audit_record(
        actor=actor,
        project=tool.project,
        action="tool.rollback",
        obj=tool,
        changes={"version": version},
    )
    return tool


def tool_execute(
    *,
    tool: Tool,
    arguments: dict[str, Any],
    secrets: SecretBag,
    idempotency_key: str | None = None,
    timeout: float | None = None,
    files: FileScope | None = None,
) -> ToolResult:
    """Run one call of `tool`. Raises InvalidInput (errors keyed `arguments.<path>`) when the
    arguments do not match the tool's parameters, and Conflict when the tool is disabled;
    everything that goes wrong while running it (refused target, HTTP error, bad expression)
    is a ToolResult with ok=False, `retryable` saying whether trying again may help. Output
    and error never contain a secret the call used (replaced by `***`)."""
    if tool.status != Tool.Status.ACTIVE:
        raise Conflict(f"Tool '{tool.name}' is disabled.")
    validate_arguments(tool.parameters, arguments)
    return execute(
        tool=tool,
        arguments=arguments,
        secrets=secrets,
        idempotency_key=idempotency_key,
        timeout=timeout,
        files=files,
    )


def tool_invoke(
    *,
    tool: Tool,
    actor: Any,
    project: Project | None,
    arguments: Any,
    idempotency_key: str | None = None,
) -> ToolResult:
    """A call made by a person (the API's invoke). Secrets come from the tool's project, or for
    a global tool from `project`, where the caller must be a developer or above."""
    if tool.is_global:
        if project is None:
            raise InvalidInput(
                "Invalid input.",
                errors={"project": ["Required for a global tool: its secrets come from it."]},
            )
        target = project
    else:
        if project is not None and project.pk != tool.project_id:
            raise InvalidInput(
                "Invalid input.", errors={"project": ["This tool belongs to another project."]}
            )
        target = tool.project
    if target is None or not Membership.objects.has_role(actor, target, Role.DEVELOPER):
        raise Forbidden("Your role in this project does not allow invoking tools.")
    result = tool_execute(
        tool=tool,
        arguments=arguments,
        secrets=SecretBag(target),
        idempotency_key=idempotency_key,
        files=FileScope(project=target, actor=actor),
    )
    logger.info(
        "tool invoked",
        extra={"tool": tool.pk, "project": str(target.pk), "ok": result.ok, "actor": str(actor.pk)},
    )
    return result
