"""The worker of the `steps` queue (model and HTTP calls), with the pool that suits them:

    .venv/bin/python -m sparkops.worker [more celery worker options, e.g. -l INFO -n steps@%h]

Steps spend their life waiting on the network. On PostgreSQL with a Redis broker the worker
runs Celery's gevent pool: every waiting call is a greenlet, not a thread, and holds no
database connection (sparkops.db.release_connection), so a thousand calls are in flight in
one process on a pool of `DB_POOL_MAX_SIZE` (16) connections. psycopg (>= 3.1.14) waits
cooperatively once gevent has patched the standard library, which `celery -P gevent` does
before anything else is imported; the Redis transport's connection pool blocks instead of
refusing (sparkops/broker.py).

Elsewhere it runs the threads pool, as before: SQLite locks the whole file and its calls block
the process, so greenlets would queue behind one writer (and a writer waiting for the lock
would stall every other greenlet for up to DB_SQLITE_TIMEOUT); the filesystem broker is not
tried under gevent. There a threads pool of WORKER_CONCURRENCY (8) threads and a database pool
of concurrency + 2 (the heartbeat thread, a spare), the numbers README's budget adds up.

WORKER_POOL=threads|gevent overrides the choice; STEPS_CONCURRENCY, DB_POOL_MAX_SIZE and
DB_POOL_TIMEOUT override the sizes. It execs `celery`, so signals reach the worker itself."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

GEVENT_CONCURRENCY = 1000
GEVENT_DB_POOL = 16
# A greenlet may queue for a connection behind hundreds of others when their calls all
# return at once: wait longer than a thread would (a timeout still retries the task).
GEVENT_DB_POOL_TIMEOUT = 60
THREADS_CONCURRENCY = 8


def gevent_suits(environ_: Mapping[str, str]) -> bool:
    """PostgreSQL and a Redis broker: where the gevent pool is tested and measured."""
    database = environ_.get("DATABASE_URL", "")
    broker = environ_.get("CELERY_BROKER_URL") or environ_.get("REDIS_URL", "")
    return database.startswith(("postgres://", "postgresql://", "pgsql://")) and (
        broker.startswith(("redis://", "rediss://"))
    )


def command(environ_: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The `celery worker` arguments and the environment of the steps worker."""
    env = dict(environ_)
    pool = env.get("WORKER_POOL") or ("gevent" if gevent_suits(env) else "threads")
    if pool not in {"gevent", "threads"}:
        raise SystemExit(f"WORKER_POOL must be gevent or threads, not {pool!r}")
    if pool == "gevent":
        concurrency = int(env.get("STEPS_CONCURRENCY") or GEVENT_CONCURRENCY)
        env.setdefault("DB_POOL_MAX_SIZE", str(GEVENT_DB_POOL))
        env.setdefault("DB_POOL_TIMEOUT", str(GEVENT_DB_POOL_TIMEOUT))
    else:
        concurrency = int(
            env.get("STEPS_CONCURRENCY") or env.get("WORKER_CONCURRENCY") or THREADS_CONCURRENCY
        )
        env.setdefault("DB_POOL_MAX_SIZE", str(concurrency + 2))
    argv = ["-A", "sparkops", "worker", "-Q", "steps", "-P", pool, "-c", str(concurrency)]
    return argv, env


def main() -> None:
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)  # as settings.py reads it
    argv, env = command(os.environ)
    celery = str(Path(sys.executable).parent / "celery")
    os.execve(celery, [celery, *argv, *sys.argv[1:]], env)  # noqa: S606 (no shell wanted)


if __name__ == "__main__":
    main()
