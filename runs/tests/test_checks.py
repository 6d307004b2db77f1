"""The engine's system checks (runs/checks.py), as `manage.py check` runs them."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from runs.checks import heartbeat_outlasts_a_connection_wait


def test_the_default_heartbeat_timeout_outlasts_a_connection_wait():
    assert heartbeat_outlasts_a_connection_wait() == []
    call_command("check", "--fail-level", "WARNING")


@pytest.mark.parametrize(("timeout", "beat"), [(10.0, 5.0), (14.0, 5.0), (10.5, 0.5)])
def test_a_heartbeat_timeout_within_a_connection_wait_is_warned(settings, timeout, beat):
    """DB_POOL_TIMEOUT is 10 s here (the test suite's PostgreSQL pool, as in production): a
    step waiting that long for a connection, plus one beat, must not look lost."""
    assert settings.DATABASES["default"]["OPTIONS"]["pool"]["timeout"] == 10.0
    settings.SPARKOPS_HEARTBEAT_TIMEOUT = timeout
    settings.SPARKOPS_HEARTBEAT_SECONDS = beat
    warnings = heartbeat_outlasts_a_connection_wait()
    assert [w.id for w in warnings] == ["sparkops.W001"]
    assert f"({timeout:g} s)" in warnings[0].msg and "DB_POOL_TIMEOUT (10 s)" in warnings[0].msg
    with pytest.raises(SystemCheckError, match=r"sparkops\.W001"):
        call_command("check", "--fail-level", "WARNING")
    settings.SPARKOPS_HEARTBEAT_TIMEOUT = 10.0 + beat + 0.1
    assert heartbeat_outlasts_a_connection_wait() == []


def test_without_a_pool_there_is_no_connection_wait_to_outlast(settings):
    settings.SPARKOPS_HEARTBEAT_TIMEOUT = 1.0
    options = settings.DATABASES["default"]["OPTIONS"]
    pool = options.pop("pool")
    try:
        assert heartbeat_outlasts_a_connection_wait() == []
    finally:
        options["pool"] = pool
