from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from projects.serializers import ProjectField

from .models import Agent, AgentVersion, ModelPrice
from .services import MAX_ITERATIONS, MAX_PROMPT_CHARS, MAX_TOKENS


# An inline enum (no shared component): tools have the same `status` values, workflows and
# projects other ones, and one `StatusEnum` name for several choice sets collides.
@extend_schema_field(
    {"type": "string", "enum": list(Agent.Status.values), "description": "Agent status."}
)
class AgentStatusField(serializers.ChoiceField):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(choices=Agent.Status.choices, **kwargs)


class ToolIdsField(serializers.ListField):
    """Tool ids in, tool ids out (read from the prefetched `tools`). Whether each tool may be
    used by the agent's project is the service's check."""

    child = serializers.IntegerField(min_value=1)

    def to_representation(self, data: Any) -> list[int]:
        return [tool.pk for tool in data.all()]


class AgentSerializer(serializers.ModelSerializer):
    project = ProjectField(help_text="Chosen on create; read-only afterwards.")
    slug = serializers.CharField(
        max_length=100,
        required=False,
        allow_blank=True,
        help_text="Unique in the project; derived from the name when left out.",
    )
    # Not a URLField: self-hosted servers are often reached by a bare host name (http://ollama).
    base_url = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        help_text="Required for openai_compatible; for openai and anthropic, a proxy or gateway.",
    )
    credentials_secret = serializers.CharField(
        max_length=100,
        required=False,
        allow_blank=True,
        help_text="Name of the project secret holding the API key (never the key itself).",
    )
    temperature = serializers.FloatField(
        required=False,
        allow_null=True,
        min_value=0,
        max_value=2,
        help_text="0 to 2 (Anthropic: 0 to 1).",
    )
    max_tokens = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_TOKENS
    )
    max_iterations = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_ITERATIONS,
        help_text="Most LLM calls of one agent step (the tool-calling loop).",
    )
    response_format = serializers.JSONField(
        required=False,
        allow_null=True,
        help_text="null for a text reply, or the JSON Schema the reply must match.",
    )
    settings = serializers.JSONField(
        required=False,
        help_text="Provider options as a JSON object, e.g. timeout_seconds; simulated: mode, "
        "reply, turns.",
    )
    tools = ToolIdsField(
        required=False, help_text="Ids of tools of the agent's project, or global tools."
    )
    mcp_tools = serializers.JSONField(
        required=False,
        help_text='Tools of the project\'s MCP servers: [{"server": "name", "tools": ["t1"]}] '
        "(tools null or absent: all of the server's tools), called `<server>__<tool>`.",
    )
    status = AgentStatusField(required=False)
    created_by = serializers.UUIDField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = Agent
        fields = [
            "id",
            "project",
            *Agent.EDITABLE_FIELDS,
            "version",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "version", "created_by", "created_at", "updated_at"]
        # The (project, slug) constraint is the service's check (with a clear 409).
        validators: list[Any] = []


class AgentUpdateSerializer(AgentSerializer):
    project = serializers.PrimaryKeyRelatedField(  # type: ignore[assignment]
        read_only=True, help_text="An agent stays in the project it was created in."
    )


class AgentVersionSerializer(serializers.ModelSerializer):
    created_by = serializers.UUIDField(source="created_by_id", read_only=True, allow_null=True)
    snapshot = serializers.JSONField(
        read_only=True, help_text="The versioned configuration (tools as a list of ids)."
    )

    class Meta:
        model = AgentVersion
        fields = ["number", "snapshot", "created_by", "created_at"]
        read_only_fields = fields


class AgentVersionPageSerializer(serializers.Serializer):
    """The page shape of the versions list (documented by hand: it is a detail route)."""

    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = AgentVersionSerializer(many=True)


class AgentRollbackSerializer(serializers.Serializer):
    version = serializers.IntegerField(min_value=1, help_text="The version number to restore.")


class AgentTestSerializer(serializers.Serializer):
    prompt = serializers.CharField(max_length=MAX_PROMPT_CHARS, trim_whitespace=False)


class ToolCallSerializer(serializers.Serializer):
    id = serializers.CharField()
    name = serializers.CharField()
    arguments = serializers.JSONField(
        allow_null=True, help_text="null when the model sent arguments that are not JSON."
    )
    raw_arguments = serializers.CharField(allow_blank=True)


class AgentTestResultSerializer(serializers.Serializer):
    reply = serializers.CharField(allow_null=True, allow_blank=True)
    tool_calls = ToolCallSerializer(many=True)
    input_tokens = serializers.IntegerField()
    output_tokens = serializers.IntegerField()
    latency_ms = serializers.FloatField()
    model = serializers.CharField()
    provider = serializers.CharField()
    finish_reason = serializers.CharField(allow_null=True)


class ModelPriceSerializer(serializers.ModelSerializer):
    """USD per million tokens. Shape only; who may write which row is `agents.services`'."""

    project = ProjectField(
        required=False,
        allow_null=True,
        help_text="A project of yours whose own price this is (you need the admin role in it); "
        "null for a global price (staff only). Fixed after creation.",
    )
    provider = serializers.ChoiceField(choices=Agent.Provider.choices)
    input_per_million = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0)
    output_per_million = serializers.DecimalField(max_digits=12, decimal_places=6, min_value=0)
    cached_input_per_million = serializers.DecimalField(
        max_digits=12, decimal_places=6, min_value=0, required=False, allow_null=True
    )

    class Meta:
        model = ModelPrice
        fields = ["id", "project", *ModelPrice.EDITABLE_FIELDS, "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]
        # Uniqueness is the service's (a 409), not a generic 400 from the serializer.
        validators: list[Any] = []
