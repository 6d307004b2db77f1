"""Event streams against a real gunicorn (gthread, 4 threads, as production runs it but
smaller): a user cannot hold more than their streams, a process never gives all its threads
to streams, `/health` answers while streams are open, and a client that goes away frees its
slot. The server's cache and broker are a redis-server of the test's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from rest_framework_simplejwt.tokens import AccessToken

from runs.models import Run
from runs.tests.factories import active_run
from sparkops.testing.engine import wait_until
from sparkops.testing.processes import RedisServer, WebProcess

pytestmark = pytest.mark.django_db(transaction=True)

THREADS = 4  # the process cap is then 3: a quarter of the threads stays free


@pytest.fixture
def servers() -> Iterator[Callable[[], WebProcess]]:
    """Start gunicorns sharing one redis-server (their cache and broker)."""
    redis = RedisServer()
    redis.start()
    started: list[WebProcess] = []

    def start() -> WebProcess:
        server = WebProcess(
            redis.url,
            threads=THREADS,
            extra_env={
                "REDIS_URL": redis.url,
                "SPARKOPS_STREAMS_PER_USER": "2",
                "SPARKOPS_STREAMS_PER_PROCESS": "16",  # above what 4 threads allow
                "SPARKOPS_STREAM_KEEPALIVE_SECONDS": "0.2",
                "SPARKOPS_STREAM_POLL_SECONDS": "0.05",
            },
        )
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
        redis.close()


@pytest.fixture
def web(servers: Callable[[], WebProcess]) -> WebProcess:
    return servers()


class Stream:
    def __init__(self, web: WebProcess, user: Any, run: Run) -> None:
        self.client = httpx.Client(base_url=web.url, timeout=20)
        request = self.client.build_request(
            "GET",
            f"/api/v1/runs/{run.pk}/stream",
            headers={"Authorization": f"Bearer {AccessToken.for_user(user)}"},
        )
        self.response = self.client.send(request, stream=True)
        self.status = self.response.status_code
        if self.status == 200:
            # Keep the iterator: dropping it mid-stream makes httpx close the connection.
            self.lines = self.response.iter_lines()
            assert next(self.lines) == "retry: 2000"
        else:
            self.response.read()

    def close(self) -> None:
        self.response.close()
        self.client.close()


def test_streams_are_capped_and_the_server_keeps_answering(cast: Any, web: WebProcess) -> None:
    run = active_run(cast)
    opened: list[Stream] = []
    try:
        viewer = [Stream(web, cast.viewer, run) for _ in range(3)]
        opened += viewer
        assert [s.status for s in viewer] == [200, 200, 429], web.output()
        refused = viewer[2].response
        assert refused.json()["type"] == "throttled"
        assert "per user" in refused.json()["detail"]
        assert int(refused.headers["Retry-After"]) > 0

        # A second user: one stream fits (3 = the process cap for 4 threads), the next not.
        developer = [Stream(web, cast.developer, run) for _ in range(2)]
        opened += developer
        assert [s.status for s in developer] == [200, 429], web.output()
        assert "server" in developer[1].response.json()["detail"]

        # Three streams are open; the fourth thread still serves everything else.
        with httpx.Client(base_url=web.url, timeout=10) as client:
            assert client.get("/health").status_code == 200
            token = AccessToken.for_user(cast.owner)
            runs = client.get("/api/v1/runs/", headers={"Authorization": f"Bearer {token}"})
            assert runs.status_code == 200

        # A client that goes away frees its slot: the server notices at its next keep-alive.
        viewer[0].close()

        def reopened() -> Stream | None:
            stream = Stream(web, cast.viewer, run)
            opened.append(stream)
            return stream if stream.status == 200 else None

        wait_until(reopened, timeout=15, interval=0.1, what="the closed stream's slot")
    finally:
        for stream in opened:
            stream.close()


def test_the_user_cap_holds_across_processes(cast: Any, servers: Callable[[], WebProcess]) -> None:
    first, second = servers(), servers()
    run = active_run(cast)
    opened: list[Stream] = []
    try:
        opened += [Stream(first, cast.viewer, run), Stream(first, cast.viewer, run)]
        assert [s.status for s in opened] == [200, 200]
        elsewhere = Stream(second, cast.viewer, run)
        opened.append(elsewhere)
        assert elsewhere.status == 429, second.output()
        assert "per user" in elsewhere.response.json()["detail"]

        opened[0].close()

        def reopened() -> Stream | None:
            stream = Stream(second, cast.viewer, run)
            opened.append(stream)
            return stream if stream.status == 200 else None

        wait_until(reopened, timeout=15, interval=0.1, what="the slot freed on the other server")
    finally:
        for stream in opened:
            stream.close()
