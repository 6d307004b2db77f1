"""Which pool the `steps` queue's worker runs (sparkops/worker.py), worked out from the
environment alone, so that the settings (how many steps a message carries) and the worker
agree without either importing the other."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["gevent_suits", "pool_for"]


def gevent_suits(environ_: Mapping[str, str]) -> bool:
    """PostgreSQL and a Redis broker: where the gevent pool is tested and measured."""
    database = environ_.get("DATABASE_URL", "")
    broker = environ_.get("CELERY_BROKER_URL") or environ_.get("REDIS_URL", "")
    return database.startswith(("postgres://", "postgresql://", "pgsql://")) and (
        broker.startswith(("redis://", "rediss://"))
    )


def pool_for(env: Mapping[str, str]) -> str:
    """gevent or threads: WORKER_POOL, else gevent where it suits (`gevent_suits`)."""
    pool = env.get("WORKER_POOL") or ("gevent" if gevent_suits(env) else "threads")
    if pool not in {"gevent", "threads"}:
        raise SystemExit(f"WORKER_POOL must be gevent or threads, not {pool!r}")
    return pool
