"""Outbound webhook endpoints and their delivery log. Admins and owners only: other members
do not see endpoints at all (404)."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from projects.api import InvalidInput, ProjectScopedViewSet
from sparkops.pagination import CreatedCursorPagination

from . import webhooks
from .models import Role, WebhookDelivery, WebhookEndpoint
from .webhook_serializers import (
    SigningSecretSerializer,
    WebhookDeliverySerializer,
    WebhookEndpointCreatedSerializer,
    WebhookEndpointSerializer,
)

INVALID = OpenApiResponse(
    description="Invalid input: `errors.url` says why a URL is refused (scheme, internal "
    "address...), `errors.events` lists the known event types."
)
CONFLICT = OpenApiResponse(description="Conflict (JSON error with `type`, `detail`).")
DELIVERY_ID = OpenApiParameter("delivery_id", OpenApiTypes.INT, OpenApiParameter.PATH)


@extend_schema(tags=["webhooks"])
@extend_schema_view(
    create=extend_schema(responses={201: WebhookEndpointCreatedSerializer, 400: INVALID}),
    update=extend_schema(responses={200: WebhookEndpointSerializer, 400: INVALID}),
    partial_update=extend_schema(responses={200: WebhookEndpointSerializer, 400: INVALID}),
)
class WebhookEndpointViewSet(ProjectScopedViewSet):
    """Where a project's events (run started/succeeded/failed/cancelled/timed_out, approval
    requested, budget threshold) are POSTed, signed per the Standard Webhooks spec."""

    queryset = WebhookEndpoint.objects.select_related("project")
    serializer_class = WebhookEndpointSerializer
    filterset_fields = ["project", "enabled"]
    search_fields = ["url", "description"]
    ordering_fields = ["created_at", "updated_at", "url"]
    ordering = ["created_at"]
    read_role = Role.ADMIN
    write_role = Role.ADMIN

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        project = data.pop("project")
        self.check_project_role(project)
        endpoint, secret = webhooks.endpoint_create(actor=request.user, project=project, **data)
        endpoint.secret = secret
        body = WebhookEndpointCreatedSerializer(endpoint, context=self.get_serializer_context())
        return Response(body.data, status=status.HTTP_201_CREATED)

    def perform_update(self, serializer: WebhookEndpointSerializer) -> None:
        data = dict(serializer.validated_data)
        if "project" in data and data.pop("project") != serializer.instance.project:
            raise InvalidInput("Invalid input.", errors={"project": ["Cannot be changed."]})
        serializer.instance = webhooks.endpoint_update(
            endpoint=serializer.instance, actor=self.request.user, **data
        )

    def perform_destroy(self, instance: WebhookEndpoint) -> None:
        webhooks.endpoint_delete(endpoint=instance, actor=self.request.user)

    @extend_schema(request=None, responses={200: SigningSecretSerializer})
    @action(detail=True, methods=["post"], url_path="rotate-secret", filter_backends=[])
    def rotate_secret(self, request: Request, pk: Any = None) -> Response:
        """A new signing secret (shown once); both sign for the next 24 h."""
        secret = webhooks.endpoint_rotate_secret(endpoint=self.get_object(), actor=request.user)
        return Response({"secret": secret})

    @extend_schema(request=None, responses={202: WebhookDeliverySerializer})
    @action(detail=True, methods=["post"], filter_backends=[])
    def ping(self, request: Request, pk: Any = None) -> Response:
        """Send a `ping` message now (even to a disabled endpoint); follow it in deliveries."""
        delivery = webhooks.endpoint_ping(endpoint=self.get_object(), actor=request.user)
        return Response(WebhookDeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=WebhookDelivery.Status.values),
            OpenApiParameter("event_type", OpenApiTypes.STR),
        ],
        responses={200: WebhookDeliverySerializer(many=True)},
    )
    @action(
        detail=True, methods=["get"], filter_backends=[], pagination_class=CreatedCursorPagination
    )
    def deliveries(self, request: Request, pk: Any = None) -> Response:
        """The delivery log, newest first: status, attempts, response, latency, next retry.
        Cursor pages (`next`/`previous`, no `count`), like runs and the audit log: a log that
        grows has no COUNT(*) per page."""
        endpoint = self.get_object()
        queryset = endpoint.deliveries.order_by("-created_at", "-id")
        for name in ("status", "event_type"):
            value = request.query_params.get(name)
            if value:
                queryset = queryset.filter(**{name: value})
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(WebhookDeliverySerializer(page, many=True).data)

    @extend_schema(
        request=None,
        parameters=[DELIVERY_ID],
        responses={202: WebhookDeliverySerializer, 409: CONFLICT},
    )
    @action(
        detail=True,
        methods=["post"],
        url_path=r"deliveries/(?P<delivery_id>\d+)/redeliver",
        url_name="redeliver",
        filter_backends=[],
    )
    def redeliver(self, request: Request, pk: Any = None, delivery_id: str = "") -> Response:
        """Send a delivered or failed message again (same `webhook-id`)."""
        endpoint = self.get_object()
        delivery = get_object_or_404(endpoint.deliveries, pk=int(delivery_id))
        delivery = webhooks.delivery_redeliver(delivery=delivery, actor=request.user)
        return Response(WebhookDeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)
