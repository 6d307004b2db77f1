"""The audit log: `audit_record` is called by the services (one line each) inside their
transaction, so an event exists exactly when the change committed. The client's IP comes from a
context variable the request middleware sets, so services need no request.

Every app's services record here, so the log sits in the bottom layer and imports no app: the
project and the actor are foreign keys by name. Who may read the log is decided above
(`policies.admin`, `policies.views`), where project roles are known."""

from __future__ import annotations

import contextvars
import json
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

MASK = "***"
# Keys whose values are credentials (compared lower-cased; exact names or substrings).
SENSITIVE_NAMES = {"value", "key", "secret", "password", "token", "api_key", "authorization"}
SENSITIVE_PARTS = (
    "password",
    "passwd",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "private_key",
    "client_secret",
    "secret_value",
    "hashed_key",
)
MAX_CHANGES_CHARS = 20_000

client_ip: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "audit_client_ip", default=None
)


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def update(self, **kwargs: Any) -> int:
        raise ValueError("Audit events are append-only.")

    def delete(self) -> Any:
        raise ValueError("Audit events are append-only.")


class AuditEvent(models.Model):
    """Who did what to which object, from where. Append-only: no update, no delete. A deleted
    project's or user's events keep its id (the foreign keys have no database constraint and
    nothing cascades), and `actor_email` keeps who it was."""

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    actor_email = models.CharField(max_length=254, blank=True)
    project = models.ForeignKey(
        "projects.Project",
        on_delete=models.DO_NOTHING,
        db_constraint=False,
        null=True,
        blank=True,
        related_name="+",
    )
    action = models.CharField(max_length=64, db_index=True)
    object_type = models.CharField(max_length=100, blank=True)
    object_id = models.CharField(max_length=64, blank=True)
    object_repr = models.CharField(max_length=200, blank=True)
    changes = models.JSONField(default=dict, blank=True, help_text="Secrets are masked.")
    ip = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        # The policies app's model since its first migration: same table, history and admin
        # URL; only the code moved down (a model needs an installed app to belong to).
        app_label = "policies"
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "-created_at"]),
            models.Index(fields=["object_type", "object_id"]),
        ]

    def __str__(self) -> str:
        return f"{self.actor_email or 'system'} {self.action} {self.object_repr}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValueError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("Audit events are append-only.")


def is_sensitive(name: Any) -> bool:
    lowered = str(name).lower()
    return lowered in SENSITIVE_NAMES or any(part in lowered for part in SENSITIVE_PARTS)


def mask(value: Any) -> Any:
    """`value` with the values of credential-like keys replaced by `***`, at any depth."""
    if isinstance(value, dict):
        return {k: MASK if is_sensitive(k) else mask(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    def default(item: Any) -> Any:
        if isinstance(item, models.Model):
            return item.pk if item.pk is not None else str(item)
        if hasattr(item, "all") and callable(item.all):  # a related manager or a queryset
            return [obj.pk for obj in item.all()]
        return DjangoJSONEncoder().default(item) if _encodable(item) else str(item)

    return json.loads(json.dumps(value, default=default))


def _encodable(item: Any) -> bool:
    try:
        DjangoJSONEncoder().default(item)
    except TypeError:
        return False
    return True


def audit_record(
    *,
    actor: Any,
    project: Any,
    action: str,
    obj: Any = None,
    changes: dict[str, Any] | None = None,
) -> Any:
    """Append one audit event. `action` is `<thing>.<verb>` (`agent.create`); `obj` the model
    instance acted on (its type, id and name are kept; it may be deleted already); `changes`
    the values set (credential-like keys are masked; never pass a secret's value)."""
    data = mask(_jsonable(changes or {}))
    text = json.dumps(data)
    if len(text) > MAX_CHANGES_CHARS:
        data = {"truncated": True, "keys": sorted(data)[:200] if isinstance(data, dict) else []}
    authenticated = actor is not None and getattr(actor, "is_authenticated", False)
    project_id = getattr(project, "pk", project)
    return AuditEvent.objects.create(
        actor_id=actor.pk if authenticated else None,
        actor_email=(getattr(actor, "email", "") or "")[:254] if authenticated else "",
        project_id=project_id,
        action=action[:64],
        object_type=obj._meta.label_lower if obj is not None else "",
        object_id=str(obj.pk) if obj is not None and obj.pk is not None else "",
        object_repr=str(obj)[:200] if obj is not None else "",
        changes=data,
        ip=client_ip.get(),
    )
