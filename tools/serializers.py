from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from projects.serializers import ProjectField

from .models import Tool, ToolVersion


def _json_object(value: Any) -> Any:
    if not isinstance(value, dict):
        raise serializers.ValidationError("Must be a JSON object.")
    return value


# Enums with their own id, so drf-spectacular names them ToolStatusEnum / ToolKindEnum: agents
# use the same `status` values, and one choice set shared by several components under a field
# name that other sets also use is a naming collision (a schema warning).
@extend_schema_field(
    {
        "type": "string",
        "enum": list(Tool.Status.values),
        "x-spec-enum-id": "tools.Tool.Status",
        "description": "`active` or `disabled` (a disabled tool cannot be called).",
    }
)
class ToolStatusField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=Tool.Status.choices, **kwargs)


@extend_schema_field(
    {
        "type": "string",
        "enum": list(Tool.Kind.values),
        "x-spec-enum-id": "tools.Tool.Kind",
        "description": "`http` (an HTTP request) or `builtin` (a safe built-in function).",
    }
)
class ToolKindField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=Tool.Kind.choices, **kwargs)


class ToolSerializer(serializers.ModelSerializer):
    """Shape only; names, schemas and configs are validated by `tools.services` (field-level
    errors such as `config.url` or `parameters.type`)."""

    project = ProjectField(
        required=False,
        allow_null=True,
        help_text="The owning project (a project you are a member of); null for a global tool.",
    )
    created_by = serializers.UUIDField(source="created_by_id", read_only=True, allow_null=True)
    kind = ToolKindField()
    status = ToolStatusField(required=False)
    parameters = serializers.JSONField(
        required=False,
        help_text="JSON Schema of the arguments (an object schema with `properties`). Empty "
        "means no arguments, or the built-in function's own schema.",
    )
    config = serializers.JSONField(
        required=False,
        help_text="http: method, url, headers, query, body (templates over `args` and "
        "`secrets`), auth {type: none|bearer|api_key|basic, secret names}, timeout_seconds, "
        "retries, retry_backoff_seconds. builtin: function (current_time, calculator, "
        "json_path, template, noop).",
    )

    class Meta:
        model = Tool
        fields = [
            "id",
            "project",
            "is_global",
            "name",
            "description",
            "parameters",
            "kind",
            "config",
            "status",
            "version",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "version", "created_by", "created_at", "updated_at"]
        # Name uniqueness is the service's (a 409); the model's constraints would make
        # `project` required here.
        validators: list[Any] = []
        extra_kwargs = {"name": {"validators": []}}

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        if isinstance(self.instance, Tool):  # a tool never moves between projects
            fields["project"].read_only = True
            fields["is_global"].read_only = True
        return fields

    validate_parameters = staticmethod(_json_object)
    validate_config = staticmethod(_json_object)


class ToolVersionSerializer(serializers.ModelSerializer):
    created_by = serializers.UUIDField(source="created_by_id", read_only=True, allow_null=True)
    snapshot = serializers.JSONField(
        read_only=True,
        help_text="name, description, parameters, kind, config and status at this version.",
    )

    class Meta:
        model = ToolVersion
        fields = ["number", "snapshot", "created_by", "created_at"]
        read_only_fields = fields


class ToolRollbackSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, help_text="The version number to restore.")


class ToolInvokeSerializer(serializers.Serializer):
    arguments = serializers.JSONField(
        required=False, help_text="The call's arguments, checked against the tool's parameters."
    )
    project = ProjectField(
        required=False,
        allow_null=True,
        pk_field=serializers.UUIDField(),
        help_text="Only for global tools: the project whose secrets the call uses (you need "
        "the developer role in it).",
    )


class ToolInvokeResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    status = serializers.CharField(help_text="`succeeded` or `failed` (the same as `ok`).")
    output = serializers.JSONField(allow_null=True, help_text="Parsed JSON, text, or null.")
    http_status = serializers.IntegerField(allow_null=True)
    latency_ms = serializers.FloatField()
    error = serializers.CharField(allow_null=True)
    retryable = serializers.BooleanField()
