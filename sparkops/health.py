"""Liveness and readiness: `/health` checks the database and the broker, `/ready` the database
and that every migration is applied (so a rolling deploy waits for `migrate`)."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse

from sparkops.celery import app

logger = logging.getLogger(__name__)


def check_database() -> str:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()
    return "ok"


def check_broker() -> str:
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)
    return "ok"


def check_migrations() -> str:
    connection = connections[DEFAULT_DB_ALIAS]
    executor = MigrationExecutor(connection)
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return "ok" if not plan else f"{len(plan)} unapplied migration(s)"


def _run(checks: dict[str, Any]) -> tuple[dict[str, str], bool]:
    results, healthy = {}, True
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception as exc:  # a failing dependency is the answer, not an error
            logger.warning("health check %s failed: %s", name, exc)
            results[name] = f"error: {exc.__class__.__name__}"
        healthy = healthy and results[name] == "ok"
    return results, healthy


def health(request: HttpRequest) -> JsonResponse:
    checks, healthy = _run({"database": check_database, "broker": check_broker})
    body = {
        "status": "healthy" if healthy else "unhealthy",
        "version": settings.SPARKOPS_VERSION,
        "checks": checks,
    }
    return JsonResponse(body, status=200 if healthy else 503)


def ready(request: HttpRequest) -> JsonResponse:
    checks, healthy = _run({"database": check_database, "migrations": check_migrations})
    return JsonResponse(
        {"status": "ready" if healthy else "not_ready", "checks": checks},
        status=200 if healthy else 503,
    )
