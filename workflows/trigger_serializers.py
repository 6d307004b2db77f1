"""Shapes of the trigger API (schedules, webhook triggers, event triggers). Rules that involve
the workflow or other rows (cron, time zone, input schema, templates) live in the services."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from projects.models import Project

from .models import EventTrigger, Schedule, ScheduleFire, WebhookTrigger, Workflow


@extend_schema_field(OpenApiTypes.INT)
class WorkflowField(serializers.PrimaryKeyRelatedField):
    """A workflow in a project the caller is a member of (anything else "does not exist")."""

    def get_queryset(self):  # type: ignore[override]
        request = self.context.get("request")
        user = getattr(request, "user", None)
        return Workflow.objects.filter(project__in=Project.objects.member_of(user)).select_related(
            "project"
        )


@extend_schema_field({"description": "Any JSON; its strings are templates."})
class MappingField(serializers.JSONField):
    pass


@extend_schema_field({"type": "object", "additionalProperties": True})
class InputField(serializers.JSONField):
    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if not isinstance(value, dict):
            raise serializers.ValidationError("Must be a JSON object.")
        return value


# --- schedules -------------------------------------------------------------------------------


class ScheduleSerializer(serializers.ModelSerializer):
    workflow = WorkflowField(help_text="Fixed after creation.")
    project = serializers.UUIDField(source="project_id", read_only=True)
    input = InputField(required=False, help_text="Validated against the input_schema.")
    last_run = serializers.UUIDField(source="last_run_id", read_only=True, allow_null=True)
    created_by = serializers.UUIDField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = Schedule
        fields = [
            "id",
            "project",
            "workflow",
            *Schedule.EDITABLE_FIELDS,
            "paused_at",
            "next_run_at",
            "last_run",
            "last_fired_at",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "id",
            "project",
            "paused_at",
            "next_run_at",
            "last_run",
            "last_fired_at",
            "created_by",
            "created_at",
            "updated_at",
        ]
        # cron and timezone are checked by the service (400 with the reason).
        extra_kwargs = {
            "cron": {"allow_blank": True},
            "timezone": {"allow_blank": True},
            "overlap": {"required": False},
        }


class ScheduleFireSerializer(serializers.ModelSerializer):
    run = serializers.UUIDField(source="run_id", read_only=True, allow_null=True)

    class Meta:
        model = ScheduleFire
        fields = ["id", "slot", "fired_at", "manual", "status", "reason", "run", "started_at"]
        read_only_fields = fields


class ScheduleResumedSerializer(ScheduleSerializer):
    catch_up = ScheduleFireSerializer(
        read_only=True,
        allow_null=True,
        help_text="The latest slot missed while paused, fired on resume (catch_up on), or null.",
    )

    class Meta(ScheduleSerializer.Meta):
        fields = [*ScheduleSerializer.Meta.fields, "catch_up"]
        read_only_fields = [*ScheduleSerializer.Meta.read_only_fields, "catch_up"]


class BackfillRangeSerializer(serializers.Serializer):
    """`from` and `to` (both included, both past, with a time zone)."""

    to = serializers.DateTimeField(help_text="The last instant of the range (included).")

    def get_fields(self) -> dict[str, serializers.Field]:
        fields = super().get_fields()
        # `from` is a Python keyword, so it cannot be a class attribute.
        fields = {
            "from": serializers.DateTimeField(
                help_text="The first instant of the range (included)."
            ),
            **fields,
        }
        return fields


class BackfillSerializer(serializers.Serializer):
    slots = serializers.IntegerField(help_text="Slots in the range.")
    started = serializers.IntegerField(help_text="Runs started now.")
    existing = serializers.IntegerField(help_text="Slots that had a run already (left alone).")
    failed = serializers.IntegerField(help_text="Slots whose run was refused (see reason).")
    fires = ScheduleFireSerializer(many=True)


class FireTimeSerializer(serializers.Serializer):
    at = serializers.DateTimeField(help_text="UTC.")
    local = serializers.CharField(help_text="The same instant in the schedule's time zone.")


class PreviewSerializer(serializers.Serializer):
    cron = serializers.CharField()
    timezone = serializers.CharField()
    fire_times = FireTimeSerializer(many=True)


class PreviewRequestSerializer(serializers.Serializer):
    cron = serializers.CharField(
        allow_blank=True, help_text="Five fields, e.g. `*/15 9-17 * * 1-5`."
    )
    timezone = serializers.CharField(
        default="UTC", allow_blank=True, help_text="IANA name, e.g. `Europe/Berlin`."
    )
    count = serializers.IntegerField(default=5, help_text="1 to 100.")
    start = serializers.DateTimeField(
        required=False, help_text="Fire times after this instant (default: now)."
    )


# --- webhook triggers --------------------------------------------------------------------------


class WebhookTriggerSerializer(serializers.ModelSerializer):
    workflow = WorkflowField(help_text="Fixed after creation.")
    project = serializers.UUIDField(source="project_id", read_only=True)
    secret = serializers.CharField(
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        help_text="The signature secret (write-only). Standard Webhooks: `whsec_<base64>`; "
        "GitHub: the secret configured there. Omitted with a signature mode: one is generated "
        "and returned once.",
    )
    input_mapping = MappingField(required=False, allow_null=True)
    has_secret = serializers.SerializerMethodField()
    created_by = serializers.UUIDField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = WebhookTrigger
        fields = [
            "id",
            "project",
            "workflow",
            "name",
            "description",
            "token_prefix",
            "signature",
            "secret",
            "has_secret",
            "input_mapping",
            "timestamp_header",
            "timestamp_field",
            "tolerance_seconds",
            "enabled",
            "last_delivery_at",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "id",
            "project",
            "token_prefix",
            "has_secret",
            "last_delivery_at",
            "created_by",
            "created_at",
            "updated_at",
        ]

    def get_has_secret(self, obj: WebhookTrigger) -> bool:
        return bool(obj.secret_encrypted)


class WebhookTriggerCreatedSerializer(WebhookTriggerSerializer):
    """The create response: the only time the token (and a generated secret) is shown."""

    token = serializers.CharField(
        read_only=True, allow_null=True, help_text="Shown once, at creation. Keep it secret."
    )
    url = serializers.CharField(
        read_only=True, allow_null=True, help_text="POST here (the token is in it)."
    )
    generated_secret = serializers.CharField(
        read_only=True, allow_null=True, help_text="Shown once, if one was generated."
    )

    class Meta(WebhookTriggerSerializer.Meta):
        fields = [*WebhookTriggerSerializer.Meta.fields, "token", "url", "generated_secret"]


class TokenSerializer(serializers.Serializer):
    token = serializers.CharField(help_text="The new token, shown once; the old one is void.")
    url = serializers.CharField()


class HookAcceptedSerializer(serializers.Serializer):
    run = serializers.UUIDField()
    status = serializers.CharField()
    replayed = serializers.BooleanField(help_text="True: a repeated delivery id; the same run.")
    url = serializers.URLField(help_text="The run in the API (GET it with a project member's key).")


class HookFinishedSerializer(HookAcceptedSerializer):
    """`?wait=N` and the run ended within it."""

    output = serializers.JSONField(allow_null=True)
    error = serializers.JSONField(allow_null=True, help_text="type, message, step; if it failed.")


# --- event triggers ----------------------------------------------------------------------------


class EventTriggerSerializer(serializers.ModelSerializer):
    source_workflow = WorkflowField(help_text="Fixed after creation.")
    target_workflow = WorkflowField(help_text="Same project as the source; fixed after creation.")
    project = serializers.UUIDField(source="project_id", read_only=True)
    statuses = serializers.ListField(
        child=serializers.ChoiceField(choices=["succeeded", "failed", "cancelled", "timed_out"]),
        required=False,
        help_text='Final statuses of the source run (default ["succeeded"]).',
    )
    input_mapping = MappingField(required=False, allow_null=True)
    created_by = serializers.UUIDField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = EventTrigger
        fields = [
            "id",
            "project",
            "source_workflow",
            "target_workflow",
            "name",
            "statuses",
            "input_mapping",
            "enabled",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "project", "created_by", "created_at", "updated_at"]
