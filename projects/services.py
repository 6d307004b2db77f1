"""Writes for projects and memberships. Views, admin, commands and later apps call these."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta
from typing import Any

from django.apps import apps
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.models import User
from sparkops.audit import audit_record
from sparkops.errors import Conflict, Forbidden, InvalidInput, NotFound

from . import crypto
from .models import Invitation, Membership, Project, Role, Secret, role_at_least
from .signals import project_status_changed

# Models holding a project's content, counted before a delete (app label -> model). A model
# that does not exist yet is simply not counted.
PROJECT_CONTENT_MODELS = {
    "agents": "agents.Agent",
    "tools": "tools.Tool",
    "workflows": "workflows.Workflow",
    "runs": "runs.Run",
    "files": "projects.File",
}


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
    status_changed = "status" in fields and fields["status"] != project.status
    for name, value in fields.items():
        setattr(project, name, value)
    project.save(update_fields=[*fields, "updated_at"])
    if status_changed:
        project_status_changed.send(sender=Project, project=project)
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
        active = run_model.objects.filter(project=project).active().count()
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
    project.delete()  # its files' rows cascade; their bytes go on commit (files.py)


def _owner_count(project: Project) -> int:
    return Membership.objects.filter(project=project, role=Role.OWNER).count()


def _require_owner_for(actor_role: str | None, *roles: str) -> None:
    if Role.OWNER in roles and not role_at_least(actor_role, Role.OWNER):
        raise Forbidden("Only an owner can grant, change or remove the owner role.")


def _normalised_email(email: str) -> str:
    return User.objects.normalize_email(email.strip()).lower()


INVITATION_TOKEN_PREFIX = "spi_"


def invitation_token_hash(raw_token: str) -> str:
    return hashlib.sha256(raw_token.encode()).hexdigest()


@transaction.atomic
def invitation_create(
    *, project: Project, actor: User, email: str, role: str
) -> tuple[Invitation, str]:
    """Offers `role` to whoever signs in with `email` and holds the token. Returns the
    invitation and the raw token, which exists only in this return value (the inviter passes
    it on). The answer is the same whether an account exists for the address or not, so
    inviting reveals nothing about other users; the person joins only by accepting
    (`invitation_accept`)."""
    _require_owner_for(Membership.objects.role_of(actor, project), role)
    email = _normalised_email(email)
    if Membership.objects.filter(project=project, user__email__iexact=email).exists():
        # Only project admins get here, and they can list the members anyway.
        raise Conflict("This address belongs to a member of the project already.")
    now = timezone.now()
    # One that lapsed while pending no longer blocks a new invitation to the address.
    Invitation.objects.filter(
        project=project, email=email, status=Invitation.Status.PENDING, expires_at__lte=now
    ).update(status=Invitation.Status.EXPIRED)
    raw_token = f"{INVITATION_TOKEN_PREFIX}{secrets.token_urlsafe(32)}"
    try:
        with transaction.atomic():
            invitation = Invitation.objects.create(
                project=project,
                email=email,
                role=role,
                invited_by=actor,
                expires_at=now + timedelta(days=settings.SPARKOPS_INVITATION_DAYS),
                token_hash=invitation_token_hash(raw_token),
            )
    except IntegrityError:
        raise Conflict(
            "This address has an open invitation to the project already; revoke it first."
        ) from None
    _audit_invitation(invitation, actor, "create")
    return invitation, raw_token


def _audit_invitation(invitation: Invitation, actor: User, verb: str) -> None:
    audit_record(
        actor=actor,
        project=invitation.project,
        action=f"invitation.{verb}",
        obj=invitation,
        changes={"email": invitation.email, "role": invitation.role},
    )


def _lock_pending(invitation: Invitation) -> Invitation:
    invitation = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if invitation.status != Invitation.Status.PENDING:
        raise Conflict(f"This invitation was {invitation.status} already.")
    return invitation


def _respond(invitation: Invitation, status: str, *, actor: User, verb: str) -> None:
    """Close a pending invitation (accepted, declined, revoked), audited as `invitation.<verb>`."""
    invitation.status = status
    invitation.responded_at = timezone.now()
    invitation.save(update_fields=["status", "responded_at"])
    _audit_invitation(invitation, actor, verb)


@transaction.atomic
def invitation_revoke(*, invitation: Invitation, actor: User) -> Invitation:
    invitation = _lock_pending(invitation)
    _require_owner_for(Membership.objects.role_of(actor, invitation.project), invitation.role)
    # Expiry (below) would purge a pending row; marking it expired first would hide the revoke.
    _respond(invitation, Invitation.Status.REVOKED, actor=actor, verb="revoke")
    return invitation


def _lock_addressed(invitation: Invitation, actor: User) -> Invitation:
    invitation = _lock_pending(invitation)
    if invitation.email != actor.email.lower():
        raise NotFound("Not found.")
    if invitation.is_expired:
        raise Conflict("This invitation has expired; ask a project admin for a new one.")
    return invitation


@transaction.atomic
def invitation_accept(*, invitation: Invitation, actor: User, token: str) -> Membership:
    """Needs both the invited address's account and the token: registration verifies no
    address, so whoever registered it first must not be able to walk in on the account alone."""
    invitation = _lock_addressed(invitation, actor)
    if not hmac.compare_digest(invitation.token_hash, invitation_token_hash(token)):
        raise InvalidInput(
            "Invalid input.", errors={"token": ["This is not the token of this invitation."]}
        )
    try:
        with transaction.atomic():
            membership = Membership.objects.create(
                project=invitation.project, user=actor, role=invitation.role
            )
    except IntegrityError:
        raise Conflict("You are a member of this project already.") from None
    _respond(invitation, Invitation.Status.ACCEPTED, actor=actor, verb="accept")
    return membership


@transaction.atomic
def invitation_decline(*, invitation: Invitation, actor: User) -> Invitation:
    invitation = _lock_addressed(invitation, actor)
    _respond(invitation, Invitation.Status.DECLINED, actor=actor, verb="decline")
    return invitation


@transaction.atomic
def membership_add(*, project: Project, actor: User, user: User, role: str) -> Membership:
    """Adds an existing user directly, without their consent: operators only (the Django
    admin, management commands). The API invites instead (`invitation_create`)."""
    _require_owner_for(Membership.objects.role_of(actor, project), role)
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
    count = 0
    for secret in Secret.objects.select_for_update().iterator():
        rotated = crypto.rotate(secret.value_encrypted)
        if rotated != secret.value_encrypted:
            Secret.objects.filter(pk=secret.pk).update(value_encrypted=rotated)
            count += 1
    return count
