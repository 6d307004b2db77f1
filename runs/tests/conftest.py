"""Fixtures of the run engine's tests: a scriptable HTTP endpoint for tool steps (it counts
calls, records headers, can fail, hold or gather requests), the fake OpenAI/Anthropic server,
and helpers that drive or observe the engine without sleeping."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.db import transaction

# Engine tests import these builders from here.
from runs.tests.factories import tool_node  # noqa: F401
from sparkops.testing.engine import wait_until
from sparkops.testing.fake_llm import FakeLLMServer
from tools.tests.factories import builtin_tool  # noqa: F401


@pytest.fixture(autouse=True)
def _fresh_version_cache() -> None:
    """runs.services.state caches version snapshots per process by primary key, which is
    safe in production (versions are immutable, ids never come back) but not across tests:
    SQLite hands the ids of a rolled-back test out again, so a stale snapshot of another
    test's workflow would be served."""
    from runs.services import state

    cache = getattr(state, "_snapshot", None)
    if cache is not None and hasattr(cache, "cache_clear"):
        cache.cache_clear()


@pytest.fixture(autouse=True)
def _worker_idle_before_flush(request: pytest.FixtureRequest) -> Iterator[None]:
    """Engine tests end with the in-process worker idle: a task still writing while the
    database is flushed deadlocks PostgreSQL's TRUNCATE (and the next test then finds the
    previous one's rows). Requesting `engine` from here makes this teardown run first."""
    if "engine" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("engine")
    yield
    with contextlib.suppress(AssertionError):
        wait_until(worker_idle, timeout=15, what="the worker to finish its tasks")


def worker_idle() -> bool:
    from celery.worker import state

    return not state.active_requests and not state.reserved_requests


# --- a local HTTP endpoint for tool steps -------------------------------------------------------


@dataclass
class Hit:
    path: str
    method: str
    headers: dict[str, str]  # lower-cased names
    body: Any
    query: dict[str, list[str]]
    at: float = field(default_factory=time.monotonic)
    raw: bytes = b""  # the body as received


@dataclass
class Raw:
    """A reply body sent as these bytes (not JSON), with these headers."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


Reply = tuple[int, Any]
Handler = Callable[[Hit], Reply]


class ToolServer:
    """A ThreadingHTTPServer on 127.0.0.1 (a free port). Each path answers with a handler
    (`route`), the default one echoing the request; every request is recorded in `hits`, and
    the number of requests in progress per path is tracked (`max_in_flight`) so a test can
    prove that two calls really overlapped. Handlers that hold a request wait on events that
    `stop()` sets, so nothing outlives the test."""

    def __init__(self) -> None:
        self.hits: list[Hit] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.routes: dict[str, Handler] = {}
        self.in_flight: dict[str, int] = {}
        self.max_in_flight: dict[str, int] = {}
        server_self = self

        class RequestHandler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                hit = Hit(
                    path=url.path,
                    method=self.command,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    query=parse_qs(url.query),
                    raw=raw,
                )
                status, payload = server_self._dispatch(hit)
                headers = {"Content-Type": "application/json"}
                if isinstance(payload, Raw):
                    data, headers = payload.body, {**headers, **payload.headers}
                else:
                    data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a step timeout)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), RequestHandler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def _dispatch(self, hit: Hit) -> Reply:
        with self.lock:
            self.hits.append(hit)
            count = self.in_flight.get(hit.path, 0) + 1
            self.in_flight[hit.path] = count
            self.max_in_flight[hit.path] = max(self.max_in_flight.get(hit.path, 0), count)
        try:
            return self.routes.get(hit.path, echo)(hit)
        finally:
            with self.lock:
                self.in_flight[hit.path] -= 1

    # -- scripting ------------------------------------------------------------------------------

    def route(self, path: str, handler: Handler) -> str:
        """Answer `path` with `handler`; returns the full URL."""
        self.routes[path] = handler
        return self.url + path

    def calls(self, path: str) -> list[Hit]:
        with self.lock:
            return [hit for hit in self.hits if hit.path == path]

    def hold(self, seconds: float, release: threading.Event | None = None) -> None:
        """Wait `seconds`, or until `release` is set, or the server stops."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stopping.is_set():
            if release is not None and release.is_set():
                return
            (release or self.stopping).wait(min(0.02, max(deadline - time.monotonic(), 0)))

    def failing(self, times: int, status: int = 503) -> Handler:
        """`status` for the first `times` calls, then 200 with the echo."""
        seen = {"n": 0}

        def handler(hit: Hit) -> Reply:
            with self.lock:
                seen["n"] += 1
                n = seen["n"]
            if n <= times:
                return status, {"error": f"failure {n}"}
            return echo(hit)

        return handler

    def slow(self, seconds: float, release: threading.Event | None = None) -> Handler:
        def handler(hit: Hit) -> Reply:
            self.hold(seconds, release)
            return echo(hit)

        return handler

    def gather(self, parties: int, timeout: float = 10.0) -> Handler:
        """Hold each request until `parties` of them are in progress at once (or `timeout`):
        the answer says whether they really were together."""
        barrier = threading.Barrier(parties, timeout=timeout)

        def handler(hit: Hit) -> Reply:
            try:
                barrier.wait()
                together = True
            except threading.BrokenBarrierError:
                together = False
            return 200, {"together": together, "echo": hit.body}

        return handler

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> ToolServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def echo(hit: Hit) -> Reply:
    return 200, {"path": hit.path, "method": hit.method, "body": hit.body, "query": hit.query}


def status_of(status: int) -> Handler:
    return lambda hit: (status, {"error": f"HTTP {status}"})


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    """A fresh fake OpenAI/Anthropic server on 127.0.0.1 (agents/tests/conftest.py has the same
    one; fixtures of a sibling package are not visible here)."""
    with FakeLLMServer() as server:
        yield server


# --- building blocks ------------------------------------------------------------------------------


def http_tool(
    project: Any,
    actor: Any,
    name: str,
    url: str,
    *,
    properties: dict[str, Any] | None = None,
    **config: Any,
) -> Any:
    """An HTTP tool POSTing its arguments as the JSON body to `url`."""
    from tools import services as tool_services

    return tool_services.tool_create(
        actor=actor,
        project=project,
        name=name,
        kind="http",
        parameters={"type": "object", "properties": properties or {}},
        config={"method": "POST", "url": url, "body": "{{ args }}", **config},
    )


@contextlib.contextmanager
def sends_lost() -> Iterator[None]:
    """What a crash between commit and send (or a broker down at that moment) leaves behind:
    everything written inside commits, but the tasks the writes asked to send after commit are
    never sent. (`django_capture_on_commit_callbacks` cannot do this in a transactional test:
    the commit itself runs the callbacks.)"""
    connection = transaction.get_connection()
    with transaction.atomic():
        start = len(connection.run_on_commit)
        yield
        del connection.run_on_commit[start:]


def task_done(step_id: int) -> bool:
    """True when the in-process worker holds no delivery of `runs.step_execute` for the step
    (neither executing nor waiting for its countdown)."""
    from celery.worker import state

    requests = list(state.active_requests) + list(state.reserved_requests)
    return not any(
        request.name == "runs.step_execute" and list(request.args)[:1] == [step_id]
        for request in requests
    )


def wait_task_done(step_id: int, timeout: float = 30.0) -> None:
    wait_until(lambda: task_done(step_id), timeout=timeout, what=f"the task of step {step_id}")


def events_of(run: Any, type: str | None = None, node_id: str | None = None) -> list[Any]:
    from runs.models import RunEvent

    events = RunEvent.objects.filter(run_id=run.pk).order_by("seq")
    if type:
        events = events.filter(type=type)
    if node_id is not None:
        events = events.filter(node_id=node_id)
    return list(events)


def drive(run: Any) -> Any:
    """Execute `run` synchronously in this thread: plan it, then run every queued step until
    none is left (a run waiting for approval stops there). Inside a test transaction no
    `on_commit` fires, so no task reaches the worker."""
    from runs import services
    from runs.models import Run, RunStep

    services.run_enqueue(run_id=run.pk)
    for _ in range(100):
        queued = list(
            RunStep.objects.filter(run_id=run.pk, status="queued").values_list("pk", "attempt")
        )
        if not queued:
            return Run.objects.get(pk=run.pk)
        for step_id, attempt in queued:
            services.step_execute(step_id=step_id, attempt=attempt)
    raise AssertionError(f"run {run.pk} still has queued steps that do not start")
