"""System checks of the engine's settings (`manage.py check`, and every management command)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks


@checks.register(checks.Tags.compatibility)
def heartbeat_outlasts_a_connection_wait(**kwargs: Any) -> list[checks.CheckMessage]:
    """A running step heartbeats through a pooled connection, and may wait up to
    DB_POOL_TIMEOUT for one (a busy pool, or one refilling after the server dropped its
    connections). The sweeper takes a step silent for SPARKOPS_HEARTBEAT_TIMEOUT for lost and
    re-queues it: a timeout within that wait re-queues steps that are alive, and their calls
    are made twice."""
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    if not isinstance(pool, dict):
        return []
    wait = float(pool.get("timeout", 30.0))  # psycopg_pool's default
    silent = wait + settings.SPARKOPS_HEARTBEAT_SECONDS
    if silent < settings.SPARKOPS_HEARTBEAT_TIMEOUT:
        return []
    return [
        checks.Warning(
            f"SPARKOPS_HEARTBEAT_TIMEOUT ({settings.SPARKOPS_HEARTBEAT_TIMEOUT:g} s) is not "
            f"longer than a live step can be silent: DB_POOL_TIMEOUT ({wait:g} s) plus "
            f"SPARKOPS_HEARTBEAT_SECONDS ({settings.SPARKOPS_HEARTBEAT_SECONDS:g} s).",
            hint=(
                "Steps that wait for a database connection would be re-queued while alive, and "
                "their model and HTTP calls made twice. Raise SPARKOPS_HEARTBEAT_TIMEOUT (the "
                "default is 30 s) or lower DB_POOL_TIMEOUT."
            ),
            id="sparkops.W001",
        )
    ]
