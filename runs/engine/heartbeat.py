"""Heartbeats for running steps: one daemon thread (a greenlet under gevent) per worker process
refreshes `heartbeat_at` of every step attempt executing in that process, so a step blocked in
a long model call still looks alive, and a killed worker's steps go silent and get recovered."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from runs.models import RunStep
from sparkops.db import reconnecting

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_running: dict[int, int] = {}  # step id -> attempt
_thread: threading.Thread | None = None
_wake = threading.Event()


def _beat_once() -> None:
    with _lock:
        beating = dict(_running)
    if not beating:
        return
    # One UPDATE per attempt number, not per step: a gevent worker has hundreds of steps in
    # flight, nearly all on their first attempt.
    by_attempt: dict[int, list[int]] = {}
    for step_id, attempt in beating.items():
        by_attempt.setdefault(attempt, []).append(step_id)
    now = timezone.now()
    for attempt, step_ids in by_attempt.items():
        RunStep.objects.filter(
            pk__in=step_ids, attempt=attempt, status=RunStep.Status.RUNNING
        ).update(heartbeat_at=now)


def _loop() -> None:
    interval = float(settings.SPARKOPS_HEARTBEAT_SECONDS)
    while True:
        _wake.wait(interval)
        _wake.clear()
        try:
            # The update is idempotent: on a connection the server dropped, beat again on a
            # fresh one now rather than skip a beat (steps silent too long look dead).
            if _running:
                reconnecting(_beat_once)
        except Exception:
            logger.exception("heartbeat failed")
        try:
            close_old_connections()
            if not _running:
                connection.close()
        except Exception:  # a broken connection must not end the heartbeat of every step
            logger.exception("heartbeat: closing its connection failed")


def _ensure_thread() -> None:
    global _thread
    with _lock:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_loop, name="sparkops-heartbeat", daemon=True)
            _thread.start()


@contextlib.contextmanager
def beating(step_id: int, attempt: int) -> Iterator[None]:
    _ensure_thread()
    with _lock:
        _running[step_id] = attempt
    try:
        yield
    finally:
        with _lock:
            _running.pop(step_id, None)
