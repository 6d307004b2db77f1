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

from sparkops.errors import InvalidInput


def snapshot_of(obj: models.Model, fields: list[str]) -> dict[str, Any]:
    """JSON-safe values of `fields`; many-to-many fields become sorted lists of primary keys."""
    data: dict[str, Any] = {}
    for name in fields:
        field = obj._meta.get_field(name)
        if field.many_to_many:
            data[name] = sorted(str(pk) for pk in getattr(obj, name).values_list("pk", flat=True))
        elif field.is_relation and isinstance(field, models.Field):
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


def version_diff(*, obj: Any, from_number: int, to_number: int) -> dict[str, Any]:
    """What changed between two versions of an agent or a tool: every snapshot field that
    differs, with its value before and after (lists, e.g. an agent's tools, also as `added` and
    `removed`). Unknown numbers are a 400 keyed `from` / `to`, like the workflow diff."""
    versions = {
        v.number: v.snapshot for v in obj.versions.filter(number__in={from_number, to_number})
    }
    errors = {
        key: [f"No version {number}; the latest is {obj.version}."]
        for key, number in (("from", from_number), ("to", to_number))
        if number not in versions
    }
    if errors:
        raise InvalidInput("Unknown version.", errors=errors)
    old, new = versions[from_number], versions[to_number]
    changes: dict[str, Any] = {}
    for name in sorted(set(old) | set(new)):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        change: dict[str, Any] = {"from": before, "to": after}
        if isinstance(before, list) and isinstance(after, list):
            change["added"] = [item for item in after if item not in before]
            change["removed"] = [item for item in before if item not in after]
        changes[name] = change
    return {
        "from_version": from_number,
        "to_version": to_number,
        "changed_fields": list(changes),
        "changes": changes,
    }
