"""Outbound webhooks: a project's events POSTed to its endpoints, signed per the Standard
Webhooks spec (`webhook-id`, `webhook-timestamp`, `webhook-signature`).

An outbox: `event_emit()` writes one WebhookDelivery per subscribed endpoint in the transaction
of the event it reports and sends a task after commit; `delivery_attempt()` claims the row
(a conditional UPDATE, so two senders never send it at once), POSTs it through the SSRF-safe
egress client, and records the outcome. 5xx, 429, timeouts and connection errors are retried
with exponential backoff for up to 24 h; other 4xx, a refused address and a 3xx are final. A
short backoff is a task countdown; a long one waits in the database for the outbox sweep
(beat), which also re-sends rows whose task was lost. An endpoint that keeps failing for
24 h is disabled with the reason. After a secret rotation, messages carry two signatures
(new and previous secret) for 24 h.

Run events become messages in `runs.webhooks`, above the engine; budgets emit theirs directly.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from standardwebhooks.webhooks import Webhook

from accounts.models import User
from sparkops import egress, metrics
from sparkops.audit import audit_record
from sparkops.celery import app
from sparkops.db import release_connection
from sparkops.errors import Conflict, InvalidInput

from . import crypto
from .models import Project, WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

EDITABLE_FIELDS = {"url", "description", "events", "enabled"}
PING = "ping"
USER_AGENT = "Spark-Ops-Webhooks/1"
_RESPONSE_SNIPPET = 2000
_LOG_LIMIT = 50


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _new_webhook_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def endpoint_secret(endpoint: WebhookEndpoint) -> str:
    return crypto.decrypt(endpoint.secret_encrypted)


def signing_secrets(endpoint: WebhookEndpoint, now: datetime) -> list[str]:
    """The current secret, plus the previous one during the rotation window."""
    found = [endpoint_secret(endpoint)]
    window = timedelta(hours=settings.SPARKOPS_WEBHOOK_SECRET_ROTATION_HOURS)
    rotated = endpoint.secret_rotated_at
    if endpoint.previous_secret_encrypted and rotated and now < rotated + window:
        found.append(crypto.decrypt(endpoint.previous_secret_encrypted))
    return found


def sign(*, secrets_: list[str], webhook_id: str, timestamp: int, body: str) -> str:
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return " ".join(
        Webhook(secret).sign(msg_id=webhook_id, timestamp=moment, data=body) for secret in secrets_
    )


# --- endpoints -------------------------------------------------------------------------------


def endpoint_clean(fields: dict[str, Any]) -> dict[str, Any]:
    """Checks the fields a create or update sets (the admin form calls this too)."""
    cleaned = dict(fields)
    errors: dict[str, list[str]] = {}
    if "url" in cleaned:
        url = cleaned["url"]
        if not isinstance(url, str) or not url.strip():
            errors["url"] = ["A URL is required."]
        else:
            try:
                egress.check_url(url.strip())
            except egress.EgressDenied as exc:
                errors["url"] = [f"Not allowed: {exc.detail}"]
            cleaned["url"] = url.strip()
    if "events" in cleaned:
        events = cleaned["events"]
        allowed = (*WebhookEndpoint.EVENTS, "*")
        if not isinstance(events, list) or not events or any(e not in allowed for e in events):
            errors["events"] = [f"A non-empty list of: {', '.join(allowed)}."]
        else:
            cleaned["events"] = sorted(set(events), key=allowed.index)
    if errors:
        raise InvalidInput("Invalid input.", errors=errors)
    return cleaned


@transaction.atomic
def endpoint_create(
    *,
    actor: User | None,
    project: Project,
    url: str,
    events: list[str] | None = None,
    **fields: Any,
) -> tuple[WebhookEndpoint, str]:
    """Returns (endpoint, secret); the secret is shown to the caller once."""
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(f"Cannot set {', '.join(sorted(unknown))}.")
    cleaned = endpoint_clean({**fields, "url": url, "events": events or ["*"]})
    secret = new_secret()
    endpoint = WebhookEndpoint.objects.create(
        project=project, secret_encrypted=crypto.encrypt(secret), created_by=actor, **cleaned
    )
    audit_record(
        actor=actor,
        project=project,
        action="webhook_endpoint.create",
        obj=endpoint,
        changes=cleaned,
    )
    return endpoint, secret


@transaction.atomic
def endpoint_update(
    *, endpoint: WebhookEndpoint, actor: User | None, **fields: Any
) -> WebhookEndpoint:
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(f"Cannot change {', '.join(sorted(unknown))}.")
    cleaned = endpoint_clean(fields)
    update = list(cleaned)
    if cleaned.get("enabled") and not endpoint.enabled:
        # Re-enabled by an admin: the failure clock starts again.
        endpoint.failing_since = endpoint.disabled_at = None
        endpoint.disabled_reason = ""
        update += ["failing_since", "disabled_at", "disabled_reason"]
    for name, value in cleaned.items():
        setattr(endpoint, name, value)
    endpoint.save(update_fields=[*update, "updated_at"])
    audit_record(
        actor=actor,
        project=endpoint.project_id,
        action="webhook_endpoint.update",
        obj=endpoint,
        changes=cleaned,
    )
    return endpoint


@transaction.atomic
def endpoint_rotate_secret(*, endpoint: WebhookEndpoint, actor: User | None) -> str:
    """A new secret (returned once). The previous one keeps signing, next to the new one, for
    SPARKOPS_WEBHOOK_SECRET_ROTATION_HOURS, so receivers can switch without losing messages."""
    secret = new_secret()
    endpoint.previous_secret_encrypted = endpoint.secret_encrypted
    endpoint.secret_encrypted = crypto.encrypt(secret)
    endpoint.secret_rotated_at = timezone.now()
    endpoint.save(
        update_fields=[
            "previous_secret_encrypted",
            "secret_encrypted",
            "secret_rotated_at",
            "updated_at",
        ]
    )
    audit_record(
        actor=actor, project=endpoint.project_id, action="webhook_endpoint.rotate", obj=endpoint
    )
    return secret


@transaction.atomic
def endpoint_delete(*, endpoint: WebhookEndpoint, actor: User | None) -> None:
    audit_record(
        actor=actor, project=endpoint.project_id, action="webhook_endpoint.delete", obj=endpoint
    )
    endpoint.delete()


# --- the outbox ------------------------------------------------------------------------------


def _send_task(delivery_id: int, countdown: float | None = None) -> None:
    """After commit, never raising: a lost send is found by the outbox sweep."""

    def send() -> None:
        options: dict[str, Any] = {"queue": "steps"}
        if countdown:
            options["countdown"] = countdown
        try:
            app.send_task("projects.webhook_deliver", args=[delivery_id], **options)
        except Exception as exc:  # broker down: the outbox sweep re-sends
            logger.warning("could not send webhook delivery %s: %s", delivery_id, exc)

    transaction.on_commit(send)


def _message(event_type: str, data: dict[str, Any], at: datetime | None = None) -> dict[str, Any]:
    moment = at or timezone.now()
    return {"type": event_type, "timestamp": moment.isoformat(), "data": data}


def _retry_window() -> timedelta:
    return timedelta(hours=settings.SPARKOPS_WEBHOOK_RETRY_HOURS)


def _delivery(endpoint: WebhookEndpoint, event_type: str, message: dict[str, Any]) -> Any:
    delivery = WebhookDelivery.objects.create(
        endpoint=endpoint,
        event_type=event_type,
        payload=message,
        webhook_id=_new_webhook_id(),
        retry_until=timezone.now() + _retry_window(),
    )
    _send_task(delivery.pk)
    return delivery


def event_emit(
    *,
    project_id: Any,
    event_type: str,
    data: dict[str, Any],
    at: datetime | None = None,
    endpoints: list[WebhookEndpoint] | None = None,
) -> list[WebhookDelivery]:
    """Queue `event_type` for every enabled endpoint of the project that subscribes to it. Call
    inside the transaction that records the event."""
    if endpoints is None:
        endpoints = list(WebhookEndpoint.objects.filter(project_id=project_id, enabled=True))
    message = _message(event_type, data, at)
    return [
        _delivery(endpoint, event_type, message)
        for endpoint in endpoints
        if endpoint.subscribes_to(event_type)
    ]


@transaction.atomic
def endpoint_ping(*, endpoint: WebhookEndpoint, actor: User | None) -> WebhookDelivery:
    """A `ping` message to this endpoint (whatever it subscribes to, even when disabled)."""
    data = {
        "endpoint": endpoint.pk,
        "project": {"id": str(endpoint.project_id)},
        "message": "Ping from Spark-Ops.",
    }
    delivery = _delivery(endpoint, PING, _message(PING, data))
    audit_record(
        actor=actor, project=endpoint.project_id, action="webhook_endpoint.ping", obj=endpoint
    )
    return delivery


@transaction.atomic
def delivery_redeliver(*, delivery: WebhookDelivery, actor: User | None) -> WebhookDelivery:
    """Send a delivered or failed message again: same `webhook-id` (receivers dedupe on it),
    a fresh 24 h retry window."""
    locked = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
    if locked.status == WebhookDelivery.Status.PENDING:
        raise Conflict("This delivery is still being attempted.")
    locked.status = WebhookDelivery.Status.PENDING
    locked.next_retry_at = None
    locked.claimed_until = None
    locked.retry_until = timezone.now() + _retry_window()
    locked.save(update_fields=["status", "next_retry_at", "claimed_until", "retry_until"])
    _send_task(locked.pk)
    audit_record(
        actor=actor,
        project=locked.endpoint.project_id,
        action="webhook_endpoint.redeliver",
        obj=locked.endpoint,
        changes={"delivery": locked.pk},
    )
    return locked


# --- sending ---------------------------------------------------------------------------------


def _claim(delivery_id: int, now: datetime) -> bool:
    hold = timedelta(
        seconds=settings.SPARKOPS_WEBHOOK_TIMEOUT + settings.SPARKOPS_OUTBOUND_CONNECT_TIMEOUT + 30
    )
    return bool(
        WebhookDelivery.objects.due(now).filter(pk=delivery_id).update(claimed_until=now + hold)
    )


def _backoff(attempt: int) -> float | None:
    """Seconds before attempt `attempt + 1`, or None when the schedule is exhausted."""
    schedule = settings.SPARKOPS_WEBHOOK_RETRY_SCHEDULE
    return float(schedule[attempt - 1]) if attempt - 1 < len(schedule) else None


def delivery_attempt(*, delivery_id: int) -> WebhookDelivery | None:
    """One attempt, if the delivery is due and nobody else holds it; None otherwise."""
    now = timezone.now()
    if not _claim(delivery_id, now):
        return None
    delivery = WebhookDelivery.objects.select_related("endpoint").get(pk=delivery_id)
    endpoint = delivery.endpoint
    if not endpoint.enabled and delivery.event_type != PING:
        return _record(
            delivery, now, ok=False, retry=False, error="The endpoint is disabled.", latency=None
        )
    body = json.dumps(delivery.payload, separators=(",", ":"), ensure_ascii=False)
    timestamp = int(now.timestamp())
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": delivery.webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(
            secrets_=signing_secrets(endpoint, now),
            webhook_id=delivery.webhook_id,
            timestamp=timestamp,
            body=body,
        ),
    }
    release_connection()  # deliveries run on the steps queue: no connection held for the wait
    try:
        response = egress.request(
            "POST",
            endpoint.url,
            headers=headers,
            content=body.encode(),
            timeout=settings.SPARKOPS_WEBHOOK_TIMEOUT,
            max_bytes=settings.SPARKOPS_WEBHOOK_MAX_RESPONSE_BYTES,
            follow_redirects=False,
        )
    except egress.EgressDenied as exc:
        return _record(delivery, now, ok=False, retry=False, error=exc.detail, latency=None)
    except egress.EgressError as exc:
        return _record(delivery, now, ok=False, retry=exc.retryable, error=exc.detail, latency=None)
    code = response.status_code
    ok = 200 <= code < 300
    retry = code == 429 or code >= 500
    error = "" if ok else f"HTTP {code}" + (" (redirects are not followed)" if code < 400 else "")
    return _record(
        delivery,
        now,
        ok=ok,
        retry=retry,
        error=error,
        latency=response.elapsed_ms,
        status_code=code,
        body=response.text()[:_RESPONSE_SNIPPET],
    )


@transaction.atomic
def _record(
    delivery: WebhookDelivery,
    started: datetime,
    *,
    ok: bool,
    retry: bool,
    error: str,
    latency: float | None,
    status_code: int | None = None,
    body: str = "",
) -> WebhookDelivery:
    now = timezone.now()
    attempt = delivery.attempt + 1
    entry = {
        "attempt": attempt,
        "at": started.isoformat(),
        "status_code": status_code,
        "latency_ms": round(latency, 1) if latency is not None else None,
        "error": error,
    }
    delivery.attempt = attempt
    delivery.response_status = status_code
    delivery.response_body = body
    delivery.latency_ms = latency
    delivery.error = error
    delivery.claimed_until = None
    delivery.log = [*(delivery.log or []), entry][-_LOG_LIMIT:]
    countdown = None
    if ok:
        delivery.status = WebhookDelivery.Status.DELIVERED
        delivery.delivered_at = now
        delivery.next_retry_at = None
    else:
        wait = _backoff(attempt) if retry else None
        if wait is not None and now + timedelta(seconds=wait) <= delivery.retry_until:
            delivery.next_retry_at = now + timedelta(seconds=wait)
            if wait <= settings.SPARKOPS_RETRY_COUNTDOWN_MAX:
                countdown = wait
        else:
            delivery.status = WebhookDelivery.Status.FAILED
            delivery.next_retry_at = None
            if retry:
                delivery.error = f"{error}; gave up after {attempt} attempt(s)"
    delivery.save(
        update_fields=[
            "attempt",
            "status",
            "response_status",
            "response_body",
            "latency_ms",
            "error",
            "claimed_until",
            "log",
            "delivered_at",
            "next_retry_at",
        ]
    )
    if delivery.status == WebhookDelivery.Status.PENDING and countdown is not None:
        _send_task(delivery.pk, countdown=countdown)  # longer waits: the outbox sweep sends
    outcome = _outcome(delivery, ok=ok, retry=retry)
    transaction.on_commit(lambda: metrics.webhook_deliveries.labels(outcome).inc())
    if delivery.event_type != PING:
        _endpoint_health(delivery.endpoint_id, ok=ok, now=now, error=delivery.error)
    return delivery


def _outcome(delivery: WebhookDelivery, *, ok: bool, retry: bool) -> str:
    """The attempt's label in sparkops_webhook_deliveries_total: delivered; retrying (a retry
    is scheduled); gave_up (retryable, but the schedule or the 24 h window is spent); failed
    (final: a 4xx, a 3xx, a refused address, a disabled endpoint)."""
    if ok:
        return "delivered"
    if delivery.status == WebhookDelivery.Status.PENDING:
        return "retrying"
    return "gave_up" if retry else "failed"


def _endpoint_health(endpoint_id: int, *, ok: bool, now: datetime, error: str) -> None:
    endpoints = WebhookEndpoint.objects.filter(pk=endpoint_id)
    if ok:
        endpoints.filter(failing_since__isnull=False).update(failing_since=None)
        return
    endpoints.filter(failing_since__isnull=True).update(failing_since=now)
    limit = timedelta(hours=settings.SPARKOPS_WEBHOOK_DISABLE_AFTER_HOURS)
    since = endpoints.values_list("failing_since", flat=True).first()
    if since is None or now - since < limit:
        return
    reason = (
        f"Disabled automatically at {now:%Y-%m-%d %H:%M} UTC: every delivery has failed since "
        f"{since:%Y-%m-%d %H:%M} UTC. Last error: {error or 'unknown'}. Fix the receiver, then "
        "enable the endpoint again."
    )
    disabled = endpoints.filter(enabled=True).update(
        enabled=False, disabled_reason=reason, disabled_at=now
    )
    if disabled:
        logger.warning("webhook endpoint %s disabled: %s", endpoint_id, reason)


def outbox_sweep() -> dict[str, int]:
    """Re-send what is due and not held: retries whose backoff waited in the database, and rows
    whose after-commit task was lost (older than a grace period). Safe to run anywhere, any
    number of times: the claim in delivery_attempt() decides who sends."""
    now = timezone.now()
    grace = now - timedelta(seconds=settings.SPARKOPS_WEBHOOK_OUTBOX_GRACE)
    due = (
        WebhookDelivery.objects.due(now)
        .filter(Q(next_retry_at__isnull=False) | Q(created_at__lt=grace))
        .order_by("next_retry_at", "pk")
        .values_list("pk", flat=True)[:1000]
    )
    sent = 0
    with transaction.atomic():
        for delivery_id in due:
            _send_task(delivery_id)
            sent += 1
    return {"sent": sent}
