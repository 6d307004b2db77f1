from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from projects.files import with_file_urls
from runs.models import Run, RunEvent, RunStep
from workflows.models import Workflow


class FileLinks(serializers.ModelSerializer):
    """Each file reference in `input` and `output` (`{"file": id, "name", "content_type",
    "size"}`) gains `url`: the absolute URL that downloads the file (the files API checks who
    may)."""

    def to_representation(self, instance: Any) -> Any:
        data = super().to_representation(instance)
        request = self.context.get("request")
        absolute = request.build_absolute_uri if request is not None else str
        for key in ("input", "output"):
            if data.get(key) is not None:
                data[key] = with_file_urls(data[key], absolute)
        return data


class RunStepSerializer(FileLinks):
    class Meta:
        model = RunStep
        fields = [
            "id",
            "node_id",
            "type",
            "status",
            "attempt",
            "failures",
            "input",
            "output",
            "error",
            "queued_at",
            "started_at",
            "finished_at",
            "next_attempt_at",
            "heartbeat_at",
            "worker",
            "input_tokens",
            "output_tokens",
            "cost",
            "reused_from",
            "item_index",
            "decided_by",
            "decided_at",
            "decision_comment",
        ]
        read_only_fields = fields


class RunStepSummarySerializer(serializers.ModelSerializer):
    class Meta:
        model = RunStep
        fields = [
            "node_id",
            "type",
            "status",
            "attempt",
            "started_at",
            "finished_at",
            "error",
            "input_tokens",
            "output_tokens",
            "cost",
        ]
        read_only_fields = fields


class RunSerializer(FileLinks):
    workflow_name = serializers.CharField(source="workflow.name", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)

    class Meta:
        model = Run
        fields = [
            "id",
            "project",
            "workflow",
            "workflow_name",
            "version",
            "status",
            "trigger",
            "input",
            "output",
            "error",
            "parent_run",
            "reuse_succeeded",
            "chain_depth",
            "parent_step",
            "created_by",
            "created_at",
            "queued_at",
            "started_at",
            "finished_at",
            "deadline",
            "duration_ms",
            "input_tokens",
            "output_tokens",
            "cost",
        ]
        read_only_fields = fields


class RunDetailSerializer(RunSerializer):
    steps = RunStepSummarySerializer(many=True, read_only=True)

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "steps"]
        read_only_fields = fields


@extend_schema_field(OpenApiTypes.INT)
class WorkflowField(serializers.PrimaryKeyRelatedField):
    """A workflow in one of the caller's projects (role is checked by the view)."""

    def get_queryset(self) -> QuerySet[Workflow]:
        request = self.context.get("request")
        return Workflow.objects.for_user(getattr(request, "user", None)).select_related("project")


class RunInputSerializer(serializers.Serializer):
    input = serializers.JSONField(required=False, default=dict)

    def validate_input(self, value: Any) -> Any:
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value


class RunCreateSerializer(RunInputSerializer):
    workflow = WorkflowField()


class RunRetrySerializer(serializers.Serializer):
    from_failure = serializers.BooleanField(default=False)


class DecisionSerializer(serializers.Serializer):
    comment = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)


class RunEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = RunEvent
        fields = ["seq", "type", "node_id", "attempt", "payload", "created_at"]
        read_only_fields = fields


class StreamEventSerializer(serializers.Serializer):
    """One Server-Sent Event of `GET /runs/{id}/stream/` (OpenAPI 3.0 describes each event)."""

    id = serializers.CharField(
        required=False,
        help_text="The event's `seq`; send it back as `Last-Event-ID` (the final `end` has none).",
    )
    event = serializers.CharField(help_text="The event type, e.g. `run.status`.")
    # The SSE field named `data`; DRF's metaclass takes declared fields off the class, so
    # Serializer.data (the stubs' view of this name) is untouched.
    data = serializers.CharField(  # type: ignore[assignment]
        help_text="The event as JSON (the shape of `/events/` items)."
    )
    retry = serializers.IntegerField(required=False, help_text="Reconnect delay (ms).")
