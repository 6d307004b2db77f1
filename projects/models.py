from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings as django_settings
from django.db import models


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


class WebhookEndpoint(models.Model):
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
    created_by = models.ForeignKey(
        django_settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

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
