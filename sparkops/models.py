"""Abstract bases shared by the domain apps."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models


class VersionBase(models.Model):
    """An immutable snapshot of a versioned object's configuration. Concrete subclasses add the
    foreign key to their object (named by `versioned_field`) and a unique (object, number)."""

    number = models.PositiveIntegerField()
    snapshot = models.JSONField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    versioned_field = ""

    class Meta:
        abstract = True
        ordering = ["-number"]

    def __str__(self) -> str:
        return f"{getattr(self, self.versioned_field)} v{self.number}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValueError("Versions are immutable.")
        super().save(*args, **kwargs)
