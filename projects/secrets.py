"""Execution-time access to project secrets. Values are decrypted only when a template or an
executor actually reads them, and every value read is remembered so that whatever is recorded
afterwards (step input/output, events, logs) can be redacted.

Redaction covers the encodings a value travels in, not only the value itself (see
`secret_variants`), and every value read is also registered with `sparkops.logcontext`, whose
logging filter replaces it in every log line of the current unit of work. Templates never see
the plain string: `template_view()` hands them `SecretValue` objects, which the sandbox renders
as a whole value but refuses to transform (see `sparkops.templating`)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

from django.utils import timezone

from sparkops import logcontext
from sparkops.errors import InvalidInput
from sparkops.secret_values import SecretValue, TemplateSecrets

from . import crypto
from .models import Project, Secret

__all__ = ["REDACTED", "SecretBag", "SecretValue", "TemplateSecrets", "redact", "secret_variants"]

REDACTED = "***"


def secret_variants(value: str) -> frozenset[str]:
    """The forms `value` travels in: raw, URL-quoted (`quote` with and without `/` safe,
    `quote_plus`), JSON-escaped (ASCII or not), each of those upper- and lower-cased, and its
    base64 (standard and URL-safe, padded or not)."""
    if not value:
        return frozenset()
    forms = {
        value,
        quote(value, safe=""),
        quote(value),
        quote_plus(value),
        quote_plus(value, safe="/"),
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
    }
    forms |= {form.upper() for form in forms} | {form.lower() for form in forms}
    raw = value.encode()
    for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
        text = encoded.decode("ascii")
        forms |= {text, text.rstrip("=")}
    return frozenset(form for form in forms if form)


class SecretBag(Mapping[str, str]):
    """`bag["NAME"]` in executors (the plain value); templates get `template_view()`. Unknown
    names raise a clear error naming the secret (never its value)."""

    def __init__(self, project: Project | Any | None) -> None:
        # A project or its primary key (the engine passes ids to save a query).
        self.project = project
        self._rows: dict[str, Secret] | None = None
        self.used: dict[str, str] = {}
        self._forms: dict[str, frozenset[str]] = {}
        self._variants: set[str] = set()

    def _load(self) -> dict[str, Secret]:
        if self._rows is None:
            rows = Secret.objects.filter(project=self.project) if self.project is not None else []
            self._rows = {row.name: row for row in rows}
        return self._rows

    def __getitem__(self, name: str) -> str:
        if name in self.used:
            # Registered again: this read may be in a log scope that the first one was not.
            logcontext.add_secrets(self._forms[name])
            return self.used[name]
        row = self._load().get(name)
        if row is None:
            raise InvalidInput(f"Secret '{name}' does not exist in this project.")
        value = crypto.decrypt(row.value_encrypted)
        self.used[name] = value
        self._forms[name] = secret_variants(value)  # once per secret and bag
        self._variants |= self._forms[name]
        logcontext.add_secrets(self._forms[name])
        Secret.objects.filter(pk=row.pk).update(last_used_at=timezone.now())
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def template_view(self) -> TemplateSecrets:
        return TemplateSecrets(self)

    def redact(self, value: Any, extra: Iterable[str] = ()) -> Any:
        """`value` with every secret read so far, in every form of `secret_variants`, replaced
        by `***` (strings, nested dicts/lists); `extra` adds derived values to hide too."""
        return redact(value, [*self._variants, *extra])

    def redact_bytes(self, data: bytes, extra: Iterable[str] = ()) -> bytes:
        """`data` with every secret read so far (the forms of `redact`, as UTF-8) replaced by
        `***`: what a step writes to a file holds no secret either."""
        needles = sorted({s.encode() for s in [*self._variants, *extra] if s}, key=len)
        for needle in reversed(needles):
            data = data.replace(needle, REDACTED.encode())
        return data


def redact(value: Any, secrets: Any) -> Any:
    needles = sorted((s for s in secrets if s), key=len, reverse=True)
    if not needles:
        return value

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            for needle in needles:
                if needle in item:
                    item = item.replace(needle, REDACTED)
            return item
        if isinstance(item, dict):
            return {walk(k): walk(v) for k, v in item.items()}
        if isinstance(item, list | tuple):
            return [walk(v) for v in item]
        return item

    return walk(value)
