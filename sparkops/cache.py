"""The cache backend for Redis that keeps the web tier up when Redis is not.

Everything the cache holds is an optimisation or a limit (throttle counters, stream slots,
dashboard snapshots), never the truth, so an unreachable Redis must not turn requests into
500s. `ResilientRedisCache` is Django's `RedisCache` whose every operation *fails open*:

- a read misses (`get` returns the default, `get_many` `{}`, `has_key` False);
- a write is dropped (`set`, `set_many`, `delete`, `delete_many`, `clear`);
- `add` and `touch` report success, so a limiter or lock built on them lets the caller through;
- `incr` returns `delta` (`decr` `-delta`), as if the key had been 0.

Each such operation is counted in `sparkops_cache_errors_total{operation}` and logged at most
once per `LOG_INTERVAL` seconds per process (no log storm). After a failure the backend does not
try Redis again for `SPARKOPS_CACHE_RETRY_SECONDS` (it answers the defaults at once), so a Redis
that times out costs one short timeout per process per window, not one per request.
`outage()` tells callers (the auth throttles' in-process fallback) that this is happening.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from sparkops import metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")
ERRORS = (RedisConnectionError, RedisTimeoutError)
LOG_INTERVAL = 60.0


class _State:
    """Per process (Django gives each thread its own backend instance; this is shared)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.retry_at = 0.0  # monotonic; > now: Redis failed recently, don't try it
        self.failing = False
        self.logged_at = -LOG_INTERVAL
        self.suppressed = 0

    def tripped(self) -> bool:
        return self.retry_at > time.monotonic()

    def failed(self, operation: str, exc: BaseException | None) -> None:
        metrics.cache_errors.labels(operation).inc()
        now = time.monotonic()
        with self.lock:
            if exc is not None:
                retry = float(getattr(settings, "SPARKOPS_CACHE_RETRY_SECONDS", 5.0))
                self.retry_at = now + retry
            self.failing = True
            if now - self.logged_at < LOG_INTERVAL:
                self.suppressed += 1
                return
            suppressed, self.suppressed, self.logged_at = self.suppressed, 0, now
        logger.warning(
            "cache unreachable, failing open (%s: %s); %d more cache errors since the last message",
            operation,
            exc.__class__.__name__ if exc is not None else "recent failure",
            suppressed,
        )

    def succeeded(self) -> None:
        if not self.failing:
            return
        with self.lock:
            if not self.failing:
                return
            self.failing = False
            self.retry_at = 0.0
            self.logged_at = -LOG_INTERVAL
            self.suppressed = 0
        logger.warning("cache reachable again")

    def reset(self) -> None:
        with self.lock:
            self.retry_at, self.failing, self.logged_at, self.suppressed = 0.0, False, -60.0, 0


_state = _State()


def outage() -> bool:
    """True while the Redis cache is failing (since its last failed operation, until one
    succeeds)."""
    return _state.failing


def reset() -> None:
    """Forget a past outage (tests that start and stop their own Redis)."""
    _state.reset()


class ResilientRedisCache(RedisCache):
    """`django.core.cache.backends.redis.RedisCache` that fails open (module docstring)."""

    def _guard(self, operation: str, default: T, call: Callable[..., T], *args: Any) -> T:
        if _state.tripped():
            _state.failed(operation, None)
            return default
        try:
            result = call(*args)
        except ERRORS as exc:
            _state.failed(operation, exc)
            return default
        _state.succeeded()
        return result

    def add(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any:
        return self._guard("add", True, super().add, key, value, timeout, version)

    def get(self, key: Any, default: Any = None, version: Any = None) -> Any:
        return self._guard("get", default, super().get, key, default, version)

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None
    ) -> None:
        self._guard("set", None, super().set, key, value, timeout, version)

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any:
        return self._guard("touch", True, super().touch, key, timeout, version)

    def delete(self, key: Any, version: Any = None) -> Any:
        return self._guard("delete", False, super().delete, key, version)

    def get_many(self, keys: Any, version: Any = None) -> Any:
        return self._guard("get_many", {}, super().get_many, keys, version)

    def has_key(self, key: Any, version: Any = None) -> Any:
        return self._guard("has_key", False, super().has_key, key, version)

    def incr(self, key: Any, delta: int = 1, version: Any = None) -> Any:
        return self._guard("incr", delta, super().incr, key, delta, version)

    def set_many(self, data: Any, timeout: Any = DEFAULT_TIMEOUT, version: Any = None) -> Any:
        return self._guard("set_many", list(data), super().set_many, data, timeout, version)

    def delete_many(self, keys: Any, version: Any = None) -> None:
        self._guard("delete_many", None, super().delete_many, keys, version)

    def clear(self) -> None:
        self._guard("clear", None, super().clear)
