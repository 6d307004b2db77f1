"""The domain error every service raises, and the one DRF exception handler that turns any
error (500 included) into the stable JSON shape `{"type", "detail", "errors"?}`. A database
that is unreachable or busy answers 503 with `Retry-After` (here for DRF views, in
`sparkops.middleware` and `handler500` for the rest)."""

from __future__ import annotations

import logging
from typing import Any, TypeGuard

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


class SparkOpsError(Exception):
    """A domain error raised by services; the exception handler maps it to a 4xx JSON body."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    error_type: str = "invalid_request"

    def __init__(
        self,
        detail: str,
        *,
        errors: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
        status_code: int | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.extra = extra or {}
        if status_code is not None:
            self.status_code = status_code
        if error_type is not None:
            self.error_type = error_type


class InvalidInput(SparkOpsError):
    status_code = status.HTTP_400_BAD_REQUEST
    error_type = "validation_error"


class Forbidden(SparkOpsError):
    status_code = status.HTTP_403_FORBIDDEN
    error_type = "permission_denied"


class NotFound(SparkOpsError):
    status_code = status.HTTP_404_NOT_FOUND
    error_type = "not_found"


class Conflict(SparkOpsError):
    status_code = status.HTTP_409_CONFLICT
    error_type = "conflict"


class Unprocessable(SparkOpsError):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    error_type = "unprocessable"


def error_body(error_type: str, detail: Any, errors: Any = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": error_type, "detail": detail}
    if errors:
        body["errors"] = errors
    body.update(extra)
    return body


# The database refused a connection, the pool had none free within DB_POOL_TIMEOUT, or the
# connection died mid-request: a transient state, answered 503 with this Retry-After.
DATABASE_ERRORS = (OperationalError, InterfaceError)
DATABASE_RETRY_AFTER_SECONDS = 5
# Celery task options: the same errors retry the task after 1, 2, 4 … 30 s (20 times, some
# eight minutes; the sweeper is the backstop after that).
DATABASE_RETRY: dict[str, Any] = {
    "autoretry_for": DATABASE_ERRORS,
    "retry_backoff": 1,
    "retry_backoff_max": 30,
    "retry_jitter": False,
    "max_retries": 20,
}


def is_database_unavailable(exc: BaseException | None) -> TypeGuard[BaseException]:
    return isinstance(exc, DATABASE_ERRORS)


def database_unavailable_body() -> dict[str, Any]:
    return error_body("database_unavailable", "The database is unavailable or busy; retry shortly.")


def database_unavailable_response(request: HttpRequest | None, exc: BaseException) -> HttpResponse:
    """The same answer for views outside DRF (health, admin, console) as the handler gives."""
    logger.warning(
        "database unavailable: %s: %s",
        exc.__class__.__name__,
        exc,
        extra={"path": getattr(request, "path", None)},
    )
    response = JsonResponse(database_unavailable_body(), status=503)
    response["Retry-After"] = str(DATABASE_RETRY_AFTER_SECONDS)
    return response


def _drf_error_type(exc: exceptions.APIException) -> str:
    if isinstance(exc, exceptions.ValidationError):
        return "validation_error"
    code = exc.default_code
    return str(code) if code else "error"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """Every API error, 500 included, answers `{"type", "detail", "errors"?}`."""
    if isinstance(exc, SparkOpsError):
        return Response(
            error_body(exc.error_type, exc.detail, exc.errors, **exc.extra),
            status=exc.status_code,
        )
    if isinstance(exc, DjangoValidationError):
        errors = (
            exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
        )
        return Response(
            error_body("validation_error", "Invalid input.", errors),
            status=status.HTTP_400_BAD_REQUEST,
        )
    if is_database_unavailable(exc):
        logger.warning("database unavailable: %s: %s", exc.__class__.__name__, exc)
        return Response(
            database_unavailable_body(),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()

    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("Unhandled error in %s", context.get("view").__class__.__name__)
        return Response(
            error_body("server_error", "Internal server error."),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    assert isinstance(exc, exceptions.APIException)
    if isinstance(exc, exceptions.ValidationError):
        data = response.data
        if isinstance(data, list):
            data = {"non_field_errors": data}
        response.data = error_body("validation_error", "Invalid input.", data)
    else:
        detail = exc.detail
        if isinstance(detail, dict) and "detail" in detail:
            # simplejwt nests its message (and a code) in a dict.
            detail = detail["detail"]
        response.data = error_body(_drf_error_type(exc), detail)
    return response
