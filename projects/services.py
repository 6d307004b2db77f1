"""Writes for projects and memberships. Views, admin, commands and later apps call these."""

from __future__ import annotations

import secrets
from typing import Any

from django.apps import apps
from django.db import IntegrityError, transaction
from django.utils.text import slugify

from accounts.models import User
from policies.audit import audit_record
from sparkops.errors import Conflict, Forbidden, InvalidInput

from .models import Membership, Project, Role, role_at_least

# Models holding a project's content, counted before a delete (app label -> model). A model
# that does not exist yet is simply not counted.
PROJECT_CONTENT_MODELS = {
    "agents": "agents.Agent",
    "tools": "tools.Tool",
    "workflows": "workflows.Workflow",
    "runs": "runs.Run",
}
ACTIVE_RUN_STATUSES = ("pending", "queued", "running", "waiting_approval")


def _content_model(label: str) -> Any:
    try:
        return apps.get_model(label)
    except LookupError:
        return None


def unique_slug(name: str, *, model: Any = Project, field: str = "slug", **scope: Any) -> str:
    base = slugify(name)[:200] or "project"
    slug = base
    while model.objects.filter(**scope, **{field: slug}).exists():
        slug = f"{base}-{secrets.token_hex(3)}"
    return slug


@transaction.atomic
def project_create(*, actor: User, name: str, slug: str | None = None, **fields: Any) -> Project:
    if slug and Project.objects.filter(slug=slug).exists():
        raise Conflict("A project with this slug already exists.", errors={"slug": ["Taken."]})
    try:
        with transaction.atomic():
            project = Project.objects.create(
                name=name, slug=slug or unique_slug(name), owner=actor, **fields
            )
    except IntegrityError:
        raise Conflict(
            "A project with this slug already exists.", errors={"slug": ["Taken."]}
        ) from None
    Membership.objects.create(project=project, user=actor, role=Role.OWNER)
    audit_record(
        actor=actor,
        project=project,
        action="project.create",
        obj=project,
        changes={"name": name, "slug": project.slug, **fields},
    )
    return project


PROJECT_EDITABLE = {
    "name",
    "slug",
    "description",
    "status",
    "settings",
    "metadata",
    "is_public",
    "is_template",
}


@transaction.atomic
def project_update(*, project: Project, actor: User, **fields: Any) -> Project:
    unknown = set(fields) - PROJECT_EDITABLE
    if unknown:
        raise InvalidInput(f"Cannot change {', '.join(sorted(unknown))}.")
    slug = fields.get("slug")
    if slug and Project.objects.filter(slug=slug).exclude(pk=project.pk).exists():
        raise Conflict("A project with this slug already exists.", errors={"slug": ["Taken."]})
    for name, value in fields.items():
        setattr(project, name, value)
    project.save(update_fields=[*fields, "updated_at"])
    audit_record(actor=actor, project=project, action="project.update", obj=project, changes=fields)
    return project


def project_set_status(*, project: Project, actor: User, status: str) -> Project:
    return project_update(project=project, actor=actor, status=status)


def project_content_counts(*, project: Project) -> dict[str, int]:
    counts = {}
    for key, label in PROJECT_CONTENT_MODELS.items():
        model = _content_model(label)
        if model is not None:
            counts[key] = model.objects.filter(project=project).count()
    return counts


@transaction.atomic
def project_delete(*, project: Project, actor: User, cascade: bool = False) -> None:
    run_model = _content_model(PROJECT_CONTENT_MODELS["runs"])
    if run_model is not None:
        active = run_model.objects.filter(project=project, status__in=ACTIVE_RUN_STATUSES).count()
        if active:
            raise Conflict(
                f"The project has {active} run(s) in progress; cancel them first.",
                extra={"active_runs": active},
            )
    counts = project_content_counts(project=project)
    if any(counts.values()) and not cascade:
        raise Conflict(
            "The project still holds content; delete it first or pass ?cascade=true.",
            extra={"counts": counts},
        )
    if run_model is not None:
        # Runs pin workflow versions (PROTECT): they go first.
        run_model.objects.filter(project=project).delete()
    audit_record(
        actor=actor,
        project=project,
        action="project.delete",
        obj=project,
        changes={"cascade": cascade},
    )
    project.delete()


def _owner_count(project: Project) -> int:
    return Membership.objects.filter(project=project, role=Role.OWNER).count()


def _require_owner_for(actor_role: str | None, *roles: str) -> None:
    if Role.OWNER in roles and not role_at_least(actor_role, Role.OWNER):
        raise Forbidden("Only an owner can grant, change or remove the owner role.")


@transaction.atomic
def membership_add(*, project: Project, actor: User, email: str, role: str) -> Membership:
    _require_owner_for(Membership.objects.role_of(actor, project), role)
    user = User.objects.filter(email__iexact=email.strip()).first()
    if user is None:
        raise InvalidInput("Invalid input.", errors={"email": ["No user with this email address."]})
    try:
        with transaction.atomic():
            membership = Membership.objects.create(project=project, user=user, role=role)
    except IntegrityError:
        raise Conflict("This user is already a member of the project.") from None
    audit_record(
        actor=actor,
        project=project,
        action="member.add",
        obj=membership,
        changes={"email": user.email, "role": role},
    )
    return membership


@transaction.atomic
def membership_update(*, membership: Membership, actor: User, role: str) -> Membership:
    # Lock the project's memberships so two demotions cannot both pass the last-owner check.
    list(Membership.objects.select_for_update().filter(project_id=membership.project_id))
    membership.refresh_from_db()
    actor_role = Membership.objects.role_of(actor, membership.project)
    _require_owner_for(actor_role, role, membership.role)
    if (
        membership.role == Role.OWNER
        and role != Role.OWNER
        and _owner_count(membership.project) <= 1
    ):
        raise Conflict("A project must keep at least one owner.")
    membership.role = role
    membership.save(update_fields=["role", "updated_at"])
    audit_record(
        actor=actor,
        project=membership.project,
        action="member.update",
        obj=membership,
        changes={"email": membership.user.email, "role": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, membership: Membership, actor: User) -> None:
    list(Membership.objects.select_for_update().filter(project_id=membership.project_id))
    membership.refresh_from_db()
    _require_owner_for(Membership.objects.role_of(actor, membership.project), membership.role)
    if membership.role == Role.OWNER and _owner_count(membership.project) <= 1:
        raise Conflict("A project must keep at least one owner.")
    audit_record(
        actor=actor,
        project=membership.project,
        action="member.remove",
        obj=membership,
        changes={"email": membership.user.email, "role": membership.role},
    )
    membership.delete()


@transaction.atomic
def project_transfer(*, project: Project, actor: User, new_owner: User) -> Project:
    """Makes `new_owner` (who must already be a member) the owner of record; the previous owner
    stays an owner member so nobody is locked out."""
    membership = (
        Membership.objects.select_for_update().filter(project=project, user=new_owner).first()
    )
    if membership is None:
        raise InvalidInput(
            "Invalid input.", errors={"user": ["The new owner must already be a member."]}
        )
    if membership.role != Role.OWNER:
        membership.role = Role.OWNER
        membership.save(update_fields=["role", "updated_at"])
    project.owner = new_owner
    project.save(update_fields=["owner", "updated_at"])
    audit_record(
        actor=actor,
        project=project,
        action="project.transfer",
        obj=project,
        changes={"owner": new_owner.email},
    )
    return project


@transaction.atomic
def secret_set(
    *, project: Project, actor: User, name: str, value: str, description: str = ""
) -> Any:
    """Create or replace a secret's value (write-only: values are never read back)."""
    from . import crypto
    from .models import Secret

    secret, created = Secret.objects.select_for_update().get_or_create(
        project=project,
        name=name,
        defaults={
            "value_encrypted": crypto.encrypt(value),
            "created_by": actor,
            "description": description,
        },
    )
    if not created:
        secret.value_encrypted = crypto.encrypt(value)
        secret.description = description or secret.description
        secret.save(update_fields=["value_encrypted", "description", "updated_at"])
    # The name only: a secret's value never reaches the audit log.
    audit_record(
        actor=actor,
        project=project,
        action="secret.create" if created else "secret.update",
        obj=secret,
        changes={"name": name},
    )
    return secret


def secret_create(
    *, project: Project, actor: User, name: str, value: str, description: str = ""
) -> Any:
    from .models import Secret

    if Secret.objects.filter(project=project, name=name).exists():
        raise Conflict(f"A secret named '{name}' already exists; replace its value instead.")
    with transaction.atomic():
        return secret_set(
            project=project, actor=actor, name=name, value=value, description=description
        )


@transaction.atomic
def secret_delete(*, secret: Any, actor: User) -> None:
    audit_record(
        actor=actor,
        project=secret.project,
        action="secret.delete",
        obj=secret,
        changes={"name": secret.name},
    )
    secret.delete()


@transaction.atomic
def secrets_rotate() -> int:
    """Re-encrypt every secret with the primary key of SPARKOPS_SECRET_KEYS."""
    from . import crypto
    from .models import Secret

    count = 0
    for secret in Secret.objects.select_for_update().iterator():
        rotated = crypto.rotate(secret.value_encrypted)
        if rotated != secret.value_encrypted:
            Secret.objects.filter(pk=secret.pk).update(value_encrypted=rotated)
            count += 1
    return count


@transaction.atomic
def project_clone(*, project: Project, actor: User, name: str) -> Project:
    """Copy the project's tools, agents and workflows (already validated, so copied as they
    are, each with a fresh version 1) into a new project owned by `actor`. Secrets, runs and
    members are not copied; agents keep the *names* of the secrets they use, so adding those
    secrets to the new project makes them work."""
    from agents.models import Agent
    from agents.services import VERSIONED_FIELDS as AGENT_FIELDS
    from sparkops.versioning import version_record
    from tools.models import Tool
    from tools.services import VERSIONED_FIELDS as TOOL_FIELDS
    from workflows.models import Workflow
    from workflows.services import VERSIONED_FIELDS as WORKFLOW_FIELDS

    clone = project_create(
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
        version_record(obj=workflow, fields=WORKFLOW_FIELDS, actor=actor, force=True)
    audit_record(
        actor=actor,
        project=clone,
        action="project.clone",
        obj=clone,
        changes={"source": str(project.pk)},
    )
    return clone
