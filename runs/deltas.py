"""The live tail of model output: `llm.delta` events, each piece of a streamed answer as the
model sends it, for the event streams open on the run at that moment. Never stored: no
RunEvent row per token; the recorded `llm.call` event and the step's output hold the answer.

With Redis (REDIS_URL) a piece is a PUBLISH on the run's channel and every open stream
SUBSCRIBEs to it. On the embedded default (no Redis) the worker and the web process share a
disk instead: a piece is a line appended to the run's file under SPARKOPS_VAR_DIR/deltas, and
a stream reads the lines appended after it opened. Either way a stream sees the pieces sent
after it joined, never the ones before (those are in the recorded events). The sweeper
`prune()`s the files no stream needs any more."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from django.conf import settings

from runs.models import Run

CHANNEL = "sparkops:run-deltas:{run}"
_local = threading.local()


def _redis() -> redis.Redis:
    """This thread's client for the REDIS_URL of the moment (tests point it at a server of
    their own)."""
    url = settings.REDIS_URL
    cached = getattr(_local, "redis", None)
    if cached is None or cached[0] != url:
        cached = (url, redis.Redis.from_url(url, socket_timeout=5))
        _local.redis = cached
    return cached[1]


def _file(run_id: Any) -> Path:
    return Path(settings.VAR_DIR) / "deltas" / f"{run_id}.jsonl"


def publish(run_id: Any, delta: dict[str, Any]) -> None:
    """Hands `delta` to the run's open streams (best effort: a stream that misses a piece
    still gets the recorded answer)."""
    data = json.dumps({**delta, "sent_at": time.time()}, default=str)
    try:
        if settings.REDIS_URL:
            _redis().publish(CHANNEL.format(run=run_id), data)
            return
        path = _file(run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        # One write of one line with O_APPEND: concurrent writers never interleave a line.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, (data + "\n").encode())
        finally:
            os.close(fd)
    except (OSError, redis.RedisError):
        pass  # the live tail is a courtesy; the run goes on


class Tail:
    """The pieces published for `run_id` from now on. `wait(timeout)` returns those that
    arrived, waiting up to `timeout` seconds for the first; `close()` when done."""

    def __init__(self, run_id: Any) -> None:
        self.run_id = run_id
        self.pubsub: Any = None
        self.offset = 0
        self.partial = b""
        if settings.REDIS_URL:
            try:
                self.pubsub = redis.Redis.from_url(settings.REDIS_URL).pubsub(
                    ignore_subscribe_messages=True
                )
                self.pubsub.subscribe(CHANNEL.format(run=run_id))
            except redis.RedisError:
                self.pubsub = None
        else:
            try:
                self.offset = _file(run_id).stat().st_size
            except OSError:
                self.offset = 0

    def wait(self, timeout: float) -> list[dict[str, Any]]:
        if settings.REDIS_URL:
            return self._from_redis(timeout)
        return self._from_file(timeout)

    def _from_redis(self, timeout: float) -> list[dict[str, Any]]:
        if self.pubsub is None:
            time.sleep(timeout)
            return []
        found: list[dict[str, Any]] = []
        try:
            message = self.pubsub.get_message(timeout=timeout)
            while message is not None:
                if message.get("type") == "message":
                    found.append(json.loads(message["data"]))
                message = self.pubsub.get_message(timeout=0)
        except (redis.RedisError, ValueError):
            pass
        return found

    def _from_file(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = self._read_file()
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(min(0.02, max(deadline - time.monotonic(), 0)))

    def _read_file(self) -> list[dict[str, Any]]:
        try:
            with open(_file(self.run_id), "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        found = []
        for line in lines:
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
        return found

    def close(self) -> None:
        if self.pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                self.pubsub.close()
            self.pubsub = None


def prune(now: float | None = None) -> int:
    """Delete the embedded default's delta files no stream needs: a finished (or deleted) run's
    once untouched for SPARKOPS_DELTA_FILE_GRACE seconds (its streams have ended by then),
    any run's once untouched for a day. Returns how many went."""
    folder = Path(settings.VAR_DIR) / "deltas"
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0  # never streamed here (or with Redis: no files)
    now = time.time() if now is None else now
    grace = float(settings.SPARKOPS_DELTA_FILE_GRACE)
    idle: dict[str, str] = {}  # run id -> path, for files idle past the grace
    stale: list[str] = []
    for entry in entries:
        if not entry.name.endswith(".jsonl"):
            continue
        try:
            age = now - entry.stat().st_mtime
        except OSError:
            continue
        if age > 86400:
            stale.append(entry.path)
        elif age > grace:
            idle[entry.name.removesuffix(".jsonl")] = entry.path
    if idle:
        ids = [run_id for run_id in idle if _is_uuid(run_id)]
        active = {
            str(pk)
            for pk in Run.objects.filter(pk__in=ids)
            .exclude(status__in=Run.FINISHED_STATUSES)
            .values_list("pk", flat=True)
        }
        stale += [path for run_id, path in idle.items() if run_id not in active]
    removed = 0
    for path in stale:
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed += 1
    return removed


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
