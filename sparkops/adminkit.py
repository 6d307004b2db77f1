"""What every app's admin shares: JSON shown indented (as a form field and as a read-only
block), and a service's InvalidInput turned into form errors."""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from django import forms
from django.core.serializers.json import DjangoJSONEncoder
from django.utils.html import format_html

from sparkops.errors import SparkOpsError


class _Encoder(DjangoJSONEncoder):
    def default(self, o: Any) -> Any:
        try:
            return super().default(o)
        except TypeError:
            return str(o)  # shown to an operator, never parsed back


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, cls=_Encoder)


def json_block(value: Any) -> str:
    """Read-only JSON for a detail page, wrapped and indented."""
    return format_html(
        '<pre style="white-space:pre-wrap;max-width:900px;margin:0">{}</pre>', pretty_json(value)
    )


class PrettyJSONField(forms.JSONField):
    """A JSON textarea that shows the stored value indented; text that does not parse comes
    back as typed, with the parse error on the field."""

    def __init__(self, *, rows: int = 12, **kwargs: Any) -> None:
        attrs = {"rows": rows, "cols": 90, "style": "font-family: monospace"}
        kwargs.setdefault("widget", forms.Textarea(attrs=attrs))
        super().__init__(**kwargs)

    def prepare_value(self, value: Any) -> Any:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value
        return pretty_json(value)


def add_service_errors(
    form: forms.BaseForm, exc: SparkOpsError, *, fields: Collection[str] | None = None
) -> None:
    """Put a service's error on the form: each `errors` key on the field it starts with
    (`definition.nodes[0].id` on `definition`, prefixed with the full key), when the form has
    that field (and it is among `fields`, when given); the rest, and a bare `detail`, as
    errors of the whole form."""
    if not exc.errors:
        form.add_error(None, str(exc.detail))
        return
    for key, problems in exc.errors.items():
        field = key.split(".", 1)[0].split("[", 1)[0]
        on_field = field in form.fields and (fields is None or field in fields)
        for problem in problems if isinstance(problems, list) else [problems]:
            if on_field:
                form.add_error(field, problem if key == field else f"{key}: {problem}")
            elif key == "__all__":
                form.add_error(None, str(problem))
            else:
                form.add_error(None, f"{key}: {problem}")
