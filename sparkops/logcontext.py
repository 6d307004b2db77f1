"""Run context on log lines: `run_id`, `project_id`, `step` (and `attempt`) on every log record
emitted while the engine works on a run, whatever logger emits it.

The engine opens a `scope()` around a unit of work (one step attempt, one planning pass) and
`bind()`s what it learns inside it; `RunContextFilter` (installed on the console handler in
settings.LOGGING) copies the current fields onto each record, and the JSON formatter writes them
as top-level keys. A ContextVar, not a thread-local, so a Celery thread or an asyncio task each
see only their own run.

Secrets: every project secret the code reads (`projects.secrets.SecretBag`) is registered with
`add_secrets()` in the current scope, in all the forms it travels in; `SecretRedactFilter`
(also on the console handler) replaces them with `***` in the message, the exception text and
string extras of every record, and strips query strings and userinfo from the URLs that HTTP
client libraries log. Nested scopes share the outermost scope's set, so a value read anywhere
in a unit of work stays hidden until that unit ends; web requests get a scope from
`LogScopeMiddleware`."""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, ParamSpec, TypeVar

from sparkops import tracing

_fields: ContextVar[dict[str, Any] | None] = ContextVar("sparkops_log_context", default=None)
_secrets: ContextVar[set[str] | None] = ContextVar("sparkops_log_secrets", default=None)

P = ParamSpec("P")
R = TypeVar("R")


@contextlib.contextmanager
def scope(**fields: Any) -> Iterator[dict[str, Any]]:
    """A new scope that inherits the current fields; `bind()` inside it lasts until it closes."""
    outermost = _fields.get() is None
    current = _fields.get() or {}
    token = _fields.set({**current, **{k: v for k, v in fields.items() if v is not None}})
    # The outermost scope owns a new set (keeping what was registered outside any scope).
    secrets_token = _secrets.set(set(_secrets.get() or ())) if outermost else None
    try:
        yield _fields.get() or {}
    finally:
        if secrets_token is not None:
            _secrets.reset(secrets_token)
        _fields.reset(token)


def scoped(func: Callable[P, R]) -> Callable[P, R]:
    """Run `func` in a fresh scope (so what it binds never leaks to the caller's log lines)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with scope():
            return func(*args, **kwargs)

    return wrapper


def bind(**fields: Any) -> None:
    """Add fields to the innermost open scope. Outside any scope this does nothing: a bare
    bind would stick to the thread's context for good."""
    current = _fields.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


def current() -> dict[str, Any]:
    return dict(_fields.get() or {})


def add_secrets(values: Any) -> None:
    """Hide `values` from every log line until the outermost scope closes. Outside any scope
    (a shell, a management command) they stay registered for the rest of the context."""
    found = _secrets.get()
    if found is None:
        found = set()
        _secrets.set(found)
    found.update(value for value in values if value)


def secrets_in_scope() -> frozenset[str]:
    return frozenset(_secrets.get() or ())


class LogScopeMiddleware:
    """One log scope per web request, so secrets read while serving it are hidden from its log
    lines and forgotten afterwards."""

    def __init__(self, get_response: Callable[..., Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        with scope():
            return self.get_response(request)


class RunContextFilter(logging.Filter):
    """Copies the current run context onto each record (never overwriting an explicit
    `extra=`), and the trace/span ids when a span is recording, so logs and traces join up."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_fields.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if tracing.enabled() and not hasattr(record, "trace_id"):
            ids = tracing.current_ids()
            if ids:
                record.trace_id, record.span_id = ids
        return True


#: Loggers of the HTTP client libraries (the egress client's and the LLM SDKs'): their request
#: lines carry full URLs.
HTTP_LOGGERS = frozenset({"httpx", "httpcore", "httpx2", "httpcore2", "openai", "anthropic"})
_URL = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?:[^/\s@\"'<>]*@)?(?P<rest>[^\s\"'<>?#]*)(?:\?[^\s\"'<>#]*)?"
)
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}


def strip_urls(text: str) -> str:
    """Every URL in `text` without its userinfo and query string."""
    return _URL.sub(lambda m: m.group("scheme") + m.group("rest"), text)


def _redact(text: str, needles: list[str]) -> str:
    for needle in needles:
        if needle in text:
            text = text.replace(needle, "***")
    return text


def _redact_value(value: Any, needles: list[str]) -> Any:
    if isinstance(value, str):
        return _redact(value, needles)
    if isinstance(value, dict):
        return {_redact_value(k, needles): _redact_value(v, needles) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v, needles) for v in value]
    return value


class SecretRedactFilter(logging.Filter):
    """Replaces the secrets registered in the current scope (see `add_secrets`) in the message,
    the exception text and the extras (strings, dicts, lists) of each record, and strips query
    strings and userinfo from URLs in the lines of HTTP client libraries. Installed on the
    handlers, so it sees the records of every logger, at every level."""

    def filter(self, record: logging.LogRecord) -> bool:
        needles = sorted(_secrets.get() or (), key=len, reverse=True)
        http = record.name.split(".", 1)[0] in HTTP_LOGGERS
        if not needles and not http:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: logging would print msg and args raw to stderr
            message = f"{record.msg} {record.args!r}"
        cleaned = strip_urls(message) if http else message
        cleaned = _redact(cleaned, needles)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = _redact(strip_urls(text) if http else text, needles)
            record.exc_info = None
        elif record.exc_text:
            record.exc_text = _redact(record.exc_text, needles)
        if record.stack_info:
            record.stack_info = _redact(record.stack_info, needles)
        for key, value in list(vars(record).items()):
            if needles and key not in _RECORD_FIELDS and isinstance(value, str | dict | list):
                setattr(record, key, _redact_value(value, needles))
        return True
