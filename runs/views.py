from __future__ import annotations

import json
from typing import Any, cast

from django.db.models import Prefetch, QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, renderers, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer

from projects.api import ProjectScopedGenericViewSet
from projects.models import Role
from sparkops.pagination import CreatedCursorPagination, SeqCursorPagination
from workflows.models import Workflow
from workflows.views import CONFLICT, INVALID

from . import services, streams
from .filters import RunFilter
from .models import Run, RunEvent, RunQuerySet, RunStep
from .serializers import (
    DecisionSerializer,
    RunCreateSerializer,
    RunDetailSerializer,
    RunEventSerializer,
    RunInputSerializer,
    RunRetrySerializer,
    RunSerializer,
    RunStepSerializer,
    StreamEventSerializer,
)

ERROR = OpenApiResponse(description="JSON error (`type`, `detail`, `errors`).")
IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    required=False,
    description="Same key and body within 24 h → the first response again "
    "(`Idempotency-Replayed: true`); same key, other body → 422.",
)


class EventStreamRenderer(renderers.BaseRenderer):
    media_type = "text/event-stream"
    format = "sse"

    def render(
        self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None
    ) -> Any:
        return json.dumps(data).encode()


def render_run(run: Run, request: Request) -> dict[str, Any]:
    """A run as the API shows it, as plain JSON (stored for idempotent replays)."""
    data = RunDetailSerializer(run, context={"request": request}).data
    return json.loads(renderers.JSONRenderer().render(data))


def start_run(request: Request, workflow: Any, run_input: dict[str, Any], trigger: str) -> Response:
    """Shared by POST /runs/ and POST /workflows/{id}/run."""
    key = request.headers.get("Idempotency-Key")
    if key:
        run, body, replayed = services.run_create_idempotent(
            key=key,
            body=request.data,
            actor=request.user,
            workflow=workflow,
            render=lambda r: render_run(r, request),
            input=run_input,
            trigger=trigger,
        )
        response = Response(body, status=status.HTTP_201_CREATED)
        if replayed:
            response["Idempotency-Replayed"] = "true"
        return response
    run = services.run_create(
        workflow=workflow, input=run_input, actor=request.user, trigger=trigger
    )
    return Response(render_run(run, request), status=status.HTTP_201_CREATED)


@extend_schema(tags=["runs"])
@extend_schema_view(
    create=extend_schema(
        request=RunCreateSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: RunDetailSerializer, 400: ERROR, 409: ERROR, 422: ERROR},
    ),
    retrieve=extend_schema(responses={200: RunDetailSerializer}),
)
class RunViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    ProjectScopedGenericViewSet,
):
    """Workflow runs. Viewers read; developers start, cancel, retry and decide approvals."""

    queryset = Run.objects.all()
    serializer_class = RunSerializer
    filterset_class = RunFilter
    pagination_class = CreatedCursorPagination
    search_fields: list[str] = []
    ordering_fields: list[str] = []
    lookup_value_regex = "[0-9a-fA-F-]{36}"
    write_role = Role.DEVELOPER
    # Stopping work stays possible in an archived project; approving or retrying starts work.
    archived_actions = frozenset({"cancel", "reject"})

    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        # An error on the stream (401, 404) is a JSON error, not an event stream.
        if response.status_code >= 400 and isinstance(
            getattr(request, "accepted_renderer", None), EventStreamRenderer
        ):
            request.accepted_renderer = renderers.JSONRenderer()
            request.accepted_media_type = renderers.JSONRenderer.media_type
        return super().finalize_response(request, response, *args, **kwargs)

    def get_serializer_class(self) -> type[BaseSerializer[Any]]:
        if self.action == "retrieve":
            return RunDetailSerializer
        return super().get_serializer_class()

    def filter_queryset(self, queryset: QuerySet[Any, Any]) -> QuerySet[Any, Any]:
        queryset = super().filter_queryset(queryset)
        if self.action in ("list", "retrieve"):
            queryset = cast(RunQuerySet, queryset).listed()
        elif self.action not in ("steps", "events", "stream"):
            queryset = queryset.select_related("workflow", "version")  # what services read
        if self.detail:
            # The permission check reads the run's project: joined, not a query of its own.
            queryset = queryset.select_related("project")
        if self.action == "retrieve":
            queryset = queryset.prefetch_related(Prefetch("steps", RunStep.objects.summary()))
        return queryset

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = RunCreateSerializer(data=request.data, context=self.get_serializer_context())
        body.is_valid(raise_exception=True)
        workflow = body.validated_data["workflow"]
        self.check_project_role(workflow.project, Role.DEVELOPER)
        return start_run(request, workflow, body.validated_data["input"], Run.Trigger.API)

    @extend_schema(request=None, responses={200: RunDetailSerializer, 409: ERROR})
    @action(detail=True, methods=["post", "patch"])
    def cancel(self, request: Request, pk: Any = None) -> Response:
        run = services.run_cancel(run=self.get_object(), actor=request.user)
        return Response(render_run(Run.objects.get(pk=run.pk), request))

    @extend_schema(request=RunRetrySerializer, responses={201: RunDetailSerializer, 409: ERROR})
    @action(detail=True, methods=["post"])
    def retry(self, request: Request, pk: Any = None) -> Response:
        run = self.get_object()
        body = RunRetrySerializer(data=request.data)
        body.is_valid(raise_exception=True)
        new_run = services.run_retry(run=run, actor=request.user, **body.validated_data)
        return Response(render_run(new_run, request), status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: RunStepSerializer(many=True)})
    @action(detail=True, methods=["get"], pagination_class=None, filter_backends=[])
    def steps(self, request: Request, pk: Any = None) -> Response:
        run = self.get_object()
        steps = RunStep.objects.listed().filter(run=run).order_by("id")
        return Response(RunStepSerializer(steps, many=True, context={"request": request}).data)

    @extend_schema(
        parameters=[
            OpenApiParameter("after", OpenApiTypes.INT, description="Only events with seq > after.")
        ],
        responses={200: RunEventSerializer(many=True)},
    )
    @action(detail=True, methods=["get"], pagination_class=SeqCursorPagination, filter_backends=[])
    def events(self, request: Request, pk: Any = None) -> Response:
        run = self.get_object()
        events = RunEvent.objects.filter(
            run=run, seq__gt=streams.non_negative(request.query_params.get("after"))
        )
        page = self.paginate_queryset(events)
        return self.get_paginated_response(RunEventSerializer(page, many=True).data)

    def handle_exception(self, exc: Exception) -> Response:
        # An EventSource asks for text/event-stream; its errors (404, 429) are still JSON.
        response = super().handle_exception(exc)
        if isinstance(getattr(self.request, "accepted_renderer", None), EventStreamRenderer):
            self.request.accepted_renderer = renderers.JSONRenderer()
            self.request.accepted_media_type = "application/json"
        return response

    def _decide(self, request: Request, node_id: str, approve: bool) -> Response:
        run = self.get_object()
        body = DecisionSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        step = services.step_decide(
            run=run,
            node_id=node_id,
            actor=request.user,
            approve=approve,
            comment=body.validated_data["comment"],
        )
        return Response(RunStepSerializer(step, context={"request": request}).data)

    @extend_schema(request=DecisionSerializer, responses={200: RunStepSerializer, 409: ERROR})
    @action(detail=True, methods=["post"], url_path=r"steps/(?P<node_id>[A-Za-z0-9_-]+)/approve")
    def approve(self, request: Request, node_id: str, pk: Any = None) -> Response:
        return self._decide(request, node_id, True)

    @extend_schema(request=DecisionSerializer, responses={200: RunStepSerializer, 409: ERROR})
    @action(detail=True, methods=["post"], url_path=r"steps/(?P<node_id>[A-Za-z0-9_-]+)/reject")
    def reject(self, request: Request, node_id: str, pk: Any = None) -> Response:
        return self._decide(request, node_id, False)

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "Last-Event-ID",
                OpenApiTypes.INT,
                location=OpenApiParameter.HEADER,
                required=False,
                description="Resume after this event (or `?after=`).",
            )
        ],
        responses={(200, "text/event-stream"): StreamEventSerializer, 404: ERROR, 429: ERROR},
    )
    @action(
        detail=True,
        methods=["get"],
        renderer_classes=[renderers.JSONRenderer, EventStreamRenderer],
        pagination_class=None,
        filter_backends=[],
    )
    def stream(self, request: Request, pk: Any = None) -> StreamingHttpResponse:
        """Server-Sent Events of the run's events from `Last-Event-ID` on; the stream ends when
        the run has finished and every event was sent, or after SPARKOPS_STREAM_MAX_SECONDS
        (reconnect with `Last-Event-ID`). 429 beyond the streams a user or a server may hold."""
        run = self.get_object()
        return streams.event_stream_response(
            run.pk, after=streams.resume_after(request), user_id=request.user.pk
        )


class WorkflowRunViewSet(ProjectScopedGenericViewSet):
    """`POST /api/v1/workflows/{id}/run`, routed on the workflows' prefix from runs/urls.py: it
    starts a run, so it lives above the engine, not with the rest of the workflow API."""

    queryset = Workflow.objects.select_related("project")

    @extend_schema(
        request=RunInputSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={201: RunDetailSerializer, 400: INVALID, 409: CONFLICT},
        tags=["runs"],
    )
    @action(detail=True, methods=["post"], filter_backends=[])
    def run(self, request: Request, pk: Any = None) -> Response:
        """Start a run of the current version with `{"input": {...}}` (same as POST /runs/)."""
        workflow = self.get_object()
        body = RunInputSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        return start_run(request, workflow, body.validated_data["input"], "api")
