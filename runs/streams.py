"""A run's event stream (Server-Sent Events: its stored events, then the live `llm.delta` tail)
and the limits on open streams. The API's `GET /api/v1/runs/{id}/stream` and the console's run
page (`/admin/runs/run/{id}/stream/`) both answer with `event_stream_response`; each checks
who may see the run first.

A stream holds a server thread for as long as it is open (gunicorn's gthread workers), so
unbounded streams starve every other request of the process, `/health` included. Two caps:

- **per user**, across every web process: `SPARKOPS_STREAMS_PER_USER` slots per user in the
  cache (Redis in production). A stream takes a free slot with `cache.add` and keeps it alive
  with `cache.touch`; a process that dies leaves slots that expire after `SLOT_TTL`.
- **per process**, in memory: `SPARKOPS_STREAMS_PER_PROCESS`, never more than the gunicorn
  worker's threads minus a quarter of them (at least one), so ordinary requests always find a
  thread. gunicorn tells us its thread count at worker start (`sparkops/gunicorn_conf.py`).

The cache failing open (sparkops.cache) lets the per-user cap through; the per-process cap
does not depend on the cache and still holds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.db import close_old_connections, connection
from django.http import HttpRequest, StreamingHttpResponse
from rest_framework.exceptions import Throttled

from sparkops import metrics
from sparkops.db import release_connection

from . import deltas
from .models import Run, RunEvent
from .serializers import RunEventSerializer

logger = logging.getLogger(__name__)

KEY = "sparkops-stream:{user}:{slot}"
RETRY_AFTER = 5  # seconds a refused client is asked to wait


def slot_ttl() -> float:
    """A slot outlives three missed refreshes (one per keep-alive) before it expires."""
    return max(3 * keepalive_seconds(), 3.0)


def keepalive_seconds() -> float:
    return float(settings.SPARKOPS_STREAM_KEEPALIVE_SECONDS)


class _Process:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.threads: int | None = None  # the server's threads per process, when known


_process = _Process()
DEFAULT_PER_PROCESS = 16


def set_server_threads(threads: int) -> None:
    """Called by gunicorn's `post_worker_init` with the worker's thread count."""
    _process.threads = threads
    limit = process_limit()
    if settings.SPARKOPS_STREAMS_PER_PROCESS is not None and limit < _configured():
        # Only an operator's own setting is worth a warning: the default (make run: 16
        # threads, 12 streams) is lowered quietly.
        logger.warning(
            "event streams limited to %d per process (SPARKOPS_STREAMS_PER_PROCESS=%d) so that "
            "%d of the %d server threads stay free for other requests",
            limit,
            settings.SPARKOPS_STREAMS_PER_PROCESS,
            threads - limit,
            threads,
        )


def _configured() -> int:
    value = settings.SPARKOPS_STREAMS_PER_PROCESS
    return DEFAULT_PER_PROCESS if value is None else int(value)


def process_limit() -> int:
    configured = _configured()
    threads = _process.threads
    if threads is None:  # runserver, tests: a thread per request, no pool to starve
        return configured
    return max(0, min(configured, threads - max(1, threads // 4)))


def open_streams() -> int:
    """Streams open in this process."""
    return _process.open


class StreamSlot:
    """One open stream: a per-user slot in the cache and one of the process's. `release()`
    is idempotent; `refresh()` keeps the user slot from expiring."""

    def __init__(self, user_id: object, key: str, token: str) -> None:
        self.user_id = user_id
        self.key = key
        self.token = token
        self.refreshed = time.monotonic()
        self.released = False
        self.lock = threading.Lock()

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self.refreshed < slot_ttl() / 3:
            return
        self.refreshed = now
        ttl = slot_ttl()
        if not cache.touch(self.key, ttl):  # expired meanwhile (e.g. Redis restarted empty)
            cache.add(self.key, self.token, ttl)

    def release(self) -> None:
        with self.lock:
            if self.released:
                return
            self.released = True
        with _process.lock:
            _process.open -= 1
        if cache.get(self.key) == self.token:
            cache.delete(self.key)


def acquire(user_id: object) -> StreamSlot:
    """A slot for a new stream of `user_id`, or `Throttled` (429, Retry-After)."""
    per_user = int(settings.SPARKOPS_STREAMS_PER_USER)
    token = uuid.uuid4().hex
    ttl = slot_ttl()
    key = next(
        (
            key
            for key in (KEY.format(user=user_id, slot=n) for n in range(per_user))
            if cache.add(key, token, ttl)
        ),
        None,
    )
    if key is None:
        metrics.streams_refused.labels("user").inc()
        raise Throttled(
            wait=RETRY_AFTER,
            detail=f"You have {per_user} event streams open (the limit per user); "
            "close one or retry later.",
        )
    with _process.lock:
        full = _process.open >= process_limit()
        if not full:
            _process.open += 1
    if full:
        if cache.get(key) == token:
            cache.delete(key)
        metrics.streams_refused.labels("process").inc()
        raise Throttled(
            wait=RETRY_AFTER,
            detail="This server has as many event streams open as it allows; retry later.",
        )
    return StreamSlot(user_id, key, token)


class LimitedStream:
    """Streaming content that gives its slot back when the server closes the response (a
    client gone, the stream ended, or never iterated at all): WSGI servers call `close()`."""

    def __init__(self, events: Iterator[str], slot: StreamSlot) -> None:
        self.events = events
        self.slot = slot

    def __iter__(self) -> Iterator[str]:
        return self.events

    def close(self) -> None:
        try:
            close = getattr(self.events, "close", None)
            if close is not None:
                close()
        finally:
            self.slot.release()


def resume_after(request: HttpRequest) -> int:
    """Where a stream starts: after `Last-Event-ID` (an EventSource reconnecting) or `?after=`."""
    return non_negative(request.headers.get("Last-Event-ID") or request.GET.get("after"))


def event_stream_response(run_id: Any, *, after: int, user_id: object) -> StreamingHttpResponse:
    """The run's events after `after` as an open stream of `user_id`'s, or `Throttled` (429)
    beyond the streams a user or this process may hold. Call it once the user may see the
    run."""
    slot = acquire(user_id)
    response = StreamingHttpResponse(
        LimitedStream(event_stream(run_id, after, slot), slot),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx: don't buffer the stream
    return response


def non_negative(value: Any) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return 0


def event_stream(run_id: Any, after: int, slot: StreamSlot) -> Iterator[str]:
    """Events after `after` until the run has finished. A keep-alive comment goes out every
    SPARKOPS_STREAM_KEEPALIVE_SECONDS without events: writing it to a closed connection is how
    the server notices a gone client (it then closes this generator). After
    SPARKOPS_STREAM_MAX_SECONDS the stream ends without `end`: the client reconnects with
    Last-Event-ID and takes its turn with everyone else for a slot."""
    poll = float(settings.SPARKOPS_STREAM_POLL_SECONDS)
    keepalive = keepalive_seconds()
    deadline = time.monotonic() + float(settings.SPARKOPS_STREAM_MAX_SECONDS)
    last_sent = time.monotonic()
    tail = deltas.Tail(run_id)  # from here on: the model's pieces sent after the client joined
    yield "retry: 2000\n\n"
    try:
        while time.monotonic() < deadline:
            slot.refresh()
            # Pieces already sent go out before the events read next (the `llm.call` recorded
            # after them among those).
            yield from _delta_frames(tail.wait(0))
            events = list(
                RunEvent.objects.filter(run_id=run_id, seq__gt=after).order_by("seq")[:500]
            )
            for event in events:
                after = event.seq
                data = json.dumps(RunEventSerializer(event).data, default=str)
                yield f"id: {event.seq}\nevent: {event.type}\ndata: {data}\n\n"
                last_sent = time.monotonic()
            if not events:
                finished = Run.objects.filter(pk=run_id, status__in=Run.FINISHED_STATUSES).exists()
                if finished and not RunEvent.objects.filter(run_id=run_id, seq__gt=after).exists():
                    yield "event: end\ndata: {}\n\n"
                    return
                if time.monotonic() - last_sent > keepalive:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
                if getattr(connection, "pool", None):
                    # Back to the pool between polls: a held stream must not hold one of the
                    # process's DB_POOL_MAX_SIZE connections for minutes.
                    release_connection()
                pieces = tail.wait(poll)
                if pieces:
                    yield from _delta_frames(pieces)
                    last_sent = time.monotonic()
    finally:
        tail.close()
        # An abandoned stream is closed by the garbage collector, in whatever thread (greenlet)
        # runs then, perhaps inside that one's transaction: closing its connection there would
        # break the transaction ("Cannot open a new connection in an atomic block").
        if not connection.in_atomic_block:
            close_old_connections()


def _delta_frames(pieces: list[dict[str, Any]]) -> Iterator[str]:
    """`llm.delta` events: no `id`, they are not stored and a reconnect does not replay them."""
    for piece in pieces:
        yield f"event: llm.delta\ndata: {json.dumps(piece, default=str)}\n\n"
