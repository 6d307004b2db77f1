"""Writes for workflows. The API, the admin and later the run engine call these; nothing else
saves a Workflow. Every save validates the definition against the project (agents and tools it
may reference) and records an immutable WorkflowVersion when a versioned field changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.db import transaction
from django.utils.crypto import get_random_string
from django.utils.text import slugify
from jsonschema import Draft202012Validator

from accounts.models import User
from agents.models import Agent
from agents.services import VERSIONED_FIELDS as AGENT_FIELDS
from projects import services as project_services
from projects.models import Project
from sparkops.audit import audit_record
from sparkops.errors import Conflict, InvalidInput, NotFound
from sparkops.services import duplicate_as, object_update
from sparkops.versioning import version_record, version_restore_fields
from tools.mcp_services import mcp_tool_named
from tools.models import McpServer, McpToolset, Tool
from tools.schema import static_origin
from tools.services import VERSIONED_FIELDS as TOOL_FIELDS

from .definition import child_workflows, graph, validate_definition
from .models import Workflow, WorkflowVersion, default_retry_policy
from .schedules import schedules_sync_workflow

# What a version snapshots (and a run pins): the DAG and the run settings.
VERSIONED_FIELDS = ["definition", "timeout_seconds", "retry_policy"]
EDITABLE_FIELDS = frozenset(Workflow.EDITABLE_FIELDS)
MAX_TIMEOUT_SECONDS = 7 * 24 * 3600

RETRY_POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "Default retry policy of the workflow's steps (a node's `retry` overrides it). "
    "Missing keys take their defaults.",
    "additionalProperties": False,
    "properties": {
        "max_attempts": {"type": "integer", "minimum": 1, "maximum": 20, "default": 1},
        "backoff_seconds": {"type": "number", "minimum": 0, "maximum": 86400, "default": 2},
        "max_backoff_seconds": {"type": "number", "minimum": 0, "maximum": 86400, "default": 300},
    },
}
_retry_validator = Draft202012Validator(RETRY_POLICY_SCHEMA)


def _invalid(errors: dict[str, list[str]], detail: str = "Invalid input.") -> InvalidInput:
    return InvalidInput(detail, errors=errors)


def retry_policy_clean(policy: Any) -> dict[str, Any]:
    """The policy with defaults filled in; refuses unknown keys and out-of-range values with
    errors keyed `retry_policy.<key>`."""
    if not isinstance(policy, dict):
        raise _invalid({"retry_policy": ["Must be a JSON object."]})
    errors: dict[str, list[str]] = {}
    for error in _retry_validator.iter_errors(policy):
        path = ".".join(str(p) for p in error.absolute_path)
        errors.setdefault(f"retry_policy.{path}" if path else "retry_policy", []).append(
            error.message
        )
    if errors:
        raise _invalid(errors)
    cleaned = {**default_retry_policy(), **policy}
    if cleaned["max_backoff_seconds"] < cleaned["backoff_seconds"]:
        raise _invalid({"retry_policy.max_backoff_seconds": ["Must be at least backoff_seconds."]})
    return cleaned


def reference_checkers(project: Project) -> tuple[Callable[[str], bool], Callable[[str], bool]]:
    """What a project's workflow may reference: its own active agents, and its own or global
    active tools."""

    def agent_exists(slug: str) -> bool:
        return Agent.objects.filter(project=project, slug=slug, status="active").exists()

    def tool_exists(name: str) -> bool:
        if Tool.objects.usable_in(project).filter(name=name, status="active").exists():
            return True
        return mcp_tool_named(project.pk, name) is not None  # `<server>__<tool>`

    return agent_exists, tool_exists


def tool_host_checker(project: Project) -> Callable[[str], bool]:
    """Whether a tool usable in `project` is an HTTP tool whose URL takes its scheme or host
    from the arguments."""

    def host_from_args(name: str) -> bool:
        tool = Tool.objects.usable_in(project).filter(name=name, status="active").first()
        if tool is None or tool.kind != Tool.Kind.HTTP:
            return False
        url = (tool.config or {}).get("url")
        return isinstance(url, str) and static_origin(url) is None

    return host_from_args


def workflow_validate(*, project: Project, definition: Any) -> dict[str, Any]:
    """Validates a definition for `project` without saving; returns its graph. Raises
    InvalidInput with errors keyed by path (`definition.nodes[1].agent`)."""
    agent_exists, tool_exists = reference_checkers(project)
    validate_definition(
        definition,
        agent_exists=agent_exists,
        tool_exists=tool_exists,
        tool_host_from_args=tool_host_checker(project),
        workflow_exists=lambda slug: Workflow.objects.filter(project=project, slug=slug).exists(),
    )
    return graph(definition)


def workflow_cycle_check(*, project: Project, slug: str, definition: Any) -> None:
    """Refuse a definition that runs, as a child run, the workflow `slug` itself: directly or
    through the current definitions of the workflows it runs. InvalidInput names the node and
    the cycle (`a → b → a`). The run-time depth limit still stops what this cannot see."""
    definitions: dict[str, Any] = {}

    def runs(name: str) -> list[str]:
        if name not in definitions:
            row = Workflow.objects.filter(project=project, slug=name).values("definition").first()
            definitions[name] = row["definition"] if row else None
        return [child for _, child in child_workflows(definitions[name])]

    errors: dict[str, list[str]] = {}
    for where, first in child_workflows(definition):
        path = _path_to(slug, first, runs, set())
        if path is not None:
            cycle = " → ".join([slug, *path])
            errors.setdefault(where, []).append(
                f"Workflow {slug!r} would run itself as a child run: {cycle}."
            )
    if errors:
        raise _invalid(errors, "Invalid workflow definition.")


def _path_to(
    target: str, start: str, runs: Callable[[str], list[str]], seen: set[str]
) -> list[str] | None:
    """The chain of child workflows from `start` to `target` (both included), or None."""
    if start == target:
        return [start]
    if start in seen:
        return None
    seen.add(start)
    for child in runs(start):
        path = _path_to(target, child, runs, seen)
        if path is not None:
            return [start, *path]
    return None


def workflow_clean(*, project: Project, fields: dict[str, Any]) -> dict[str, Any]:
    """Checks the fields a create or update sets (the admin form calls this too, so both paths
    refuse the same things). Returns them cleaned (retry policy defaults filled in)."""
    cleaned = dict(fields)
    errors: dict[str, list[str]] = {}
    if "status" in cleaned and cleaned["status"] not in Workflow.Status.values:
        errors["status"] = [f"Must be one of: {', '.join(Workflow.Status.values)}."]
    timeout = cleaned.get("timeout_seconds")
    if "timeout_seconds" in cleaned and (
        not isinstance(timeout, int)
        or isinstance(timeout, bool)
        or not 1 <= timeout <= MAX_TIMEOUT_SECONDS
    ):
        errors["timeout_seconds"] = [f"Must be an integer from 1 to {MAX_TIMEOUT_SECONDS}."]
    limit = cleaned.get("max_concurrent_runs")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        errors["max_concurrent_runs"] = ["Must be a positive integer, or null for no limit."]
    if "triggers" in cleaned and not isinstance(cleaned["triggers"], dict):
        errors["triggers"] = ["Must be a JSON object."]
    # Every problem at once: fields, retry policy and definition.
    detail = "Invalid input."
    if "retry_policy" in cleaned:
        try:
            cleaned["retry_policy"] = retry_policy_clean(cleaned["retry_policy"])
        except InvalidInput as exc:
            errors.update(exc.errors or {})
    if "definition" in cleaned:
        try:
            workflow_validate(project=project, definition=cleaned["definition"])
        except InvalidInput as exc:
            errors.update(exc.errors or {})
            detail = exc.detail
    if errors:
        raise _invalid(errors, detail)
    return cleaned


def _unique_slug(project: Project, name: str) -> str:
    base = slugify(name)[:90].strip("-") or "workflow"
    slug = base
    while workflow_slug_taken(project, slug):
        slug = f"{base}-{get_random_string(6, 'abcdefghijklmnopqrstuvwxyz0123456789')}"
    return slug


def workflow_slug_taken(project: Project, slug: str, exclude_pk: Any = None) -> bool:
    return Workflow.objects.filter(project=project, slug=slug).exclude(pk=exclude_pk).exists()


def _slug_conflict() -> Conflict:
    return Conflict(
        "A workflow with this slug already exists in the project.", errors={"slug": ["Taken."]}
    )


@transaction.atomic
def workflow_create(
    *, actor: User | None, project: Project, name: str, definition: Any, **fields: Any
) -> Workflow:
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(f"Cannot set {', '.join(sorted(unknown))}.")
    fields = workflow_clean(project=project, fields={**fields, "definition": definition})
    slug = fields.pop("slug", None)
    if slug and workflow_slug_taken(project, slug):
        raise _slug_conflict()
    if slug:  # a new workflow's own slug is the only cycle it can close
        workflow_cycle_check(project=project, slug=slug, definition=definition)
    with duplicate_as(_slug_conflict):
        workflow = Workflow.objects.create(
            project=project,
            name=name,
            slug=slug or _unique_slug(project, name),
            created_by=actor,
            **fields,
        )
    version_record(obj=workflow, fields=VERSIONED_FIELDS, actor=actor)
    audit_record(
        actor=actor,
        project=project,
        action="workflow.create",
        obj=workflow,
        changes={"name": name, "slug": workflow.slug, "definition": definition, **fields},
    )
    return workflow


@transaction.atomic
def workflow_update(*, workflow: Workflow, actor: User | None, **fields: Any) -> Workflow:
    """Changes the given fields. The definition is validated whenever it is given, and also
    when the workflow becomes active (a workflow that cannot run must not be active); a status
    change to paused/draft/archived alone never validates, so operators can always stop one."""
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(f"Cannot change {', '.join(sorted(unknown))}.")

    def clean(locked: Workflow) -> dict[str, Any]:
        becomes_active = (
            fields.get("status") == Workflow.Status.ACTIVE
            and locked.status != Workflow.Status.ACTIVE
        )
        if becomes_active and "definition" not in fields:
            workflow_validate(project=locked.project, definition=locked.definition)
        cleaned = workflow_clean(project=locked.project, fields=fields)
        if cleaned.get("slug") == "":
            cleaned.pop("slug")
        slug = cleaned.get("slug")
        if slug and workflow_slug_taken(locked.project, slug, exclude_pk=locked.pk):
            raise _slug_conflict()
        if "definition" in cleaned or becomes_active:
            workflow_cycle_check(
                project=locked.project,
                slug=slug or locked.slug,
                definition=cleaned.get("definition", locked.definition),
            )
        return cleaned

    # Every given field is saved (and audited), changed or not; the row lock keeps the latest
    # version equal to the row under concurrent saves.
    update = object_update(
        workflow,
        actor=actor,
        clean=clean,
        only_changed=False,
        versioned_fields=VERSIONED_FIELDS,
        conflict=_slug_conflict,
        lock=Workflow.objects.select_for_update(of=("self",)).select_related("project"),
    )
    audit_record(
        actor=actor,
        project=workflow.project,
        action="workflow.update",
        obj=workflow,
        changes=update.changed,
    )
    if "status" in update.changed:
        schedules_sync_workflow(workflow)  # paused/archived: beat stops firing its schedules
    return workflow


def workflow_set_status(*, workflow: Workflow, actor: User | None, status: str) -> Workflow:
    return workflow_update(workflow=workflow, actor=actor, status=status)


@transaction.atomic
def workflow_rollback(*, workflow: Workflow, actor: User | None, version: int) -> Workflow:
    """Makes version `version` current again by writing a NEW version equal to it (history is
    never rewritten). The old definition is validated again: an agent or tool it names may
    have gone since. Rolling back to what is already current writes nothing."""
    target = workflow.versions.filter(number=version).first()
    if target is None:
        raise _invalid(
            {"version": [f"No version {version}; the latest is {workflow.version}."]},
            "Unknown version.",
        )
    values = version_restore_fields(obj=workflow, version=target, fields=VERSIONED_FIELDS)
    return workflow_update(workflow=workflow, actor=actor, **values)


@transaction.atomic
def workflow_delete(*, workflow: Workflow, actor: User | None) -> None:
    """Deletes the workflow with its versions and finished runs; refused while a run is in
    progress. Runs go first: a run protects the version it pinned from being deleted alone."""
    run_model = _run_model()
    if run_model is not None:
        runs = run_model.objects.filter(workflow=workflow)
        active = runs.active().count()
        if active:
            raise Conflict(
                f"The workflow has {active} run(s) in progress; cancel them first.",
                extra={"active_runs": active},
            )
        runs.delete()
    audit_record(actor=actor, project=workflow.project, action="workflow.delete", obj=workflow)
    workflow.delete()


def _run_model() -> Any:
    try:
        model = apps.get_model("runs", "Run")
    except LookupError:
        return None
    return model if any(f.name == "workflow" for f in model._meta.get_fields()) else None


def workflow_version_get(*, workflow: Workflow, number: int) -> WorkflowVersion:
    version = workflow.versions.filter(number=number).first()
    if version is None:
        raise NotFound(f"Workflow {workflow.pk} has no version {number}.")
    return version


def _nodes_by_id(definition: Any) -> dict[str, dict[str, Any]]:
    nodes = definition.get("nodes", []) if isinstance(definition, dict) else []
    return {n["id"]: n for n in nodes if isinstance(n, dict) and isinstance(n.get("id"), str)}


def workflow_diff(*, workflow: Workflow, from_number: int, to_number: int) -> dict[str, Any]:
    """What changed between two versions: nodes added/removed (by id), nodes changed with the
    keys that differ, top-level definition keys changed (input_schema, output, ...) and run
    settings changed (timeout_seconds, retry_policy)."""
    versions = {
        v.number: v.snapshot for v in workflow.versions.filter(number__in={from_number, to_number})
    }
    errors = {
        key: [f"No version {number}; the latest is {workflow.version}."]
        for key, number in (("from", from_number), ("to", to_number))
        if number not in versions
    }
    if errors:
        raise _invalid(errors, "Unknown version.")
    old, new = versions[from_number], versions[to_number]
    old_def = old.get("definition") or {}
    new_def = new.get("definition") or {}
    old_nodes, new_nodes = _nodes_by_id(old_def), _nodes_by_id(new_def)
    changed_nodes = []
    for node_id, node in new_nodes.items():
        before = old_nodes.get(node_id)
        if before is None or before == node:
            continue
        keys = sorted(k for k in set(before) | set(node) if before.get(k) != node.get(k))
        changed_nodes.append({"id": node_id, "keys": keys})
    top_keys = (set(old_def) | set(new_def)) - {"nodes"}
    return {
        "from_version": from_number,
        "to_version": to_number,
        "nodes": {
            "added": [i for i in new_nodes if i not in old_nodes],
            "removed": [i for i in old_nodes if i not in new_nodes],
            "changed": changed_nodes,
        },
        "changed_keys": sorted(k for k in top_keys if old_def.get(k) != new_def.get(k)),
        "changed_settings": sorted(
            k for k in VERSIONED_FIELDS if k != "definition" and old.get(k) != new.get(k)
        ),
    }


@transaction.atomic
def project_clone(*, project: Project, actor: User, name: str) -> Project:
    """Copy the project's tools, MCP servers, agents and workflows (already validated, so copied
    as they are, each with a fresh version 1) into a new project owned by `actor`. Secrets, runs and
    members are not copied; agents keep the *names* of the secrets they use, so adding those
    secrets to the new project makes them work. It copies tools, agents and workflows, so it
    lives here, at the highest of their layers."""
    clone = project_services.project_create(
        actor=actor,
        name=name,
        description=project.description,
        settings=project.settings,
        metadata={**project.metadata, "cloned_from": str(project.pk)},
    )
    tool_map: dict[int, Tool] = {}
    for tool in Tool.objects.filter(project=project):
        source_pk = tool.pk
        tool.pk = None
        tool.project = clone
        tool.created_by = actor
        tool.version = 1
        tool.save()
        version_record(obj=tool, fields=TOOL_FIELDS, actor=actor, force=True)
        tool_map[source_pk] = tool
    # MCP servers with their snapshots, so agents' `mcp_tools` and `<server>__<tool>` steps
    # still name tools (their headers keep secret *names*, like agents).
    for server in McpServer.objects.filter(project=project).prefetch_related("toolsets"):
        toolsets = list(server.toolsets.all())
        server.pk = None
        server.project = clone
        server.created_by = actor
        server.save()
        McpToolset.objects.bulk_create(
            McpToolset(server=server, number=t.number, tools=t.tools, digest=t.digest)
            for t in toolsets
        )
    for agent in Agent.objects.filter(project=project).prefetch_related("tools"):
        tools = [tool_map.get(t.pk, t) for t in agent.tools.all()]  # global tools stay as they are
        agent.pk = None
        agent.project = clone
        agent.created_by = actor
        agent.version = 1
        agent.save()
        agent.tools.set(tools)
        version_record(obj=agent, fields=AGENT_FIELDS, actor=actor, force=True)
    for workflow in Workflow.objects.filter(project=project):
        workflow.pk = None
        workflow.project = clone
        workflow.created_by = actor
        workflow.version = 1
        workflow.save()
        version_record(obj=workflow, fields=VERSIONED_FIELDS, actor=actor, force=True)
    audit_record(
        actor=actor,
        project=clone,
        action="project.clone",
        obj=clone,
        changes={"source": str(project.pk)},
    )
    return clone
