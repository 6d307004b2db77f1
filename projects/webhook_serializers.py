"""Shapes of the outbound webhook API (admins and owners only)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from .models import WebhookDelivery, WebhookEndpoint
from .serializers import ProjectField

EVENT_CHOICES = [*WebhookEndpoint.EVENTS, "*"]


@extend_schema_field({"type": "string", "format": "uuid"})
class EndpointProjectField(ProjectField):
    pass


class WebhookEndpointSerializer(serializers.ModelSerializer):
    project = EndpointProjectField(help_text="Fixed after creation.")
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=EVENT_CHOICES),
        required=False,
        help_text='Event types to receive, or ["*"] (the default) for all.',
    )
    url = serializers.CharField(
        max_length=2000, help_text="http(s); internal addresses are refused (SSRF-safe egress)."
    )
    created_by = serializers.UUIDField(source="created_by_id", read_only=True, allow_null=True)

    class Meta:
        model = WebhookEndpoint
        fields = [
            "id",
            "project",
            "url",
            "description",
            "events",
            "enabled",
            "failing_since",
            "disabled_reason",
            "disabled_at",
            "secret_rotated_at",
            "created_by",
            "created_at",
            "updated_at",
        ]
        read_only_fields = [
            "id",
            "failing_since",
            "disabled_reason",
            "disabled_at",
            "secret_rotated_at",
            "created_by",
            "created_at",
            "updated_at",
        ]


class WebhookEndpointCreatedSerializer(WebhookEndpointSerializer):
    secret = serializers.CharField(
        read_only=True,
        help_text="The signing secret (`whsec_...`), shown once: verify deliveries with it.",
    )

    class Meta(WebhookEndpointSerializer.Meta):
        fields = [*WebhookEndpointSerializer.Meta.fields, "secret"]


class SigningSecretSerializer(serializers.Serializer):
    secret = serializers.CharField(
        help_text="The new signing secret, shown once. The previous one keeps signing (a second "
        "signature) for 24 h."
    )


class WebhookDeliverySerializer(serializers.ModelSerializer):
    class Meta:
        model = WebhookDelivery
        fields = [
            "id",
            "endpoint",
            "event_type",
            "webhook_id",
            "status",
            "attempt",
            "response_status",
            "response_body",
            "latency_ms",
            "error",
            "next_retry_at",
            "retry_until",
            "delivered_at",
            "created_at",
            "payload",
            "log",
        ]
        read_only_fields = fields
