"""Inbound webhooks: `POST /api/v1/hooks/{token}` starts a run of the trigger's workflow. This
module keeps the triggers and checks a delivery (token, signature, size, input mapping);
`runs.triggers.hooks` starts the run.

The token is the credential (only its SHA-256 is stored; it is shown once and rotatable); a
trigger may also require a signature over the raw body: Standard Webhooks (`webhook-id`,
`webhook-timestamp`, `webhook-signature`, 5-minute tolerance, verified by the
`standardwebhooks` package) or GitHub's `X-Hub-Signature-256`. A delivery id
(`webhook-id`, `X-GitHub-Delivery`, `Idempotency-Key` or `X-Request-Id`) is recorded with the
run it started under a unique constraint, so a redelivery answers the same run.

Replay window: Standard Webhooks signs `webhook-timestamp` (5-minute tolerance in the
library; `tolerance_seconds` can narrow it). GitHub signs the body only and sends no time, so
a captured delivery can be replayed under a fresh `X-GitHub-Delivery`; a `github` trigger can
opt in to a window over a signed time: `timestamp_header` (the header's value is signed with
the body, HMAC-SHA256 of `<timestamp>.<body>`, for GitHub-style senders that send one) or
`timestamp_field` (a time inside the signed JSON body).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from accounts.models import User
from projects import crypto
from sparkops import templating
from sparkops.audit import audit_record
from sparkops.errors import InvalidInput, NotFound, SparkOpsError, Unprocessable

from .models import WebhookTrigger, Workflow

TOKEN_PREFIX = "whk_"
EDITABLE_FIELDS = {
    "name",
    "description",
    "signature",
    "secret",
    "input_mapping",
    "enabled",
    "timestamp_header",
    "timestamp_field",
    "tolerance_seconds",
}
STANDARD_TOLERANCE = 300  # seconds; the standardwebhooks library's own window
MAX_TOLERANCE = 86_400
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}$")
MAPPING_ROOTS = frozenset({"body", "headers", "query"})
# Checked in this order; the first one present is the delivery id.
DELIVERY_HEADERS = ("webhook-id", "x-github-delivery", "idempotency-key", "x-request-id")
# Never offered to mapping templates.
_PRIVATE_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


class InvalidSignature(SparkOpsError):
    status_code = 401
    error_type = "invalid_signature"


class PayloadTooLarge(SparkOpsError):
    status_code = 413
    error_type = "payload_too_large"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_standard_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def trigger_secret(trigger: WebhookTrigger) -> str:
    return crypto.decrypt(trigger.secret_encrypted) if trigger.secret_encrypted else ""


# --- validation ------------------------------------------------------------------------------


def mapping_clean(mapping: Any, roots: frozenset[str], field: str = "input_mapping") -> Any:
    """A mapping template (any JSON; its strings are templates) that compiles and reads only
    `roots`. None means "no mapping"."""
    if mapping is None:
        return None
    if not isinstance(mapping, dict | str):
        raise InvalidInput(
            "Invalid input.", errors={field: ["Must be a JSON object (or a template string)."]}
        )
    try:
        for value in _strings(mapping):
            templating.check_syntax(value)
        unknown = templating.referenced_roots(mapping) - roots
    except templating.TemplateError as exc:
        raise InvalidInput("Invalid input.", errors={field: [str(exc.detail)]}) from None
    if unknown:
        raise InvalidInput(
            "Invalid input.",
            errors={
                field: [
                    f"Unknown name(s) {', '.join(sorted(unknown))}; templates may use "
                    f"{', '.join(sorted(roots))}."
                ]
            },
        )
    return mapping


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return []


def trigger_clean(fields: dict[str, Any]) -> dict[str, Any]:
    """Checks the fields a create or update sets (the admin form calls this too)."""
    cleaned = dict(fields)
    errors: dict[str, list[str]] = {}
    if "name" in cleaned and not str(cleaned["name"] or "").strip():
        errors["name"] = ["A name is required."]
    if "signature" in cleaned and cleaned["signature"] not in WebhookTrigger.Signature.values:
        errors["signature"] = [f"Must be one of: {', '.join(WebhookTrigger.Signature.values)}."]
    secret = cleaned.get("secret")
    if secret is not None and not isinstance(secret, str):
        errors["secret"] = ["Must be a string."]
    elif secret and cleaned.get("signature") == WebhookTrigger.Signature.STANDARD:
        try:
            Webhook(secret)
        except Exception as exc:  # the library raises several types for a bad secret
            errors["secret"] = [f"Not a Standard Webhooks secret (whsec_<base64>): {exc}"]
    if "input_mapping" in cleaned:
        try:
            cleaned["input_mapping"] = mapping_clean(cleaned["input_mapping"], MAPPING_ROOTS)
        except InvalidInput as exc:
            errors.update(exc.errors or {})
    errors.update(_window_errors(cleaned))
    if errors:
        raise InvalidInput("Invalid input.", errors=errors)
    return cleaned


def _window_errors(cleaned: dict[str, Any]) -> dict[str, list[str]]:
    """`cleaned` holds the trigger's resulting signature, timestamp_header, timestamp_field and
    tolerance_seconds (the update service fills in the saved ones)."""
    errors: dict[str, list[str]] = {}
    signature = cleaned.get("signature")
    header = cleaned.get("timestamp_header") or ""
    field = cleaned.get("timestamp_field") or ""
    tolerance = cleaned.get("tolerance_seconds", STANDARD_TOLERANCE)
    if not isinstance(header, str) or (header and not _HEADER_NAME.match(header)):
        errors["timestamp_header"] = ["Must be an HTTP header name."]
    if not isinstance(field, str) or (field and not all(field.split("."))):
        errors["timestamp_field"] = ["Must be a dotted path such as `head_commit.timestamp`."]
    for name, value in (("timestamp_header", header), ("timestamp_field", field)):
        if value and signature != WebhookTrigger.Signature.GITHUB and name not in errors:
            errors[name] = [
                "Only for signature 'github' (standard signs webhook-timestamp already)."
            ]
    if header and field and "timestamp_field" not in errors:
        errors["timestamp_field"] = ["Give timestamp_header or timestamp_field, not both."]
    if isinstance(tolerance, bool) or not isinstance(tolerance, int):
        errors["tolerance_seconds"] = ["Must be an integer."]
    elif not 1 <= tolerance <= MAX_TOLERANCE:
        errors["tolerance_seconds"] = [f"Must be from 1 to {MAX_TOLERANCE} seconds."]
    elif signature == WebhookTrigger.Signature.STANDARD and tolerance > STANDARD_TOLERANCE:
        errors["tolerance_seconds"] = [
            f"At most {STANDARD_TOLERANCE} with signature 'standard' (its own window)."
        ]
    return errors


# --- writes ----------------------------------------------------------------------------------


@transaction.atomic
def webhook_trigger_create(
    *, actor: User | None, workflow: Workflow, name: str, **fields: Any
) -> tuple[WebhookTrigger, str, str]:
    """Returns (trigger, token, secret): the token and a generated secret are shown once."""
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(f"Cannot set {', '.join(sorted(unknown))}.")
    signature = fields.get("signature", WebhookTrigger.Signature.NONE)
    cleaned = trigger_clean({**fields, "name": name, "signature": signature})
    secret = cleaned.pop("secret", None) or ""
    if signature != WebhookTrigger.Signature.NONE and not secret:
        secret = new_standard_secret()
    token = _new_token()
    trigger = WebhookTrigger.objects.create(
        project_id=workflow.project_id,
        workflow=workflow,
        token_prefix=token[:12],
        token_hash=token_hash(token),
        secret_encrypted=crypto.encrypt(secret) if secret else "",
        created_by=actor,
        **cleaned,
    )
    audit_record(
        actor=actor,
        project=workflow.project_id,
        action="webhook_trigger.create",
        obj=trigger,
        changes=cleaned,
    )
    return trigger, token, secret


@transaction.atomic
def webhook_trigger_update(
    *, trigger: WebhookTrigger, actor: User | None, **fields: Any
) -> tuple[WebhookTrigger, str]:
    """Returns (trigger, secret): `secret` is non-empty only when one was generated because a
    signature mode was switched on without a secret."""
    unknown = set(fields) - EDITABLE_FIELDS
    if unknown:
        raise InvalidInput(f"Cannot change {', '.join(sorted(unknown))}.")
    signature = fields.get("signature", trigger.signature)
    window = {
        name: getattr(trigger, name)
        for name in ("timestamp_header", "timestamp_field", "tolerance_seconds")
    }
    cleaned = trigger_clean({**window, **fields, "signature": signature})
    cleaned = {k: v for k, v in cleaned.items() if k in fields}
    generated = ""
    secret = cleaned.pop("secret", None)
    if secret is not None:
        trigger.secret_encrypted = crypto.encrypt(secret) if secret else ""
    if signature != WebhookTrigger.Signature.NONE and not trigger.secret_encrypted:
        generated = new_standard_secret()
        trigger.secret_encrypted = crypto.encrypt(generated)
    for name, value in cleaned.items():
        setattr(trigger, name, value)
    trigger.save(update_fields=[*cleaned, "secret_encrypted", "updated_at"])
    changes = {**cleaned, **({"secret_changed": True} if secret is not None or generated else {})}
    audit_record(
        actor=actor,
        project=trigger.project_id,
        action="webhook_trigger.update",
        obj=trigger,
        changes=changes,
    )
    return trigger, generated


@transaction.atomic
def webhook_trigger_rotate(*, trigger: WebhookTrigger, actor: User | None) -> str:
    """A new token (returned once); the old one stops working at once."""
    token = _new_token()
    trigger.token_prefix = token[:12]
    trigger.token_hash = token_hash(token)
    trigger.save(update_fields=["token_prefix", "token_hash", "updated_at"])
    audit_record(
        actor=actor,
        project=trigger.project_id,
        action="webhook_trigger.rotate",
        obj=trigger,
        changes={"token_prefix": trigger.token_prefix},
    )
    return token


@transaction.atomic
def webhook_trigger_delete(*, trigger: WebhookTrigger, actor: User | None) -> None:
    audit_record(
        actor=actor, project=trigger.project_id, action="webhook_trigger.delete", obj=trigger
    )
    trigger.delete()


# --- receiving -------------------------------------------------------------------------------


def webhook_trigger_for_token(token: str) -> WebhookTrigger:
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise NotFound("Unknown webhook.")
    trigger = (
        WebhookTrigger.objects.select_related("workflow", "project")
        .filter(token_hash=token_hash(token))
        .first()
    )
    if trigger is None:
        raise NotFound("Unknown webhook.")
    return trigger


def check_size(length: int) -> None:
    limit = settings.SPARKOPS_WEBHOOK_MAX_BYTES
    if length > limit:
        raise PayloadTooLarge(f"The body is larger than the limit of {limit} bytes.")


def verify_signature(trigger: WebhookTrigger, body: bytes, headers: Mapping[str, str]) -> None:
    if trigger.signature == WebhookTrigger.Signature.NONE:
        return
    secret = trigger_secret(trigger)
    if trigger.signature == WebhookTrigger.Signature.STANDARD:
        try:
            Webhook(secret).verify(body, dict(headers), json_parse=False)
        except WebhookVerificationError as exc:
            raise InvalidSignature(f"Invalid webhook signature: {exc}.") from None
        except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
            raise InvalidSignature("Invalid webhook signature: malformed headers.") from None
        _check_window(trigger, _standard_time(headers), "webhook-timestamp")
        return
    signed = body
    header = trigger.timestamp_header
    stamp = ""
    if header:
        stamp = (headers.get(header.lower()) or "").strip()
        if not stamp:
            raise InvalidSignature(f"Invalid webhook signature: {header} is missing.")
        signed = stamp.encode() + b"." + body
    given = headers.get("x-hub-signature-256", "")
    expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    if not given:
        raise InvalidSignature("Invalid webhook signature: X-Hub-Signature-256 is missing.")
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise InvalidSignature("Invalid webhook signature: X-Hub-Signature-256 does not match.")
    if header:
        _check_window(trigger, _parse_time(stamp), header)
    elif trigger.timestamp_field:
        _check_window(trigger, _body_time(body, trigger.timestamp_field), trigger.timestamp_field)


def _parse_time(value: Any) -> float | None:
    """Unix seconds (number or digits) or an ISO 8601 time with an offset; None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if re.fullmatch(r"\d{1,12}(\.\d+)?", text):
        return float(text)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed.timestamp() if parsed.tzinfo is not None else None


def _standard_time(headers: Mapping[str, str]) -> float | None:
    return _parse_time(headers.get("webhook-timestamp", ""))


def _body_time(body: bytes, path: str) -> float | None:
    value: Any = _parse_body(body)
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return _parse_time(value)


def _check_window(trigger: WebhookTrigger, sent: float | None, where: str) -> None:
    if sent is None:
        raise InvalidSignature(
            f"Stale delivery refused: {where} holds no time (Unix seconds or ISO 8601 with an "
            "offset)."
        )
    age = time.time() - sent
    if abs(age) > trigger.tolerance_seconds:
        when = "old" if age > 0 else "in the future"
        raise InvalidSignature(
            f"Stale delivery refused: {where} is {abs(int(age))} seconds {when}, outside the "
            f"{trigger.tolerance_seconds}-second replay window."
        )


def delivery_id_of(headers: Mapping[str, str]) -> str | None:
    for name in DELIVERY_HEADERS:
        value = (headers.get(name) or "").strip()
        if value:
            return value[:255]
    return None


def _parse_body(body: bytes) -> Any:
    if not body.strip():
        return None
    text = body.decode("utf-8", errors="replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


def map_input(
    trigger: WebhookTrigger,
    body: bytes,
    headers: Mapping[str, str],
    query: Mapping[str, str],
) -> dict[str, Any]:
    parsed = _parse_body(body)
    if trigger.input_mapping is None:
        if not isinstance(parsed, dict):
            raise Unprocessable(
                "The body must be a JSON object (or the trigger needs an input mapping).",
                errors={"body": ["Must be a JSON object."]},
            )
        return parsed
    context = {
        "body": parsed,
        "headers": {k: v for k, v in headers.items() if k not in _PRIVATE_HEADERS},
        "query": dict(query),
    }
    try:
        value = templating.render_value(trigger.input_mapping, context)
    except templating.TemplateError as exc:
        raise Unprocessable(
            f"The input mapping failed: {exc.detail}", errors={"input_mapping": [str(exc.detail)]}
        ) from None
    if not isinstance(value, dict):
        raise Unprocessable(
            "The input mapping must produce a JSON object.",
            errors={"input_mapping": ["Must produce a JSON object."]},
        )
    return value
