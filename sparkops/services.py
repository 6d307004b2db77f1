"""The shape the apps' update services share: lock the row, check the changes, save what
changed, snapshot a version. Each service keeps what is its own: which fields may be set, the
checks, and the audit record (one line, written by the caller with what this returns)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

from django.db import IntegrityError, models, transaction

from sparkops.versioning import version_record

M = TypeVar("M", bound=models.Model)


@contextmanager
def duplicate_as(conflict: Callable[[], Exception]) -> Iterator[None]:
    """Runs the block in a savepoint and turns an IntegrityError (a unique constraint that lost
    a race against the service's own check) into `conflict()`, the same 409 as the check."""
    try:
        with transaction.atomic():
            yield
    except IntegrityError:
        raise conflict() from None


class Update(NamedTuple):
    changed: dict[str, Any]  # what was set on the row (and saved)
    cleaned: dict[str, Any]  # everything `clean` returned


def object_update(
    obj: M,
    *,
    actor: Any,
    clean: Callable[[M], dict[str, Any]],
    only_changed: bool = True,
    versioned_fields: Sequence[str] | None = None,
    force_version: bool = False,
    conflict: Callable[[], Exception] | None = None,
    lock: models.QuerySet[M] | None = None,
) -> Update:
    """Updates `obj` in place; call inside the service's transaction.

    The row is locked and `obj` reloaded from it (`lock`: the queryset to lock and reload it
    through, default the row alone), so `clean` checks the committed values and two updates
    of one object never interleave (nor compute the same next version number). `clean(obj)`
    returns the cleaned values to set, or raises. With `only_changed`, only the values that
    differ from the row are set, and nothing is written when none does; otherwise every
    value is set and the row saved. Many-to-many values (objects or keys) are compared as
    sets of keys and `.set()` after the row is saved. `versioned_fields`: a version is
    recorded after a save (`force_version`: even with an equal snapshot). `conflict`: the
    error an IntegrityError on save becomes."""
    if lock is None:
        lock = type(obj)._default_manager.select_for_update()
    obj.refresh_from_db(from_queryset=lock)
    cleaned = clean(obj)
    many = {name for name in cleaned if obj._meta.get_field(name).many_to_many}
    changed = {
        name: value
        for name, value in cleaned.items()
        if not only_changed or _differs(obj, name, value, many=name in many)
    }
    if not changed and only_changed:
        return Update(changed, cleaned)
    plain = [name for name in changed if name not in many]
    for name in plain:
        setattr(obj, name, changed[name])
    if conflict is None:
        obj.save(update_fields=[*plain, "updated_at"])
    else:
        with duplicate_as(conflict):
            obj.save(update_fields=[*plain, "updated_at"])
    for name in many.intersection(changed):
        getattr(obj, name).set(changed[name])
    if versioned_fields is not None:
        version_record(obj=obj, fields=list(versioned_fields), actor=actor, force=force_version)
    return Update(changed, cleaned)


def _differs(obj: models.Model, name: str, value: Any, *, many: bool) -> bool:
    if not many:
        return getattr(obj, name) != value
    keys = {getattr(item, "pk", item) for item in value}
    return keys != set(getattr(obj, name).values_list("pk", flat=True))
