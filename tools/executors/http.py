"""HTTP tools: render the request from the tool's config over `args` and `secrets`, send it
through `sparkops.egress` (the only way out), retry what may succeed on a second try, and
report the response with every secret redacted.

Files: `body_file` sends a file of the project as the whole body, `multipart` sends parts
(a value that renders to a file reference is a file part, anything else a form field), and
`save_response_as_file` stores the response body as a new file (secrets redacted from its
bytes, at most SPARKOPS_FILE_MAX_BYTES) whose reference is the output."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

from django.conf import settings

from projects.files import file_read, file_ref, file_resolve, file_save
from projects.models import File, Project
from projects.secrets import SecretBag
from sparkops import egress, logcontext, templating
from sparkops.db import release_connection
from sparkops.errors import InvalidInput, SparkOpsError

from ..schema import static_origin
from .result import FileScope, ToolResult

DEFAULT_RETRY_BACKOFF_SECONDS = 0.5
MAX_RETRY_DELAY_SECONDS = 5.0
ERROR_BODY_CHARS = 500
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504}) | frozenset(range(505, 600))


class _RenderError(Exception):
    pass


def _render(value: Any, context: dict[str, Any], where: str) -> Any:
    try:
        return templating.render_value(value, context)
    except SparkOpsError as exc:  # template errors, a missing secret
        raise _RenderError(f"Could not render {where}: {exc.detail}") from None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _header_value(name: str, value: Any) -> str:
    text = _text(value)
    if any(ch in text for ch in "\r\n\0"):
        raise _RenderError(f"Header {name} contains a line break after rendering.")
    return text


def _query(rendered: dict[str, Any]) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for name, value in rendered.items():
        for item in value if isinstance(value, list) else [value]:
            if item is not None:
                params.append((name, _text(item)))
    return params


class _Request:
    """The rendered request and the derived secret forms to redact from what comes back."""

    def __init__(
        self,
        config: dict[str, Any],
        arguments: dict[str, Any],
        secrets: SecretBag,
        idempotency_key: str | None,
        files: FileScope | None = None,
    ) -> None:
        context = {"args": arguments, "secrets": secrets.template_view()}
        self.sensitive: list[str] = []
        self.scope = files
        self.content: bytes | None = None
        self.parts: list[tuple[str, tuple[str | None, bytes, str | None]]] = []
        self.method = config["method"].upper()
        url = _render(config["url"], context, "config.url")
        if not isinstance(url, str):
            raise _RenderError("config.url must render to a string.")
        origin = static_origin(config["url"])
        if origin is None and secrets.redact(arguments) != arguments:
            # The workflow read a secret and passes it in the arguments, which also pick the
            # host: refused at save time too, checked here in case the tool changed since.
            raise _RenderError(
                "The arguments carry a secret, but this tool's URL takes its scheme or host "
                "from the arguments: a secret could be sent anywhere."
            )
        if origin is not None and static_origin(url) != origin:
            raise _RenderError(
                f"The arguments changed the URL's scheme or host (expected {origin})."
            )
        self.url = url
        headers = _render(config.get("headers") or {}, context, "config.headers")
        self.headers = {name: _header_value(name, value) for name, value in headers.items()}
        self.params = _query(_render(config.get("query") or {}, context, "config.query"))
        self.body = _render(config["body"], context, "config.body") if "body" in config else None
        if "body_file" in config:
            file = self._file(
                _render(config["body_file"], context, "config.body_file"), "body_file"
            )
            self.content = file_read(file)
            if not any(name.lower() == "content-type" for name in self.headers):
                self.headers["Content-Type"] = file.content_type
        for name, template in (config.get("multipart") or {}).items():
            value = _render(template, context, f"config.multipart.{name}")
            if isinstance(value, dict) and "file" in value:
                file = self._file(value, f"multipart.{name}")
                self.parts.append((name, (file.name, file_read(file), file.content_type)))
            else:  # a form field: a part without a file name
                self.parts.append((name, (None, _text(value).encode(), None)))
        self.response_name = ""
        if config.get("save_response_as_file") and files is None:
            raise _RenderError("This tool saves its response as a file, which needs a project.")
        if config.get("response_file_name"):
            name = _render(config["response_file_name"], context, "config.response_file_name")
            self.response_name = _text(name)
        self._auth(config.get("auth") or {"type": "none"}, secrets)
        if idempotency_key:
            self.headers["X-Idempotency-Key"] = _header_value("X-Idempotency-Key", idempotency_key)

    def _file(self, value: Any, where: str) -> File:
        if self.scope is None:
            raise _RenderError(f"config.{where}: this tool sends a file, which needs a project.")
        try:
            return file_resolve(project=self.scope.project, value=value, where=where)
        except InvalidInput as exc:
            raise _RenderError(f"config.{where}: {' '.join(exc.errors[where])}") from None

    def _secret(self, secrets: SecretBag, name: str) -> str:
        try:
            return secrets[name]
        except SparkOpsError as exc:
            raise _RenderError(f"config.auth: {exc.detail}") from None

    def _auth(self, auth: dict[str, Any], secrets: SecretBag) -> None:
        kind = auth.get("type", "none")
        if kind == "bearer":
            self.headers["Authorization"] = f"Bearer {self._secret(secrets, auth['secret'])}"
        elif kind == "api_key":
            self.headers[auth.get("header") or "X-API-Key"] = self._secret(secrets, auth["secret"])
        elif kind == "basic":
            if auth.get("username_secret"):
                username = self._secret(secrets, auth["username_secret"])
            else:
                username = auth.get("username", "")
            password = self._secret(secrets, auth["password_secret"])
            token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
            self.headers["Authorization"] = f"Basic {token}"
            self.sensitive.append(token)
            logcontext.add_secrets([token])

    def redact(self, secrets: SecretBag, value: Any) -> Any:
        return secrets.redact(value, self.sensitive)


def _output(response: egress.EgressResponse, method: str) -> Any:
    if method == "HEAD" or not response.content:
        return None
    if "json" in response.headers.get("content-type", "").lower():
        try:
            return response.json()
        except ValueError:
            pass
    return response.text()


_FILENAME = re.compile(r"filename\*?=(?:UTF-8'')?\"?([^\";]+)\"?", re.IGNORECASE)


def _saved(
    response: egress.EgressResponse, request: _Request, secrets: SecretBag
) -> dict[str, Any]:
    """Store the response body as a file of the scope's project (secrets redacted from its
    bytes, a text file through the scope's content rules) and return its reference;
    InvalidInput when there is nothing to store."""
    scope = request.scope
    assert scope is not None  # checked before the request was sent
    match = _FILENAME.search(response.headers.get("content-disposition", ""))
    name = request.response_name or (match.group(1) if match else "") or "response"
    name = secrets.redact(name, request.sensitive)
    content = secrets.redact_bytes(response.content, request.sensitive)
    if scope.scan_text is not None:
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:  # binary: no text for content rules to read
            pass
        else:
            content = scope.scan_text(text).encode()
    saved = file_save(
        project=scope.project if isinstance(scope.project, Project) else _project(scope.project),
        name=name,
        content=content,
        source=File.Source.RUN if scope.run_id else File.Source.UPLOAD,
        run_id=scope.run_id,
        node_id=scope.node_id,
        uploaded_by=scope.actor,
    )
    return file_ref(saved)


def _success(
    response: egress.EgressResponse, request: _Request, secrets: SecretBag, save: bool
) -> dict[str, Any]:
    """The result of a 2xx/3xx answer: its body, or the reference of the file it was saved as."""
    status = response.status_code
    if not save:
        output = request.redact(secrets, _output(response, request.method))
        return {"output": output, "ok": True, "http_status": status}
    try:
        saved = _saved(response, request, secrets)
    except InvalidInput as exc:
        error = secrets.redact(f"Cannot save the response as a file: {exc.detail}")
        return {"output": None, "ok": False, "http_status": status, "error": error}
    return {"output": saved, "ok": True, "http_status": status}


def _project(project_id: Any) -> Project:
    return Project.objects.get(pk=project_id)


def _retry_after(response: egress.EgressResponse) -> float | None:
    value = response.headers.get("retry-after", "").strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    return None


def _delay(attempt: int, backoff: float, hint: float | None) -> float:
    delay = backoff * (2 ** (attempt - 1))
    if hint is not None:
        delay = max(delay, hint)
    return min(delay, MAX_RETRY_DELAY_SECONDS)


def _snippet(output: Any) -> str:
    text = _text(output) if output is not None else ""
    text = " ".join(text.split())
    return text[:ERROR_BODY_CHARS] + ("…" if len(text) > ERROR_BODY_CHARS else "")


def execute_http(
    *,
    config: dict[str, Any],
    arguments: dict[str, Any],
    secrets: SecretBag,
    idempotency_key: str | None = None,
    timeout: float | None = None,
    files: FileScope | None = None,
) -> ToolResult:
    started = time.monotonic()

    def result(**fields: Any) -> ToolResult:
        elapsed = round((time.monotonic() - started) * 1000.0, 3)
        return ToolResult(latency_ms=elapsed, **fields)

    save = bool(config.get("save_response_as_file"))
    try:
        request = _Request(config, arguments, secrets, idempotency_key, files)
    except _RenderError as exc:
        return result(output=None, ok=False, error=secrets.redact(str(exc)))
    # A response saved as a file may be as large as a file; otherwise the outbound cap holds.
    max_bytes = int(settings.SPARKOPS_FILE_MAX_BYTES) if save else None

    per_try = float(config.get("timeout_seconds") or settings.SPARKOPS_OUTBOUND_READ_TIMEOUT)
    if timeout is not None:
        per_try = min(per_try, float(timeout))
    deadline = None if timeout is None else started + float(timeout)
    retries = int(config.get("retries") or 0)
    backoff = float(config.get("retry_backoff_seconds", DEFAULT_RETRY_BACKOFF_SECONDS))

    # The request is rendered (secrets read): no connection held for the wait (sparkops.db).
    release_connection()
    attempt = 0
    while True:
        attempt += 1
        hint: float | None = None
        this_try = per_try
        if deadline is not None:
            this_try = max(min(per_try, deadline - time.monotonic()), 0.05)
        try:
            response = egress.request(
                request.method,
                request.url,
                headers=request.headers,
                params=request.params or None,
                json=request.body,
                content=request.content,
                files=request.parts or None,
                timeout=this_try,
                max_bytes=max_bytes,
            )
        except egress.EgressDenied as exc:
            error = f"Request refused: {exc.detail}"
            return result(output=None, ok=False, error=request.redact(secrets, error))
        except egress.EgressError as exc:
            error, retryable, status, output = str(exc.detail), exc.retryable, None, None
            if save and "too large" in error:
                error = (
                    f"The response is larger than the file limit of {max_bytes} bytes "
                    f"(SPARKOPS_FILE_MAX_BYTES): {error}"
                )
        else:
            status = response.status_code
            if status < 400:
                return result(**_success(response, request, secrets, save))
            output = request.redact(secrets, _output(response, request.method))
            retryable = status in RETRYABLE_STATUSES
            error = f"HTTP {status}"
            if output is not None:
                error += f": {_snippet(output)}"
            hint = _retry_after(response)
        if retryable and attempt <= retries:
            delay = _delay(attempt, backoff, hint)
            if deadline is None or deadline - time.monotonic() > delay + 0.05:
                time.sleep(delay)
                continue
        if attempt > 1:
            error += f" (after {attempt} attempts)"
        return result(
            output=output,
            ok=False,
            http_status=status,
            error=request.redact(secrets, error),
            retryable=retryable,
        )
