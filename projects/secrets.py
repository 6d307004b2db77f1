"""Execution-time access to project secrets. Values are decrypted only when a template or an
executor actually reads them, and every value read is remembered so that whatever is recorded
afterwards (step input/output, events, logs) can be redacted."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from django.utils import timezone

from sparkops.errors import InvalidInput

from . import crypto
from .models import Project, Secret

REDACTED = "***"


class SecretBag(Mapping[str, str]):
    """`{{ secrets.NAME }}` in templates; `bag["NAME"]` in executors. Unknown names raise a clear
    error naming the secret (never its value)."""

    def __init__(self, project: Project | Any | None) -> None:
        # A project or its primary key (the engine passes ids to save a query).
        self.project = project
        self._rows: dict[str, Secret] | None = None
        self.used: dict[str, str] = {}

    def _load(self) -> dict[str, Secret]:
        if self._rows is None:
            rows = Secret.objects.filter(project=self.project) if self.project is not None else []
            self._rows = {row.name: row for row in rows}
        return self._rows

    def __getitem__(self, name: str) -> str:
        if name in self.used:
            return self.used[name]
        row = self._load().get(name)
        if row is None:
            raise InvalidInput(f"Secret '{name}' does not exist in this project.")
        value = crypto.decrypt(row.value_encrypted)
        self.used[name] = value
        Secret.objects.filter(pk=row.pk).update(last_used_at=timezone.now())
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def redact(self, value: Any) -> Any:
        """`value` with every secret read so far replaced by `***` (strings, nested dicts/lists)."""
        return redact(value, self.used.values())


def redact(value: Any, secrets: Any) -> Any:
    needles = sorted((s for s in secrets if s), key=len, reverse=True)
    if not needles:
        return value

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            for needle in needles:
                item = item.replace(needle, REDACTED)
            return item
        if isinstance(item, dict):
            return {walk(k): walk(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        return item

    return walk(value)
