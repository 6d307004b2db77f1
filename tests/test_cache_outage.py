"""A Redis outage must not take the web tier down: the cache (throttles, stream slots, the
dashboard) fails open, is counted and logged, and the auth throttles fall back to counting in
memory. A real redis-server of the test's own is stopped and started again; the broker is on
the same Redis, as in the documented set-up."""

from __future__ import annotations

import logging
import socket
from typing import Any

import pytest
from django.core.cache import cache
from django.test import Client
from rest_framework.test import APIClient
from rest_framework.throttling import SimpleRateThrottle

from accounts.tests.factories import PASSWORD, UserFactory
from accounts.throttles import auth_fallback
from conftest import client_for
from runs.models import Run
from sparkops import cache as cache_state
from sparkops.testing.engine import wait_until
from sparkops.testing.processes import RedisServer, broker
from sparkops.testing.scraping import delta, scrape
from workflows import webhooks
from workflows.tests.factories import WorkflowFactory

# /metrics is closed without a token; `scrape` sends this one.
pytestmark = pytest.mark.usefixtures("metrics_token")

LOOSE = "1000/min"


@pytest.fixture
def redis(settings: Any) -> Any:
    """A redis-server for cache and broker; `stop()`/`start()` make the outage."""
    server = RedisServer()
    server.start()
    settings.CACHES = {
        "default": {
            "BACKEND": "sparkops.cache.ResilientRedisCache",
            "LOCATION": server.url,
            "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
        }
    }
    settings.SPARKOPS_CACHE_RETRY_SECONDS = 0.2
    cache_state.reset()
    try:
        with broker(server.url):
            yield server
    finally:
        server.close()
        cache_state.reset()
        auth_fallback.local.clear()


@pytest.fixture
def rates(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Throttle rates for one test (see accounts/tests/test_throttling.py for why the class
    attribute is patched too)."""

    def set_rates(**overrides: str) -> None:
        defaults = settings.REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"]
        new = {**dict.fromkeys(defaults, LOOSE), **overrides}
        settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": new}
        monkeypatch.setattr(SimpleRateThrottle, "THROTTLE_RATES", new)

    return set_rates


def login(email: str, password: str = PASSWORD, ip: str = "10.0.0.1") -> Any:
    return APIClient().post(
        "/api/v1/auth/login", {"email": email, "password": password}, REMOTE_ADDR=ip
    )


@pytest.mark.django_db(transaction=True)
def test_the_api_answers_while_redis_is_down(cast: Any, redis: RedisServer, rates: Any) -> None:
    rates(user_or_key="3/min")
    workflow = WorkflowFactory(project=cast.project, created_by=cast.owner)
    developer = client_for(cast.developer)
    assert developer.get("/api/v1/runs/").status_code == 200
    before = scrape()

    redis.stop()
    # More requests than the user's rate allows: the throttle cannot count, so it lets them by.
    for _ in range(4):
        response = developer.get("/api/v1/runs/")
        assert response.status_code == 200, response.content
    assert login(cast.developer.email).status_code == 200
    response = developer.post(
        "/api/v1/runs/", {"workflow": str(workflow.pk), "input": {"name": "outage"}}, format="json"
    )
    assert response.status_code == 201, response.content
    assert Run.objects.filter(pk=response.json()["id"]).exists()
    assert client_for(cast.viewer).get(f"/api/v1/runs/{response.json()['id']}").status_code == 200
    # An inbound webhook (its throttle reads the cache) and the console (it caches broker
    # status) answer too.
    _, token, _ = webhooks.webhook_trigger_create(
        actor=cast.developer, workflow=workflow, name="hook"
    )
    hook = APIClient().post(f"/api/v1/hooks/{token}", {"name": "hooked"}, format="json")
    assert hook.status_code == 202, hook.content
    operator = Client()
    operator.force_login(UserFactory(is_staff=True, is_superuser=True))
    assert operator.get("/admin/").status_code == 200

    after = scrape()
    assert delta(before, after, "sparkops_cache_errors_total", operation="get") >= 1
    assert delta(before, after, "sparkops_cache_errors_total", operation="set") >= 1

    # Redis is back: the throttle counts again (after the short retry window).
    redis.start()
    wait_until(
        lambda: developer.get("/api/v1/runs/").status_code == 429,
        timeout=10,
        what="the user throttle to count in Redis again",
    )
    assert not cache_state.outage()


@pytest.mark.django_db
def test_cache_operations_fail_open(redis: RedisServer) -> None:
    cache.set("k", 1)
    assert cache.get("k") == 1
    redis.stop()
    assert cache.get("k", "default") == "default"
    assert cache.get_many(["k"]) == {}
    assert cache.set("k", 2) is None
    assert cache.add("lock", 1) is True  # a lock or limiter built on `add` lets the caller by
    assert cache.touch("k") is True
    assert cache.incr("n", 5) == 5
    assert cache.has_key("k") is False
    assert cache.delete("k") is False
    assert cache.get_or_set("g", "fallback") == "fallback"
    assert cache_state.outage()

    redis.start()
    # The data was lost with the server (no persistence); the cache works again.
    wait_until(lambda: cache.add("fresh", 1) and cache.get("fresh") == 1, what="Redis again")
    assert not cache_state.outage()


@pytest.mark.django_db
def test_outage_is_logged_once_not_per_operation(
    redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    redis.stop()
    with caplog.at_level(logging.WARNING, logger="sparkops.cache"):
        for n in range(50):
            cache.get(f"k{n}")
    messages = [r.getMessage() for r in caplog.records if r.name == "sparkops.cache"]
    assert len(messages) == 1, messages
    assert "failing open" in messages[0]


@pytest.mark.django_db
def test_login_throttle_falls_back_to_memory_while_redis_is_down(
    cast: Any, redis: RedisServer, rates: Any
) -> None:
    rates(auth_ip="3/min")
    redis.stop()
    # Wrong passwords from one address: still limited, counted in this process.
    for _ in range(3):
        assert login(cast.developer.email, password="wrong").status_code == 401
    response = login(cast.developer.email, password="wrong")
    assert response.status_code == 429, response.content
    assert response.json()["type"] == "throttled"
    assert int(response.headers["Retry-After"]) > 0
    # Another address is not affected.
    assert login(cast.developer.email, ip="10.0.0.2").status_code == 200


@pytest.mark.django_db
def test_after_a_failure_redis_is_left_alone_for_the_retry_window(
    redis: RedisServer, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.SPARKOPS_CACHE_RETRY_SECONDS = 3600
    redis.stop()
    cache.set("k", 1)  # fails: the window opens
    redis.start()
    # Redis is up again, but this process does not try it inside the window.
    assert cache.add("k", 2) is True
    assert cache.get("k") is None
    assert cache_state.outage()

    settings.SPARKOPS_CACHE_RETRY_SECONDS = 0
    cache_state._state.retry_at = 0.0  # the window has passed
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sparkops.cache"):
        cache.set("k", 3)
    assert cache.get("k") == 3
    assert not cache_state.outage()
    assert [r.getMessage() for r in caplog.records if r.name == "sparkops.cache"] == [
        "cache reachable again"
    ]


@pytest.mark.django_db
def test_a_redis_that_hangs_costs_one_timeout(settings: Any) -> None:
    """A server that accepts connections and never answers (a hung Redis, a black-holed
    route): the read times out once, then the retry window answers at once."""
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)  # never accepted: connects succeed, reads wait
        settings.CACHES = {
            "default": {
                "BACKEND": "sparkops.cache.ResilientRedisCache",
                "LOCATION": f"redis://127.0.0.1:{hung.getsockname()[1]}/0",
                "OPTIONS": {"socket_connect_timeout": 0.2, "socket_timeout": 0.2},
            }
        }
        settings.SPARKOPS_CACHE_RETRY_SECONDS = 3600
        cache_state.reset()
        try:
            before = scrape()
            assert cache.get("k", "default") == "default"  # timed out
            assert cache_state.outage()
            for _ in range(5):
                assert cache.get("k", "default") == "default"  # not tried again
            after = scrape()
            assert delta(before, after, "sparkops_cache_errors_total", operation="get") == 6
        finally:
            cache_state.reset()
