"""Forms of the console's admin pages. Validation that concerns the domain (a run's input
against the workflow's input schema) stays in the services; these forms only collect values
and put the services' field errors back on the right field."""

from __future__ import annotations

import json
from typing import Any

from django import forms

from sparkops.errors import SparkOpsError

_SIMPLE = {"string", "integer", "number", "boolean"}
RAW = "input_json"


def _field(name: str, prop: dict[str, Any], required: bool) -> forms.Field:
    kind = prop.get("type")
    options: dict[str, Any] = {
        "required": required and kind != "boolean",
        "help_text": prop.get("description", ""),
        "label": prop.get("title") or name,
    }
    if "default" in prop:
        options["initial"] = prop["default"]
    if isinstance(prop.get("enum"), list):
        choices = [(json.dumps(v), str(v)) for v in prop["enum"]]
        if not options["required"]:
            choices.insert(0, ("", "—"))
        if "initial" in options:
            options["initial"] = json.dumps(options["initial"])
        return forms.TypedChoiceField(choices=choices, coerce=json.loads, **options)
    if kind == "integer":
        return forms.IntegerField(**options)
    if kind == "number":
        return forms.FloatField(**options)
    if kind == "boolean":
        return forms.BooleanField(**options)
    if kind == "string":
        widget = forms.Textarea(attrs={"rows": 3}) if prop.get("maxLength", 0) > 200 else None
        return forms.CharField(strip=False, widget=widget, **options)
    return forms.JSONField(widget=forms.Textarea(attrs={"rows": 4}), **options)


class RunNowForm(forms.Form):
    """One field per top-level property of the workflow's input schema (strings, numbers,
    booleans, enums; JSON for objects and arrays). A schema that is not a plain object of
    properties gets one JSON field for the whole input. `run_create` validates the result
    against the schema; `add_service_errors` maps its `input.<field>` errors back."""

    def __init__(self, *args: Any, input_schema: dict[str, Any] | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        schema = input_schema if isinstance(input_schema, dict) else {}
        properties = schema.get("properties")
        if not isinstance(properties, dict):
            properties = {}
        required = set(schema.get("required") or [])
        self.per_property = (
            schema.get("type", "object") == "object"
            and bool(properties)
            and all(isinstance(p, dict) for p in properties.values())
        )
        if self.per_property:
            for name, prop in properties.items():
                self.fields[name] = _field(name, prop, name in required)
        else:
            self.fields[RAW] = forms.JSONField(
                label="Input (JSON)",
                initial={},
                required=False,
                widget=forms.Textarea(attrs={"rows": 8, "cols": 80}),
            )

    def input_value(self) -> dict[str, Any]:
        if not self.per_property:
            value = self.cleaned_data.get(RAW)
            return {} if value is None else value
        value = {}
        for name, field in self.fields.items():
            item = self.cleaned_data.get(name)
            # An optional field left empty is absent from the input, not "" or null.
            if (
                item in (None, "")
                and not field.required
                and not isinstance(field, forms.BooleanField)
            ):
                continue
            value[name] = item
        return value

    def add_service_errors(self, exc: SparkOpsError) -> None:
        for key, problems in (exc.errors or {}).items():
            parts = key.split(".", 1)
            name = parts[1].split(".")[0].split("[")[0] if len(parts) > 1 else ""
            target = name if name in self.fields else (RAW if RAW in self.fields else None)
            for problem in problems if isinstance(problems, list) else [problems]:
                self.add_error(target, f"{key}: {problem}" if target != name else str(problem))
        if not exc.errors:
            self.add_error(None, str(exc.detail))


class DecisionForm(forms.Form):
    comment = forms.CharField(
        required=False,
        max_length=2000,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Recorded with the decision and shown in the run's events.",
    )
