"""Operator console for outbound webhooks: endpoints (secret shown once, rotation, ping; the
reason an endpoint was disabled) and the delivery log (redeliver). Saves go through
`projects.webhooks`; the form's clean() runs the same checks as the API (URL refused by the
SSRF-safe client, unknown event types)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from projects.admin_scoping import ProjectScopedAdmin
from sparkops.adminkit import PrettyJSONField, ServiceAdmin, add_service_errors, adopt, json_block
from sparkops.errors import SparkOpsError

from . import webhooks
from .models import Role, WebhookDelivery, WebhookEndpoint


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=2000, assume_scheme="https")
    events = PrettyJSONField(
        rows=2,
        indent=None,
        initial=["*"],
        help_text=f'A JSON list of event types, or ["*"]: {", ".join(WebhookEndpoint.EVENTS)}.',
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["project", "url", "description", "events", "enabled"]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        if self.errors:
            return cleaned
        fields = {k: cleaned[k] for k in ("url", "events") if k in cleaned}
        try:
            cleaned.update(webhooks.endpoint_clean(fields))
        except SparkOpsError as exc:
            add_service_errors(self, exc)
        return cleaned


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(ProjectScopedAdmin, ServiceAdmin):
    form = WebhookEndpointForm
    write_role = Role.ADMIN
    list_display = ["url", "project", "events_list", "enabled", "failing_since", "disabled_at"]
    list_filter = ["enabled"]
    list_select_related = ["project"]
    search_fields = ["url", "description", "project__slug", "project__name"]
    autocomplete_fields = ["project"]
    readonly_fields = [
        "disabled_reason",
        "disabled_at",
        "failing_since",
        "secret_rotated_at",
        "created_by",
        "created_at",
        "updated_at",
    ]
    actions = ["ping_endpoints", "rotate_secrets"]
    create_only = ("project",)

    @admin.display(description="Events")
    def events_list(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.events)

    def save_model(
        self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool
    ) -> None:
        data = form.cleaned_data
        fields = {k: data[k] for k in ("url", "description", "events", "enabled") if k in data}
        if change:
            webhooks.endpoint_update(endpoint=obj, actor=request.user, **fields)
            return
        saved, secret = webhooks.endpoint_create(
            actor=request.user, project=data["project"], **fields
        )
        adopt(obj, saved)
        self.message_user(
            request, f"Signing secret (shown once, copy it now): {secret}", messages.WARNING
        )

    def delete_model(self, request: HttpRequest, obj: WebhookEndpoint) -> None:
        webhooks.endpoint_delete(endpoint=obj, actor=request.user)

    @admin.action(description="Send a ping to selected endpoints")
    def ping_endpoints(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            webhooks.endpoint_ping(endpoint=endpoint, actor=request.user)
        self.message_user(request, f"Ping queued for {queryset.count()} endpoint(s).")

    @admin.action(description="Rotate the signing secret of selected endpoints")
    def rotate_secrets(self, request: HttpRequest, queryset: QuerySet[WebhookEndpoint]) -> None:
        for endpoint in queryset:
            secret = webhooks.endpoint_rotate_secret(endpoint=endpoint, actor=request.user)
            self.message_user(
                request,
                f"New secret of {endpoint.url} (shown once; the old one signs for 24 h): {secret}",
                messages.WARNING,
            )


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ProjectScopedAdmin, admin.ModelAdmin):
    scope_through = "endpoint"
    project_path = "endpoint.project"
    write_role = Role.ADMIN
    list_display = [
        "event_type",
        "endpoint",
        "status",
        "attempt",
        "response_status",
        "latency_ms",
        "next_retry_at",
        "created_at",
    ]
    list_filter = ["status", "event_type", "created_at"]
    list_select_related = ["endpoint"]
    search_fields = ["webhook_id", "event_type", "endpoint__url", "error"]
    date_hierarchy = "created_at"
    fields = [
        "endpoint",
        "event_type",
        "webhook_id",
        "status",
        "attempt",
        "response_status",
        "latency_ms",
        "error",
        "response_body",
        "next_retry_at",
        "retry_until",
        "delivered_at",
        "created_at",
        "payload_pretty",
        "log_pretty",
    ]
    readonly_fields = fields
    actions = ["redeliver"]

    @admin.display(description="Payload")
    def payload_pretty(self, obj: WebhookDelivery) -> str:
        return json_block(obj.payload)

    @admin.display(description="Attempts")
    def log_pretty(self, obj: WebhookDelivery) -> str:
        return json_block(obj.log)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Redeliver selected (delivered or failed) messages")
    def redeliver(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        for delivery in queryset:
            try:
                webhooks.delivery_redeliver(delivery=delivery, actor=request.user)
            except SparkOpsError as exc:
                self.message_user(request, f"{delivery.webhook_id}: {exc.detail}", messages.ERROR)
