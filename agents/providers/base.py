"""The provider-neutral chat types every adapter speaks, and the one error they raise.

The engine builds a `ChatRequest`, an adapter turns it into its SDK's call and turns the answer
back into a `ChatResponse`; nothing outside `agents.providers` sees an SDK object.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

from sparkops import egress
from sparkops.errors import SparkOpsError

PROVIDERS = ("openai", "anthropic", "openai_compatible", "simulated")


@dataclass
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON schema of the arguments object


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: dict[str, Any] | None  # None when raw_arguments is not a JSON object
    raw_arguments: str


@dataclass
class Attachment:
    """A file sent with a user message (agents.attachments builds them): an image (`data`, its
    bytes in base64) that each adapter sends in its SDK's native form, or text (`text`: a text
    file, a PDF's extracted text) sent as a text part after the prompt."""

    name: str
    media_type: str
    kind: str  # "image" | "text"
    data: str = ""
    text: str = ""

    def as_text(self) -> str:
        return f'File "{self.name}" ({self.media_type}):\n{self.text}'


@dataclass
class ChatMessage:
    role: str  # "system" | "user" | "assistant" | "tool"
    content: str | None = None
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None  # on a "tool" message: the call it answers
    name: str | None = None  # on a "tool" message: the tool's name
    attachments: list[Attachment] = field(default_factory=list)  # on a "user" message


@dataclass
class ChatRequest:
    model: str
    messages: list[ChatMessage]
    tools: list[ToolSpec] = field(default_factory=list)
    temperature: float | None = None
    max_tokens: int | None = None
    # None asks for text; {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}
    # asks for JSON matching the schema (parsing is the engine's job).
    response_format: dict[str, Any] | None = None


@dataclass
class ChatResponse:
    content: str | None
    tool_calls: list[ToolCall]
    input_tokens: int
    output_tokens: int
    model: str
    finish_reason: str | None
    latency_ms: float
    provider: str


@dataclass
class ProviderConfig:
    provider: str  # one of PROVIDERS
    model: str
    api_key: str | None = None
    base_url: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    timeout: float = 60.0


# Called with each piece of the answer's text as a streamed answer brings it.
OnDelta = Callable[[str], None]


class Provider(Protocol):
    name: str

    def chat(self, request: ChatRequest, on_delta: OnDelta | None = None) -> ChatResponse: ...


class ProviderError(SparkOpsError):
    """A provider call failed. `retryable` tells the engine whether another attempt can help;
    `provider_status` is the HTTP status the provider answered, if it answered at all."""

    status_code = 502
    error_type = "provider_error"

    def __init__(
        self,
        detail: str,
        *,
        retryable: bool = False,
        provider_status: int | None = None,
        provider: str | None = None,
        error_type: str | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        extra: dict[str, Any] = {"retryable": retryable}
        if provider:
            extra["provider"] = provider
        if retry_after is not None:
            extra["retry_after"] = retry_after
        super().__init__(detail, extra=extra, status_code=status_code, error_type=error_type)
        self.retryable = retryable
        self.provider_status = provider_status
        self.provider = provider
        self.retry_after = retry_after  # seconds the provider asked us to wait, if it said

    @property
    def transient(self) -> bool:
        """Rate limited (429) or a server error (5xx): the engine retries these by default."""
        return self.provider_status is not None and (
            self.provider_status == 429 or self.provider_status >= 500
        )


def config_error(detail: str, *, provider: str | None = None) -> ProviderError:
    """An agent configured so that no call can succeed (unknown provider, missing key)."""
    return ProviderError(
        detail, provider=provider, error_type="provider_config_error", status_code=400
    )


def check_base_url(base_url: str | None, *, label: str, provider: str) -> None:
    """Refuse, before an SDK client is built (the SDKs raise their own URL errors from the
    constructor), a base URL the egress guard refuses whatever DNS answers: an agent saved
    before that check, or an address range refused since. Nothing connects."""
    problem = egress.static_url_problem(base_url) if base_url else None
    if problem is not None:
        raise connection_error(label, egress.EgressDenied(problem), provider=provider)


def status_error(
    label: str, status: int, message: str, *, provider: str, retry_after: float | None = None
) -> ProviderError:
    """Map an HTTP error answered by a provider to a ProviderError (with the wait its
    `Retry-After` asked for, on the retryable ones)."""
    suffix = f": {message}" if message else "."
    if status in (401, 403):
        return ProviderError(
            f"{label} rejected the credentials (HTTP {status}){suffix}",
            provider=provider,
            provider_status=status,
            error_type="provider_auth_error",
        )
    if status == 404:
        return ProviderError(
            f"{label} did not find the model or endpoint (HTTP 404){suffix}",
            provider=provider,
            provider_status=status,
            error_type="provider_not_found",
        )
    if status == 429:
        return ProviderError(
            f"{label} rate limit or quota exceeded (HTTP 429){suffix}",
            provider=provider,
            provider_status=status,
            error_type="provider_rate_limited",
            retryable=True,
            retry_after=retry_after,
        )
    if status == 408:
        return ProviderError(
            f"{label} timed out handling the request (HTTP 408){suffix}",
            provider=provider,
            provider_status=status,
            error_type="provider_timeout",
            status_code=504,
            retryable=True,
        )
    if status >= 500:
        return ProviderError(
            f"{label} server error (HTTP {status}){suffix}",
            provider=provider,
            provider_status=status,
            error_type="provider_error",
            retryable=True,
            retry_after=retry_after,
        )
    return ProviderError(
        f"{label} refused the request (HTTP {status}){suffix}",
        provider=provider,
        provider_status=status,
        error_type="provider_bad_request",
    )


@contextmanager
def sdk_errors(
    sdk: Any, base_error: type[Exception], *, label: str, config: ProviderConfig, provider: str
) -> Iterator[None]:
    """Turns what a call through an official SDK raises into a ProviderError: a timeout, no
    connection (or the egress guard's refusal), the provider's HTTP error (by status, its
    message without the API key), or an answer the SDK could not use (`base_error`, the SDK's
    root exception). The openai and anthropic SDKs name their exceptions alike."""
    try:
        yield
    except sdk.APITimeoutError as exc:
        raise timeout_error(label, config.timeout, provider=provider) from exc
    except sdk.APIConnectionError as exc:
        raise connection_error(label, exc, provider=provider) from exc
    except sdk.APIStatusError as exc:
        message = error_message(exc.body) or exc.message
        raise status_error(
            label,
            exc.status_code,
            redact(message, config.api_key),
            provider=provider,
            retry_after=retry_after_seconds(getattr(exc.response, "headers", None)),
        ) from exc
    except ProviderError:
        raise
    except SparkOpsError as exc:  # the egress guard, raised through the SDK unwrapped
        raise connection_error(label, exc, provider=provider) from exc
    except base_error as exc:
        raise ProviderError(
            f"{label} returned an unusable answer: {redact(str(exc), config.api_key)}",
            provider=provider,
        ) from exc


MAX_RETRY_AFTER = 3600.0


def retry_after_seconds(headers: Any, now: datetime | None = None) -> float | None:
    """The wait a provider asked for: `retry-after-ms` (OpenAI), else `Retry-After` in seconds
    or as an HTTP date. None when absent or unreadable; capped at an hour."""
    if not headers:
        return None
    seconds: float | None = None
    millis = headers.get("retry-after-ms")
    value = headers.get("retry-after")
    try:
        if millis is not None:
            seconds = float(millis) / 1000
        elif value is not None:
            seconds = float(value)
    except ValueError:
        seconds = None
    if seconds is None and value:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds is None or seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def error_message(body: object) -> str:
    """The message of a provider's error body: `{"message": ...}` (what the OpenAI SDK hands
    over, having taken the body's "error" object), `{"error": {"message": ...}}` (Anthropic's
    whole body), or plain text."""
    if isinstance(body, dict):
        for error in (body, body.get("error")):
            if isinstance(error, dict) and isinstance(error.get("message"), str):
                return error["message"]
    elif isinstance(body, str):
        return body
    return ""


def timeout_error(label: str, timeout: float, *, provider: str) -> ProviderError:
    return ProviderError(
        f"{label} did not answer within {timeout:g} seconds.",
        provider=provider,
        error_type="provider_timeout",
        status_code=504,
        retryable=True,
    )


def connection_error(label: str, exc: BaseException, *, provider: str) -> ProviderError:
    """A request that never got an HTTP answer. If the egress guard refused it, say so: that is
    a configuration problem no retry can fix."""
    denied = egress_denial(exc)
    if denied is not None:
        return ProviderError(
            f"{label} base URL refused by the outbound policy: {denied}",
            provider=provider,
            error_type="provider_egress_denied",
            status_code=400,
        )
    return ProviderError(
        f"Could not connect to {label}.",
        provider=provider,
        error_type="provider_unreachable",
        retryable=True,
    )


def egress_denial(exc: BaseException | None) -> str | None:
    """The message of a `SparkOpsError` (the egress guard's refusal) in `exc`'s cause chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, SparkOpsError) and not isinstance(exc, ProviderError):
            return exc.detail
        exc = exc.__cause__ or exc.__context__
    return None


def redact(message: str, secret: str | None, *, limit: int = 300) -> str:
    """A provider's error message, trimmed, with the API key removed wherever it appears."""
    message = " ".join(str(message).split())
    if secret:
        message = message.replace(secret, "[redacted]")
    if len(message) > limit:
        message = message[: limit - 1] + "…"
    return message


def parse_arguments(raw: str | None) -> dict[str, Any] | None:
    """Tool-call arguments as a dict, or None when the model sent something that is not a JSON
    object (the engine reports that back to the model). An empty string means no arguments."""
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
