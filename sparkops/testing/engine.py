"""Test support for the run engine: a real Celery worker (in this process, on the configured
broker: Redis in CI, the filesystem transport locally) and polling helpers with deadlines."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from django.db import connection

from runs.models import Run, RunStep
from sparkops.celery import app


def purge_queues() -> None:
    with app.connection_for_write() as conn:
        for queue in ("orchestration", "steps"):
            with contextlib.suppress(Exception):
                conn.default_channel.queue_purge(queue)


@contextlib.contextmanager
def celery_worker(concurrency: int = 8) -> Iterator[Any]:
    """A threads-pool worker consuming both engine queues, in this process."""
    # Celery's test worker loads only where a worker is started (not in benches or the CLI).
    import celery.contrib.testing.tasks  # noqa: F401  (registers celery.ping for start_worker)
    from celery.contrib.testing.worker import start_worker

    purge_queues()
    with start_worker(
        app,
        pool="threads",
        concurrency=concurrency,
        perform_ping_check=False,
        queues=["orchestration", "steps"],
        loglevel="WARNING",
        shutdown_timeout=30,
    ) as worker:
        yield worker
    terminate_other_connections()


def terminate_other_connections() -> None:
    """Worker threads may leave connections to the test database behind; PostgreSQL would then
    refuse to drop it at the end of the session."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


def wait_until(
    predicate: Callable[[], Any], *, timeout: float = 30.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def wait_for_run(
    run_id: Any, statuses: tuple[str, ...] | None = None, timeout: float = 30.0
) -> Any:
    wanted = statuses or Run.FINISHED_STATUSES

    def check() -> Any:
        run = Run.objects.filter(pk=run_id).first()
        return run if run is not None and run.status in wanted else None

    return wait_until(check, timeout=timeout, what=f"run {run_id} to reach {wanted}")


def wait_for_step(
    run_id: Any, node_id: str, statuses: tuple[str, ...], timeout: float = 30.0
) -> Any:
    def check() -> Any:
        step = RunStep.objects.filter(run_id=run_id, node_id=node_id).first()
        return step if step is not None and step.status in statuses else None

    return wait_until(check, timeout=timeout, what=f"step {node_id} of {run_id} in {statuses}")
