"""Abstract bases shared by the domain apps."""

from __future__ import annotations

from typing import Any, Self, TypeVar

from django.conf import settings
from django.db import connections, models

_M = TypeVar("_M", bound=models.Model)

# Up to this many projects a page is read per project and merged; beyond, as one query over
# all of them. Each branch costs about half a millisecond of planning (PostgreSQL 15), and a
# caller of many projects usually sees much of the table, where the plain query walking a
# (created_at) index newest-first finds a page quickly.
MAX_MERGED_PARTITIONS = 8


class ProjectPartitionedQuerySet(models.QuerySet[_M]):
    """A QuerySet that remembers the projects it was scoped to (`in_projects`), so that a page
    of it, newest first, can be read as one short index range per project, merged.

    Why: `WHERE project_id IN (a, b, c) ORDER BY created_at DESC LIMIT 51` cannot walk the
    (project, -created_at) index in order across several projects; PostgreSQL fetches every
    row of those projects and sorts them, which grows with the table. The same page written
    as `(… project_id = a … LIMIT 51) UNION ALL (… b …) … ORDER BY created_at DESC LIMIT 51`
    is a Merge Append of index scans that reads about one page per project, whatever the size
    of the table. Slices are read that way only after `merge_partitions()` (the cursor
    paginator asks for it), on databases that allow a LIMIT inside a UNION, and for 2 to
    MAX_MERGED_PARTITIONS projects; the rows, their order and the query count are the same
    either way."""

    _partition: tuple[str, tuple[Any, ...]] | None = None
    _merge_partitions = False

    def in_projects(self, ids: Any, field: str = "project_id") -> Self:
        queryset = self.filter(**{f"{field}__in": ids})
        queryset._partition = (field, tuple(ids))
        return queryset

    # `_chain` and `_clone` are Django's private QuerySet methods, which django-stubs leaves out.
    def merge_partitions(self) -> Self:
        queryset = self._chain()  # type: ignore[attr-defined]
        queryset._merge_partitions = True
        return queryset

    def _clone(self) -> Any:
        clone = super()._clone()  # type: ignore[misc]
        clone._partition = self._partition
        clone._merge_partitions = self._merge_partitions
        return clone

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice) and self._merges(k):
            return self._merged_slice(k)
        return super().__getitem__(k)

    def _merges(self, k: slice) -> bool:
        return (
            self._merge_partitions
            and self._partition is not None
            and 1 < len(self._partition[1]) <= MAX_MERGED_PARTITIONS
            and k.stop is not None
            and k.step is None
            and bool(self.query.order_by)
            and not self.query.is_sliced
            and not self.query.combinator
            and connections[self.db].features.supports_slicing_ordering_in_compound
        )

    def _merged_slice(self, k: slice) -> Any:
        assert self._partition is not None
        field, ids = self._partition
        base = self._chain()  # type: ignore[attr-defined]  # private, not in django-stubs
        base._merge_partitions = False
        parts = [base.filter(**{field: value})[: k.stop] for value in ids]
        merged = parts[0].union(*parts[1:], all=True)
        return merged.order_by(*self.query.order_by)[k]


class Created(models.Model):
    """Who created the row (kept, as null, when that user is deleted) and when."""

    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        abstract = True


class Authored(Created):
    """A row people create and change: who created it, when, and when it last changed."""

    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class VersionBase(Created):
    """An immutable snapshot of a versioned object's configuration. Concrete subclasses add the
    foreign key to their object (named by `versioned_field`) and a unique (object, number)."""

    number = models.PositiveIntegerField()
    snapshot = models.JSONField()

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
