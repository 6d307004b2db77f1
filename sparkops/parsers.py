"""The API's parsers: DRF's, refusing NUL characters (see sparkops.nul) with a 400 that names
the field, so no serializer field (JSONField or CharField) can hand one to PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ValidationError

from .nul import MESSAGE, NUL, nul_path


def _refuse(path: str | None) -> None:
    if path is not None:
        raise ValidationError({path or "non_field_errors": [MESSAGE]})


class JSONParser(parsers.JSONParser):
    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        _refuse(nul_path(data))
        return data


def _form_value_path(key: str, value: str) -> str | None:
    """A form value holding a NUL, or JSON text (a JSONField's form input) with an escaped
    one, which the JSONField would decode into a NUL."""
    if NUL in value:
        return key
    if "\\u0000" in value and value.lstrip()[:1] in ("{", "[", '"'):
        try:
            return nul_path(json.loads(value), key)
        except ValueError:
            return None
    return None


def _check_form(data: Any) -> None:
    for key, values in data.lists():
        for value in values:
            if isinstance(value, str):
                _refuse(_form_value_path(key, value))


class FormParser(parsers.FormParser):
    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        data = super().parse(stream, media_type, parser_context)
        _check_form(data)
        return data


class MultiPartParser(parsers.MultiPartParser):
    def parse(self, stream: Any, media_type: Any = None, parser_context: Any = None) -> Any:
        parsed = super().parse(stream, media_type, parser_context)
        _check_form(parsed.data)
        return parsed
