"""The trigger API: schedules, webhook triggers (and the public hook endpoint), event triggers.
Viewers read; developers and up write. The hook endpoint authenticates by its token only."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
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

from . import event_triggers, schedules, webhooks
from .cron import validate_timezone
from .models import EventTrigger, Schedule, WebhookTrigger
from .trigger_serializers import (
    EventTriggerSerializer,
    PreviewRequestSerializer,
    PreviewSerializer,
    ScheduleFireSerializer,
    ScheduleSerializer,
    TokenSerializer,
    WebhookTriggerCreatedSerializer,
    WebhookTriggerSerializer,
)

ERROR = OpenApiResponse(description="JSON error (`type`, `detail`, `errors`).")
INVALID = OpenApiResponse(
    description="Invalid input (`validation_error`): e.g. `errors.cron` says why the expression "
    "is refused, `errors.timezone` for an unknown zone, `errors['input.<path>']` for input that "
    "does not fit the workflow's input_schema."
)


def _fixed(instance: Any, data: dict[str, Any], *names: str) -> None:
    """Fields chosen at creation: sending the same value again is fine, another is refused."""
    for name in names:
        if name in data and data.pop(name) != getattr(instance, name):
            raise InvalidInput("Invalid input.", errors={name: ["Cannot be changed."]})


# --- schedules -------------------------------------------------------------------------------


def _preview_body(cron: str, timezone_name: str, times: list[Any]) -> dict[str, Any]:
    tz = validate_timezone(timezone_name)
    return {
        "cron": cron,
        "timezone": timezone_name,
        "fire_times": [
            {"at": moment, "local": moment.astimezone(tz).isoformat()} for moment in times
        ],
    }


@extend_schema(tags=["schedules"])
@extend_schema_view(
    create=extend_schema(responses={201: ScheduleSerializer, 400: INVALID}),
    update=extend_schema(responses={200: ScheduleSerializer, 400: INVALID}),
    partial_update=extend_schema(responses={200: ScheduleSerializer, 400: INVALID}),
)
class ScheduleViewSet(ProjectScopedViewSet):
    """Cron schedules of workflows. Each is mirrored to a django-celery-beat PeriodicTask;
    beat fires it, and each fire slot starts at most one run (`trigger: schedule`)."""

    queryset = Schedule.objects.select_related("project")
    serializer_class = ScheduleSerializer
    filterset_fields = ["project", "workflow", "enabled", "overlap"]
    search_fields = ["name", "description", "cron"]
    ordering_fields = ["name", "next_run_at", "last_fired_at", "created_at", "updated_at"]
    ordering = ["name"]

    def perform_create(self, serializer: ScheduleSerializer) -> None:
        data = dict(serializer.validated_data)
        workflow = data.pop("workflow")
        self.check_project_role(workflow.project)
        serializer.instance = schedules.schedule_create(
            actor=self.request.user, workflow=workflow, **data
        )

    def perform_update(self, serializer: ScheduleSerializer) -> None:
        data = dict(serializer.validated_data)
        _fixed(serializer.instance, data, "workflow")
        serializer.instance = schedules.schedule_update(
            schedule=serializer.instance, actor=self.request.user, **data
        )

    def perform_destroy(self, instance: Schedule) -> None:
        schedules.schedule_delete(schedule=instance, actor=self.request.user)

    @extend_schema(
        parameters=[
            OpenApiParameter("count", OpenApiTypes.INT, description="1 to 100 (default 5).")
        ],
        responses={200: PreviewSerializer, 400: INVALID},
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def preview(self, request: Request, pk: Any = None) -> Response:
        """The schedule's next fire times (within start_at/end_at), DST-correct."""
        schedule = self.get_object()
        raw = request.query_params.get("count") or "5"
        try:
            count = int(raw)
        except ValueError:
            raise InvalidInput("Invalid input.", errors={"count": ["Must be a number."]}) from None
        times = schedules.schedule_upcoming(schedule=schedule, count=count)
        return Response(_preview_body(schedule.cron, schedule.timezone, times))

    @extend_schema(
        request=PreviewRequestSerializer, responses={200: PreviewSerializer, 400: INVALID}
    )
    @action(
        detail=False,
        methods=["post"],
        url_path="preview",
        url_name="preview-cron",
        filter_backends=[],
    )
    def preview_cron(self, request: Request) -> Response:
        """Next fire times of any cron expression in a time zone (nothing is saved)."""
        body = PreviewRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        times = schedules.schedule_preview(
            cron_expression=data["cron"],
            timezone_name=data["timezone"],
            count=data["count"],
            after=data.get("start"),
        )
        return Response(_preview_body(" ".join(data["cron"].split()), data["timezone"], times))

    @extend_schema(responses={200: ScheduleFireSerializer(many=True)})
    @action(detail=True, methods=["get"], filter_backends=[])
    def fires(self, request: Request, pk: Any = None) -> Response:
        """What each fire did (started, queued, skipped or failed, and why), newest first."""
        schedule = self.get_object()
        page = self.paginate_queryset(schedule.fires.order_by("-slot"))
        return self.get_paginated_response(ScheduleFireSerializer(page, many=True).data)


# --- webhook triggers ------------------------------------------------------------------------


def _hook_url(request: Request, token: str) -> str:
    return request.build_absolute_uri(reverse("hook", kwargs={"token": token}))


@extend_schema(tags=["webhooks"])
@extend_schema_view(
    create=extend_schema(responses={201: WebhookTriggerCreatedSerializer, 400: INVALID}),
    update=extend_schema(responses={200: WebhookTriggerCreatedSerializer, 400: INVALID}),
    partial_update=extend_schema(responses={200: WebhookTriggerCreatedSerializer, 400: INVALID}),
)
class WebhookTriggerViewSet(ProjectScopedViewSet):
    """Inbound webhooks: each trigger has a secret URL (`POST /api/v1/hooks/{token}`) that
    starts a run of its workflow; the token is shown once (at creation and on rotation)."""

    queryset = WebhookTrigger.objects.select_related("project")
    serializer_class = WebhookTriggerSerializer
    filterset_fields = ["project", "workflow", "enabled", "signature"]
    search_fields = ["name", "description", "token_prefix"]
    ordering_fields = ["name", "created_at", "last_delivery_at"]
    ordering = ["name"]

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        workflow = data.pop("workflow")
        self.check_project_role(workflow.project)
        trigger, token, secret = webhooks.webhook_trigger_create(
            actor=request.user, workflow=workflow, **data
        )
        trigger.token = token
        trigger.url = _hook_url(request, token)
        generated = secret if secret and not data.get("secret") else None
        trigger.generated_secret = generated
        body = WebhookTriggerCreatedSerializer(trigger, context=self.get_serializer_context())
        return Response(body.data, status=status.HTTP_201_CREATED)

    def update(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        partial = kwargs.pop("partial", False)
        instance = self.get_object()
        serializer = self.get_serializer(instance, data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        _fixed(instance, data, "workflow")
        trigger, generated = webhooks.webhook_trigger_update(
            trigger=instance, actor=request.user, **data
        )
        trigger.token = None
        trigger.url = None
        trigger.generated_secret = generated or None
        body = WebhookTriggerCreatedSerializer(trigger, context=self.get_serializer_context())
        return Response(body.data)

    def perform_destroy(self, instance: WebhookTrigger) -> None:
        webhooks.webhook_trigger_delete(trigger=instance, actor=self.request.user)

    @extend_schema(request=None, responses={200: TokenSerializer})
    @action(detail=True, methods=["post"], filter_backends=[])
    def rotate(self, request: Request, pk: Any = None) -> Response:
        """A new token (shown once); the old URL answers 404 from now on."""
        token = webhooks.webhook_trigger_rotate(trigger=self.get_object(), actor=request.user)
        return Response({"token": token, "url": _hook_url(request, token)})


# --- event triggers ----------------------------------------------------------------------------


@extend_schema(tags=["event-triggers"])
@extend_schema_view(
    create=extend_schema(responses={201: EventTriggerSerializer, 400: INVALID}),
    update=extend_schema(responses={200: EventTriggerSerializer, 400: INVALID}),
    partial_update=extend_schema(responses={200: EventTriggerSerializer, 400: INVALID}),
)
class EventTriggerViewSet(ProjectScopedViewSet):
    """Start a workflow when a run of another workflow of the project finishes with a given
    status; chains are bounded by SPARKOPS_MAX_CHAIN_DEPTH."""

    queryset = EventTrigger.objects.select_related("project")
    serializer_class = EventTriggerSerializer
    filterset_fields = ["project", "source_workflow", "target_workflow", "enabled"]
    search_fields = ["name"]
    ordering_fields = ["name", "created_at"]
    ordering = ["name"]

    def perform_create(self, serializer: EventTriggerSerializer) -> None:
        data = dict(serializer.validated_data)
        source = data.pop("source_workflow")
        target = data.pop("target_workflow")
        self.check_project_role(source.project)
        serializer.instance = event_triggers.event_trigger_create(
            actor=self.request.user, source_workflow=source, target_workflow=target, **data
        )

    def perform_update(self, serializer: EventTriggerSerializer) -> None:
        data = dict(serializer.validated_data)
        _fixed(serializer.instance, data, "source_workflow", "target_workflow")
        serializer.instance = event_triggers.event_trigger_update(
            trigger=serializer.instance, actor=self.request.user, **data
        )

    def perform_destroy(self, instance: EventTrigger) -> None:
        event_triggers.event_trigger_delete(trigger=instance, actor=self.request.user)
