from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings as django_settings
from django.db import models
from django.utils import timezone

from sparkops.errors import Conflict
from sparkops.models import Authored


class Role(models.TextChoices):
    OWNER = "owner", "Owner"
    ADMIN = "admin", "Admin"
    DEVELOPER = "developer", "Developer"
    VIEWER = "viewer", "Viewer"


ROLE_RANK = {Role.VIEWER: 1, Role.DEVELOPER: 2, Role.ADMIN: 3, Role.OWNER: 4}


def role_at_least(role: str | None, required: str) -> bool:
    return role is not None and ROLE_RANK[Role(role)] >= ROLE_RANK[Role(required)]


class ProjectQuerySet(models.QuerySet["Project"]):
    def for_user(self, user: Any) -> ProjectQuerySet:
        """Projects the user is a member of, plus public ones (readable by any signed-in user).
        Filtered through a subquery, not a join, so rows never duplicate."""
        if user is None or not user.is_authenticated:
            return self.none()
        member_of = Membership.objects.filter(user=user).values("project_id")
        return self.filter(models.Q(pk__in=member_of) | models.Q(is_public=True))

    def ids_for_user(self, user: Any) -> list[uuid.UUID]:
        """The ids of `for_user(user)`, resolved now in one small query (memberships by the
        user's index, public projects). Lists of big tables filter on this list
        (`project_id IN (…)`), which PostgreSQL answers from their (project, created_at)
        indexes; the subquery of `for_user`, with its `OR is_public`, made it scan the table."""
        if user is None or not user.is_authenticated:
            return []
        member_of = Membership.objects.filter(user=user).order_by().values_list("project_id")
        public = self.model.objects.filter(is_public=True).order_by().values_list("pk")
        return sorted({pk for (pk,) in member_of.union(public)})

    def member_of(self, user: Any) -> ProjectQuerySet:
        """Only projects with a membership (public ones excluded)."""
        if user is None or not user.is_authenticated:
            return self.none()
        return self.filter(pk__in=Membership.objects.filter(user=user).values("project_id"))


class Project(models.Model):
    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        ARCHIVED = "archived", "Archived"
        DRAFT = "draft", "Draft"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=220, unique=True)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    settings = models.JSONField(default=dict, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    is_public = models.BooleanField(default=False)
    is_template = models.BooleanField(default=False)
    owner = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="owned_projects"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProjectQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status"]), models.Index(fields=["created_at"])]

    def __str__(self) -> str:
        return self.name

    @property
    def is_archived(self) -> bool:
        return self.status == self.Status.ARCHIVED


def project_ensure_writable(project: Project | None) -> None:
    """Archived projects are read-only: every write into one (its catalog, triggers, secrets,
    governance, members) and every new run is refused with 409 naming the state. Restoring the
    project lifts it. The project row itself (archive, restore, transfer, delete) is not
    "into" it and stays writable."""
    if project is not None and project.status == Project.Status.ARCHIVED:
        raise Conflict(
            f"Project '{project.name}' is archived: it is read-only and starts no runs. "
            "Restore it to change it.",
            extra={"project_status": project.status},
        )


class MembershipQuerySet(models.QuerySet["Membership"]):
    def role_of(self, user: Any, project: Project) -> str | None:
        if user is None or not user.is_authenticated:
            return None
        role = self.filter(user=user, project=project).values_list("role", flat=True).first()
        if role is None and project.is_public:
            return Role.VIEWER
        return role

    def has_role(self, user: Any, project: Project, required: str) -> bool:
        return role_at_least(self.role_of(user, project), required)


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = MembershipQuerySet.as_manager()

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="projects_membership_unique")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} as {self.role}"


class InvitationQuerySet(models.QuerySet["Invitation"]):
    def pending(self) -> InvitationQuerySet:
        return self.filter(status=Invitation.Status.PENDING, expires_at__gt=timezone.now())

    def addressed_to(self, user: Any) -> InvitationQuerySet:
        """Invitations whose email is the user's own (nobody else sees them)."""
        if user is None or not user.is_authenticated:
            return self.none()
        return self.filter(email=user.email.lower())


class Invitation(models.Model):
    """An offer of a role in a project, made to an email address. It becomes a membership only
    when the person signed in with that address accepts it, with the token the inviter passed
    on: nobody is added without consent, and the answer to the inviter is the same whether an
    account exists for the address. The token is needed because registration verifies no
    address: an account with the address proves nothing on its own."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        ACCEPTED = "accepted", "Accepted"
        DECLINED = "declined", "Declined"
        REVOKED = "revoked", "Revoked"
        # Set when a new invitation to the address replaces one that lapsed while pending.
        EXPIRED = "expired", "Expired"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField(max_length=254, help_text="Stored lower-case.")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    invited_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="invitations_sent",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    responded_at = models.DateTimeField(null=True, blank=True)
    # SHA-256 of the token shown once to the inviter; accepting needs the token itself.
    token_hash = models.CharField(max_length=64, blank=True, default="", editable=False)

    objects = InvitationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["email", "status"])]
        constraints = [
            # One open invitation per address and project; answered ones stay as history.
            models.UniqueConstraint(
                fields=["project", "email"],
                condition=models.Q(status="pending"),
                name="projects_invitation_one_pending",
            )
        ]

    def __str__(self) -> str:
        return f"{self.email} to {self.project} as {self.role} ({self.status})"

    @property
    def is_expired(self) -> bool:
        return self.status == self.Status.PENDING and self.expires_at <= timezone.now()


def with_caller_role(queryset: ProjectQuerySet, user: Any) -> ProjectQuerySet:
    """Annotate `caller_role` with one correlated subquery (list pages stay one query)."""
    role = Membership.objects.filter(project=models.OuterRef("pk"), user=user).values("role")[:1]
    return queryset.annotate(caller_role=models.Subquery(role))


class SecretQuerySet(models.QuerySet["Secret"]):
    def for_user(self, user: Any) -> SecretQuerySet:
        """Developers and up see secret names (to reference them); viewers see nothing."""
        if user is None or not user.is_authenticated:
            return self.none()
        projects = Membership.objects.filter(
            user=user, role__in=[Role.OWNER, Role.ADMIN, Role.DEVELOPER]
        ).values("project_id")
        return self.filter(project__in=projects)


class Secret(models.Model):
    """A project credential. `value_encrypted` is a Fernet token (see projects.crypto); the
    plaintext is decrypted only at execution time and never returned by the API or the admin."""

    NAME_RE = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="secrets")
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=300, blank=True)
    value_encrypted = models.TextField(editable=False)
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    objects = SecretQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="projects_secret_unique_name")
        ]

    def __str__(self) -> str:
        return f"{self.project.slug}/{self.name}"


# --- Outbound webhooks ------------------------------------------------------------------------


class WebhookEndpointQuerySet(models.QuerySet["WebhookEndpoint"]):
    def for_user(self, user: Any) -> WebhookEndpointQuerySet:
        """Admins and owners manage webhooks; other members do not see them at all (the URL
        and the deliveries' payloads are theirs to know)."""
        if user is None or not user.is_authenticated:
            return self.none()
        projects = Membership.objects.filter(user=user, role__in=[Role.OWNER, Role.ADMIN]).values(
            "project_id"
        )
        return self.filter(project__in=projects)


class WebhookEndpoint(Authored):
    """Where a project's events are POSTed, signed per the Standard Webhooks spec. The secret
    is encrypted at rest; after a rotation the previous one keeps signing for a window."""

    EVENTS = (
        "run.started",
        "run.succeeded",
        "run.failed",
        "run.cancelled",
        "run.timed_out",
        "approval.requested",
        "budget.threshold",
    )

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="webhook_endpoints")
    url = models.URLField(max_length=2000)
    description = models.CharField(max_length=300, blank=True)
    events = models.JSONField(default=list, help_text='Event types, or ["*"] for all.')
    secret_encrypted = models.TextField(editable=False)
    previous_secret_encrypted = models.TextField(blank=True, editable=False)
    secret_rotated_at = models.DateTimeField(null=True, blank=True, editable=False)
    enabled = models.BooleanField(default=True)
    failing_since = models.DateTimeField(null=True, blank=True)
    disabled_reason = models.TextField(blank=True)
    disabled_at = models.DateTimeField(null=True, blank=True)

    objects = WebhookEndpointQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["project", "enabled"])]

    def __str__(self) -> str:
        return self.url

    def subscribes_to(self, event_type: str) -> bool:
        return "*" in self.events or event_type in self.events


class WebhookDeliveryQuerySet(models.QuerySet["WebhookDelivery"]):
    def for_user(self, user: Any) -> WebhookDeliveryQuerySet:
        return self.filter(endpoint__in=WebhookEndpoint.objects.for_user(user))

    def due(self, now: Any) -> WebhookDeliveryQuerySet:
        """Pending, due, and not claimed by a sender right now."""
        return self.filter(
            models.Q(next_retry_at__isnull=True) | models.Q(next_retry_at__lte=now),
            models.Q(claimed_until__isnull=True) | models.Q(claimed_until__lt=now),
            status=WebhookDelivery.Status.PENDING,
        )


class WebhookDelivery(models.Model):
    """One message to one endpoint (the outbox row): created in the transaction of the event
    it reports, sent after commit, retried with backoff; `log` keeps every attempt."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DELIVERED = "delivered", "Delivered"
        FAILED = "failed", "Failed"

    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.CASCADE, related_name="deliveries"
    )
    event_type = models.CharField(max_length=64)
    payload = models.JSONField()
    webhook_id = models.CharField(max_length=64, unique=True, help_text="The `webhook-id`.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    attempt = models.PositiveIntegerField(default=0, help_text="Attempts made so far.")
    response_status = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.TextField(blank=True, help_text="The start of the last response.")
    latency_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True)
    next_retry_at = models.DateTimeField(null=True, blank=True)
    # A sender holds the row until then; a crashed sender's claim simply runs out.
    claimed_until = models.DateTimeField(null=True, blank=True, editable=False)
    retry_until = models.DateTimeField(help_text="No retry after this (24 h after the event).")
    delivered_at = models.DateTimeField(null=True, blank=True)
    log = models.JSONField(default=list, blank=True, help_text="Every attempt, oldest first.")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = WebhookDeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["status", "next_retry_at"]),
            models.Index(fields=["endpoint", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} → {self.endpoint_id} ({self.status})"


# --- Files ------------------------------------------------------------------------------------


class FileQuerySet(models.QuerySet["File"]):
    def for_user(self, user: Any) -> FileQuerySet:
        """Files of the projects the user can read (members and public projects)."""
        return self.filter(project_id__in=Project.objects.ids_for_user(user))


class File(models.Model):
    """A file a project keeps: uploaded, or written by a run's step. The bytes live in the
    `files` storage (STORAGES["files"]: the local filesystem on the embedded default, S3 in
    production) under `path`; this row is what the API lists and runs refer to
    (`{"file": "<id>"}`). `content_type` is sniffed from the bytes, never the client's word."""

    class Source(models.TextChoices):
        UPLOAD = "upload", "Uploaded"
        RUN = "run", "Written by a run"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="files")
    name = models.CharField(max_length=255)
    content_type = models.CharField(max_length=127)
    size = models.PositiveBigIntegerField()
    checksum = models.CharField(max_length=64, help_text="SHA-256 of the bytes, hex.")
    path = models.CharField(max_length=255, unique=True, editable=False)
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.UPLOAD)
    # The run (and step node) that wrote it; ids, not keys: projects sits below runs.
    run_id = models.UUIDField(null=True, blank=True, db_index=True)
    node_id = models.CharField(max_length=100, blank=True)
    uploaded_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(
        null=True, blank=True, help_text="When the retention job deletes it; empty: kept."
    )

    objects = FileQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "-created_at"]),
            models.Index(fields=["expires_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.size} bytes)"
