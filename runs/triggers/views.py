"""The inbound webhook endpoint, `POST /api/v1/hooks/{token}` (routed in sparkops/urls.py): it
starts runs, so it sits above the engine; the triggers' CRUD API is in workflows.trigger_views."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponse, JsonResponse
from django.http.request import RawPostDataException
from django.shortcuts import get_object_or_404
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import permissions, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.throttling import SimpleRateThrottle
from rest_framework.views import APIView

from accounts.authentication import APIKeyAuthentication, JWTAuthentication
from projects.api import ProjectScopedGenericViewSet
from projects.models import Project
from sparkops.errors import error_body
from workflows import schedules, webhooks
from workflows.models import Schedule
from workflows.trigger_serializers import (
    BackfillRangeSerializer,
    BackfillSerializer,
    HookAcceptedSerializer,
    HookFinishedSerializer,
    ScheduleFireSerializer,
    ScheduleResumedSerializer,
    ScheduleSerializer,
)

from . import hooks, mcp
from . import schedules as firing


class HookTokenThrottle(SimpleRateThrottle):
    """Per token (hashed), so one noisy sender cannot starve the others."""

    scope = "webhook"

    def get_rate(self) -> str:
        return str(settings.SPARKOPS_WEBHOOK_THROTTLE_RATE)

    def get_cache_key(self, request: Any, view: Any) -> str:
        ident = webhooks.token_hash(str(view.kwargs.get("token", "")))[:32]
        return self.cache_format % {"scope": self.scope, "ident": ident}


class HookView(APIView):
    """`POST /api/v1/hooks/{token}`: no authentication other than the token (and, if the
    trigger requires one, the signature of the raw body)."""

    authentication_classes: list[Any] = []
    permission_classes = [permissions.AllowAny]
    throttle_classes = [HookTokenThrottle]
    parser_classes: list[Any] = []  # the raw body is read once, for the signature

    @extend_schema(
        tags=["webhooks"],
        auth=[],
        operation_id="hooks_receive",
        parameters=[
            OpenApiParameter(
                "token", OpenApiTypes.STR, OpenApiParameter.PATH, description="The trigger token."
            ),
            OpenApiParameter(
                "wait",
                OpenApiTypes.NUMBER,
                description="Seconds to wait for the run to end (capped by "
                "SPARKOPS_HOOK_MAX_WAIT): 200 with its status, output and error if it ended "
                "in time, else 202.",
            ),
        ],
        request={"application/json": OpenApiTypes.OBJECT},
        responses={
            200: HookFinishedSerializer,
            202: HookAcceptedSerializer,
            400: OpenApiResponse(description="`wait` is not a number of seconds from 0."),
            401: OpenApiResponse(description="Missing, bad or stale signature."),
            404: OpenApiResponse(description="Unknown token."),
            409: OpenApiResponse(description="The trigger is disabled or the workflow paused."),
            413: OpenApiResponse(description="The body is over the size limit."),
            422: OpenApiResponse(description="The body does not map to a valid run input."),
            429: OpenApiResponse(description="Too many deliveries for this token."),
        },
    )
    def post(self, request: Request, token: str) -> Response:
        """Start a run; with `?wait=N`, answer its output if it ends within N seconds. A
        repeated `webhook-id`, `X-GitHub-Delivery`, `Idempotency-Key` or `X-Request-Id` answers
        the first delivery's run (`replayed: true`)."""
        trigger = webhooks.webhook_trigger_for_token(token)
        length = request.META.get("CONTENT_LENGTH") or "0"
        webhooks.check_size(int(length) if length.isdigit() else 0)
        try:
            body = request._request.body
        except RequestDataTooBig:  # over DATA_UPLOAD_MAX_MEMORY_SIZE, without a Content-Length
            raise webhooks.PayloadTooLarge("The body is larger than the server accepts.") from None
        except RawPostDataException:  # pragma: no cover - nothing reads the stream first
            body = b""
        headers = {name.lower(): value for name, value in request.headers.items()}
        wait = hooks.wait_seconds(request.query_params.get("wait"))
        run, replayed = hooks.webhook_receive(
            trigger=trigger,
            body=body,
            headers=headers,
            query={key: request.query_params[key] for key in request.query_params},
        )
        url = request.build_absolute_uri(reverse("run-detail", kwargs={"pk": run.pk}))
        answer = {"run": str(run.pk), "status": run.status, "replayed": replayed, "url": url}
        ended = hooks.run_wait(run_id=run.pk, seconds=wait) if wait > 0 else None
        if ended is not None:
            return Response({**answer, **ended}, status=status.HTTP_200_OK)
        return Response(answer, status=status.HTTP_202_ACCEPTED)


@extend_schema(tags=["schedules"])
class ScheduleTriggerViewSet(ProjectScopedGenericViewSet):
    """`POST /api/v1/schedules/{id}/pause`, `/resume` and `/backfill`, routed on the schedules'
    prefix from runs/urls.py: resuming (with catch_up) and backfilling start runs, so they live
    above the engine; the rest of /schedules/ is workflows.trigger_views."""

    queryset = Schedule.objects.select_related("project")

    @extend_schema(request=None, responses={200: ScheduleSerializer})
    @action(detail=True, methods=["post"], filter_backends=[])
    def pause(self, request: Request, pk: Any = None) -> Response:
        """Stop firing until resumed (idempotent)."""
        schedule = schedules.schedule_pause(schedule=self.get_object(), actor=request.user)
        return Response(ScheduleSerializer(schedule).data)

    @extend_schema(request=None, responses={200: ScheduleResumedSerializer})
    @action(detail=True, methods=["post"], filter_backends=[])
    def resume(self, request: Request, pk: Any = None) -> Response:
        """Fire again from the next slot; with catch_up, the latest slot missed while paused
        runs now (once). Idempotent."""
        schedule, fire = firing.schedule_resume(schedule=self.get_object(), actor=request.user)
        data = ScheduleSerializer(schedule).data
        data["catch_up"] = ScheduleFireSerializer(fire).data if fire is not None else None
        return Response(data)

    @extend_schema(
        request=BackfillRangeSerializer,
        responses={
            200: BackfillSerializer,
            400: OpenApiResponse(description="Bad range, or more slots than allowed."),
            409: OpenApiResponse(description="The workflow is paused or archived."),
        },
    )
    @action(detail=True, methods=["post"], filter_backends=[])
    def backfill(self, request: Request, pk: Any = None) -> Response:
        """One run per slot from `from` to `to` (both included, past), at most
        SPARKOPS_SCHEDULE_BACKFILL_MAX_SLOTS; a slot that has a run already is left alone."""
        schedule = self.get_object()
        body = BackfillRangeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = firing.schedule_backfill(
            schedule=schedule,
            actor=request.user,
            start=body.validated_data["from"],
            end=body.validated_data["to"],
        )
        return Response(BackfillSerializer(result).data)


# A JSON-RPC 2.0 message (the MCP methods' params are the protocol's: modelcontextprotocol.io).
MCP_MESSAGE = {
    "type": "object",
    "properties": {
        "jsonrpc": {"type": "string", "enum": ["2.0"]},
        "id": {"oneOf": [{"type": "integer"}, {"type": "string"}]},
        "method": {
            "type": "string",
            "description": "`initialize`, `server/discover`, `tools/list`, `tools/call`, `ping`…",
        },
        "params": {"type": "object"},
    },
    "required": ["jsonrpc", "method"],
}


class McpView(APIView):
    """`POST /api/v1/projects/{id}/mcp`: the project's workflows as MCP tools (streamable HTTP,
    stateless, JSON responses; runs/triggers/mcp.py). An API key or a JWT of a project member
    (or of any user, for a public project); others get 404. GET and DELETE are 405: there is no
    server-to-client stream and no session to end."""

    authentication_classes = [JWTAuthentication, APIKeyAuthentication]
    parser_classes: list[Any] = []  # the raw JSON-RPC body goes to the SDK as it came

    @extend_schema(
        tags=["mcp"],
        operation_id="project_mcp",
        request={"application/json": MCP_MESSAGE},
        responses={
            200: OpenApiResponse(description="A JSON-RPC response (MCP)."),
            202: OpenApiResponse(description="A notification, accepted."),
            400: OpenApiResponse(description="Not a JSON-RPC message the server understands."),
            401: OpenApiResponse(description="No or bad credentials."),
            404: OpenApiResponse(description="No such project, or not yours."),
            406: OpenApiResponse(description="`Accept` names no JSON."),
            413: OpenApiResponse(description="The body is larger than the server accepts."),
        },
    )
    def post(self, request: Request, pk: str) -> HttpResponse:
        """One MCP message: `tools/list` lists the project's active workflows (and `get_run`),
        `tools/call` starts a run (trigger `mcp`) and answers its output if it ends within
        SPARKOPS_MCP_WAIT seconds, else its id and URLs. `Idempotency-Key` (header, or
        `_meta["io.sparkops/idempotency-key"]` of the call) answers the first call's run."""
        project = get_object_or_404(Project.objects.for_user(request.user), pk=pk)
        try:
            body = request._request.body
        except RequestDataTooBig:
            raise webhooks.PayloadTooLarge("The body is larger than the server accepts.") from None
        headers = dict(request.headers.items())
        # No Accept means any (RFC 9110); the SDK wants both types named.
        if "*/*" in headers.get("Accept", "*/*"):
            headers["Accept"] = "application/json, text/event-stream"
        caller = mcp.Caller(
            user=request.user,
            project=project,
            absolute=request.build_absolute_uri,
            idempotency_key=request.headers.get("Idempotency-Key") or None,
        )
        answer = mcp.serve(caller, method="POST", path=request.path, headers=headers, body=body)
        kinds = [v for k, v in answer.headers if k.lower() == "content-type"]
        if answer.status >= 400 and not (kinds and kinds[0].startswith("application/json")):
            # The SDK's few plain-text refusals (a body that is not JSON): the API's JSON error.
            detail = answer.body.decode(errors="replace") or "Bad request."
            return JsonResponse(error_body("invalid_request", detail), status=answer.status)
        response = HttpResponse(answer.body, status=answer.status)
        for name, value in answer.headers:
            if name.lower() != "content-length":
                response[name] = value
        return response
