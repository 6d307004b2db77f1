"""Immutable versions of agents, tools and workflows.

A versioned model has a `version` integer (its current number) and a `versions` reverse
relation to a `VersionBase` subclass. Services call `version_record` after every create or
change; a new version is written only when the snapshot differs from the current one. Rollback
writes a new version whose snapshot equals the old one (history is never rewritten)."""

from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import models


def snapshot_of(obj: models.Model, fields: list[str]) -> dict[str, Any]:
    """JSON-safe values of `fields`; many-to-many fields become sorted lists of primary keys."""
    data: dict[str, Any] = {}
    for name in fields:
        field = obj._meta.get_field(name)
        if field.many_to_many:
            data[name] = sorted(str(pk) for pk in getattr(obj, name).values_list("pk", flat=True))
        elif field.is_relation:
            data[name] = getattr(obj, field.attname)
        else:
            data[name] = getattr(obj, name)
    return json.loads(json.dumps(data, cls=DjangoJSONEncoder))


def version_record(*, obj: Any, fields: list[str], actor: Any, force: bool = False) -> Any | None:
    """Writes the next version if the snapshot changed (or `force`); call inside the service's
    transaction, after saving `obj`. Returns the new version or None."""
    snapshot = snapshot_of(obj, fields)
    versions = obj.versions
    latest = versions.select_for_update().order_by("-number").first()
    if latest is not None and latest.snapshot == snapshot and not force:
        return None
    number = (latest.number if latest else 0) + 1
    version = versions.create(number=number, snapshot=snapshot, created_by=actor)
    if obj.version != number:
        type(obj).objects.filter(pk=obj.pk).update(version=number)
        obj.version = number
    return version


def version_restore_fields(*, obj: Any, version: Any, fields: list[str]) -> dict[str, Any]:
    """The field values of `version` to apply to `obj` for a rollback (m2m excluded; the caller
    sets those with `.set()`)."""
    values = {}
    for name in fields:
        if name not in version.snapshot:
            continue
        field = obj._meta.get_field(name)
        if field.many_to_many:
            continue
        key = field.attname if field.is_relation else name
        values[key] = version.snapshot[name]
    return values
