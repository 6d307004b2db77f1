"""The live tail of model output: `llm.delta` events, each piece of a streamed answer as the
model sends it, for the event streams open on the run at that moment. Never stored: no
RunEvent row per token; the recorded `llm.call` event and the step's output hold the answer.

With Redis (REDIS_URL) a piece is a PUBLISH on the run's channel and every open stream
SUBSCRIBEs to it. On the embedded default (no Redis) the worker and the web process share a
disk instead: a piece is a line appended to the run's file under SPARKOPS_VAR_DIR/deltas, and
a stream reads the lines appended after it opened. Either way a stream sees the pieces sent
after it joined, never the ones before (those are in the recorded events)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import redis
from django.conf import settings

CHANNEL = "sparkops:run-deltas:{run}"
_local = threading.local()


def _redis() -> redis.Redis:
    client = getattr(_local, "redis", None)
    if client is None:
        client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
        _local.redis = client
    return client


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
