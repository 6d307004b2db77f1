"""Run context on log lines: `run_id`, `project_id`, `step` (and `attempt`) on every log record
emitted while the engine works on a run, whatever logger emits it.

The engine opens a `scope()` around a unit of work (one step attempt, one planning pass) and
`bind()`s what it learns inside it; `RunContextFilter` (installed on the console handler in
settings.LOGGING) copies the current fields onto each record, and the JSON formatter writes them
as top-level keys. A ContextVar, not a thread-local, so a Celery thread or an asyncio task each
see only their own run."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from sparkops import tracing

_fields: ContextVar[dict[str, Any] | None] = ContextVar("sparkops_log_context", default=None)

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def scope(**fields: Any) -> Iterator[dict[str, Any]]:
    """A new scope that inherits the current fields; `bind()` inside it lasts until it closes."""
    current = _fields.get() or {}
    token = _fields.set({**current, **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield _fields.get() or {}
    finally:
        _fields.reset(token)


def scoped(func: F) -> F:
    """Run `func` in a fresh scope (so what it binds never leaks to the caller's log lines)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with scope():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def bind(**fields: Any) -> None:
    """Add fields to the innermost open scope. Outside any scope this does nothing: a bare
    bind would stick to the thread's context for good."""
    current = _fields.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


def current() -> dict[str, Any]:
    return dict(_fields.get() or {})


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
