"""Shapes only: the definition, retry policy and triggers must be JSON objects here; what they
may contain (and which agents and tools they may name) is checked by `workflows.services`."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from projects.serializers import ProjectField

from .definition import DEFINITION_SCHEMA
from .models import Workflow, WorkflowVersion
from .services import RETRY_POLICY_SCHEMA


@extend_schema_field(OpenApiTypes.UUID)
class WorkflowProjectField(ProjectField):
    """A project the caller is a member of (typed for the OpenAPI document)."""


class _JSONObjectField(serializers.JSONField):
    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value


def _openapi_30(schema: Any) -> Any:
    """DEFINITION_SCHEMA is JSON Schema 2020-12; the OpenAPI document is 3.0, which has no
    `const`, `if`/`then` or numeric `exclusiveMinimum`. Node types become a `oneOf`."""
    if isinstance(schema, list):
        return [_openapi_30(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "allOf" and all(isinstance(s, dict) and "if" in s for s in value):
            out["oneOf"] = [_openapi_30(s["then"]) for s in value]
        elif key == "properties":
            out[key] = {name: _openapi_30(prop) for name, prop in value.items()}
        else:
            out[key] = _openapi_30(value)
    return out


DEFINITION_OPENAPI_SCHEMA = _openapi_30(DEFINITION_SCHEMA)


@extend_schema_field(DEFINITION_OPENAPI_SCHEMA)
class DefinitionField(_JSONObjectField):
    """A workflow definition (DESIGN.md §5): input_schema, nodes, output."""


@extend_schema_field(RETRY_POLICY_SCHEMA)
class RetryPolicyField(_JSONObjectField):
    pass


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": True,
        "description": "Trigger settings (free-form JSON object for now).",
    }
)
class TriggersField(_JSONObjectField):
    pass


@extend_schema_field(
    {
        "type": "object",
        "description": "What a run of this version pins: the definition and the run settings.",
        "properties": {
            "definition": DEFINITION_OPENAPI_SCHEMA,
            "timeout_seconds": {"type": "integer"},
            "retry_policy": RETRY_POLICY_SCHEMA,
        },
    }
)
class SnapshotField(serializers.JSONField):
    pass


class WorkflowSerializer(serializers.ModelSerializer):
    project = WorkflowProjectField(help_text="Chosen on create; read-only afterwards.")
    definition = DefinitionField()
    retry_policy = RetryPolicyField(required=False)
    triggers = TriggersField(required=False)
    created_by = serializers.UUIDField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = Workflow
        fields = [
            "id",
            "project",
            *Workflow.EDITABLE_FIELDS,
            "version",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "version", "created_by", "created_at", "updated_at"]
        extra_kwargs = {
            "slug": {"required": False, "help_text": "Unique in the project; made from the name."},
        }
        # (project, slug) uniqueness is the service's (a 409 naming the slug).
        validators: list[Any] = []

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        if self.instance is not None:
            fields["project"].read_only = True
        return fields


class WorkflowVersionSerializer(serializers.ModelSerializer):
    snapshot = SnapshotField(read_only=True)
    created_by = serializers.UUIDField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = WorkflowVersion
        fields = ["number", "snapshot", "created_by", "created_at"]
        read_only_fields = fields


class RollbackSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, help_text="The version number to restore.")


class ValidateRequestSerializer(serializers.Serializer):
    project = WorkflowProjectField(
        help_text="The project whose agents and tools the definition may use."
    )
    definition = DefinitionField()


class GraphNodeSerializer(serializers.Serializer):
    id = serializers.CharField()
    type = serializers.CharField()
    label = serializers.CharField(help_text="The node's description, or its id.")
    depends_on = serializers.ListField(child=serializers.CharField())
    when = serializers.CharField(allow_null=True, help_text="The node's condition, if any.")


class GraphEdgeSerializer(serializers.Serializer):
    source = serializers.CharField(help_text="The dependency.")
    target = serializers.CharField(help_text="The node that depends on it.")
    conditional = serializers.BooleanField(
        help_text="The target has a `when` or is a branch of a switch."
    )


class GraphSerializer(serializers.Serializer):
    nodes = GraphNodeSerializer(many=True)
    edges = GraphEdgeSerializer(many=True)
    layers = serializers.ListField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="Node ids by topological rank; the nodes of one layer may run in parallel.",
    )


class ValidateResponseSerializer(serializers.Serializer):
    valid = serializers.BooleanField()
    graph = GraphSerializer()


class NodeChangeSerializer(serializers.Serializer):
    id = serializers.CharField()
    keys = serializers.ListField(child=serializers.CharField(), help_text="Node keys that differ.")


class NodesDiffSerializer(serializers.Serializer):
    added = serializers.ListField(child=serializers.CharField())
    removed = serializers.ListField(child=serializers.CharField())
    changed = NodeChangeSerializer(many=True)


class DiffSerializer(serializers.Serializer):
    from_version = serializers.IntegerField()
    to_version = serializers.IntegerField()
    nodes = NodesDiffSerializer()
    changed_keys = serializers.ListField(
        child=serializers.CharField(),
        help_text="Top-level definition keys (other than nodes) that differ: input_schema, output.",
    )
    changed_settings = serializers.ListField(
        child=serializers.CharField(),
        help_text="Run settings that differ: timeout_seconds, retry_policy.",
    )
