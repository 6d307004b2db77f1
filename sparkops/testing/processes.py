"""Real processes for end-to-end tests: a private redis-server, Celery workers in their own
processes (so a test can `kill -9` one), gunicorn serving the test database, and a counting
HTTP endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import connection

from sparkops.celery import app

from .engine import wait_until


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own on a spare port; stop() and start() simulate an
    outage of the broker."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sparkops-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._ping, timeout=15, what="redis-server to accept connections")

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _redis_transport_options() -> dict[str, Any]:
    return {"visibility_timeout": 3600, "socket_connect_timeout": 1, "socket_timeout": 5}


@contextlib.contextmanager
def broker(url: str) -> Iterator[None]:
    """Point this process's Celery producer at `url` for the duration (the session's in-process
    worker keeps listening on the default broker, so it never sees these messages)."""
    saved = (app.conf.broker_url, app.conf.broker_transport_options)

    def switch(to_url: str, options: dict[str, Any]) -> None:
        app.conf.broker_url = to_url
        app.conf.broker_transport_options = options
        app._pool = None
        app.amqp._producer_pool = None

    switch(url, _redis_transport_options())
    try:
        yield
    finally:
        switch(*saved)


def database_url() -> str:
    """The URL of the test database this process is using, for child processes."""
    params = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{params['NAME']}"
    user = params.get("USER") or "postgres"
    password = f":{params['PASSWORD']}" if params.get("PASSWORD") else ""
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or 5432
    return f"postgres://{user}{password}@{host}:{port}/{params['NAME']}"


class WorkerProcess:
    """`celery worker` in its own process against the test database and a given broker: a
    threads pool on `queues`, or (`steps=True`) the steps worker as `make run` starts it,
    `python -m sparkops.worker`, which picks its own pool and sizes (sparkops/worker.py)."""

    def __init__(
        self,
        broker_url: str,
        *,
        concurrency: int = 16,
        extra_env: dict[str, str] | None = None,
        loglevel: str = "WARNING",
        queues: str = "orchestration,steps",
        steps: bool = False,
    ):
        self.broker_url = broker_url
        self.concurrency = concurrency
        self.extra_env = extra_env or {}
        self.loglevel = loglevel
        self.queues = queues
        self.steps = steps
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="sparkops-worker-", suffix=".log")[1])

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
        }
        env.update(
            {
                "DATABASE_URL": database_url(),
                "CELERY_BROKER_URL": self.broker_url,
                "SECRET_KEY": settings.SECRET_KEY,
                "SPARKOPS_OUTBOUND_ALLOW": ",".join(settings.SPARKOPS_OUTBOUND_ALLOW),
                "SPARKOPS_HEARTBEAT_SECONDS": str(settings.SPARKOPS_HEARTBEAT_SECONDS),
                "SPARKOPS_HEARTBEAT_TIMEOUT": str(settings.SPARKOPS_HEARTBEAT_TIMEOUT),
                "SPARKOPS_QUEUED_GRACE": str(settings.SPARKOPS_QUEUED_GRACE),
                "LOG_LEVEL": "WARNING",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        if self.steps:
            command = [sys.executable, "-m", "sparkops.worker"]
        else:
            command = [str(Path(sys.executable).parent / "celery"), "-A", "sparkops", "worker"]
            command += ["-Q", self.queues, "-P", "threads", "-c", str(self.concurrency)]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *command,
                    "--without-gossip",
                    "--without-mingle",
                    "--without-heartbeat",
                    "-l",
                    self.loglevel,
                    "-n",
                    f"crash-{time.monotonic_ns()}@%h",
                ],
                cwd=settings.BASE_DIR,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no shutdown, no acks, in-flight work lost."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]


class CountingServer:
    """An HTTP endpoint on 127.0.0.1 that records every request (path, lower-cased headers,
    JSON body), optionally holding each one for `delay` seconds."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.requests: list[dict[str, Any]] = []
        # Requests whose JSON body `held` picks wait (recorded) until `gate` is set.
        self.held: Callable[[Any], bool] | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if len(raw) < length:
                    # The client died between its headers and its body (a worker killed with
                    # SIGKILL mid-send): as for any server, a half request is not a request.
                    return
                body = json.loads(raw or b"null")
                with outer.lock:
                    outer.requests.append(
                        {
                            "path": self.path,
                            "headers": {k.lower(): v for k, v in self.headers.items()},
                            "body": body,
                            "at": time.time(),
                        }
                    )
                if outer.held is not None and outer.held(body):
                    outer.gate.wait(120)
                if outer.delay:
                    outer._stop.wait(outer.delay)
                payload = json.dumps({"ok": True, "echo": body}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client killed mid-request (the point of the crash tests)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CountingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


class BeatProcess:
    """`celery beat` (django-celery-beat's DatabaseScheduler) in its own process against the
    test database and a given broker. `output()` has its log (INFO: one "Sending due task"
    line per entry it fires)."""

    def __init__(self, broker_url: str, *, extra_env: dict[str, str] | None = None) -> None:
        self.broker_url = broker_url
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="sparkops-beat-", suffix=".log")[1])

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
        }
        env.update(
            {
                "DATABASE_URL": database_url(),
                "CELERY_BROKER_URL": self.broker_url,
                "SPARKOPS_VAR_DIR": str(settings.VAR_DIR),
                "SECRET_KEY": settings.SECRET_KEY,
                "LOG_LEVEL": "INFO",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        celery = str(Path(sys.executable).parent / "celery")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    celery,
                    "-A",
                    "sparkops",
                    "beat",
                    "-l",
                    "INFO",
                    "--pidfile=",
                    "-S",
                    "django_celery_beat.schedulers:DatabaseScheduler",
                    "--max-interval",
                    "1",
                ],
                cwd=settings.BASE_DIR,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def sent(self, task: str) -> int:
        """How many times beat sent `task` so far."""
        return sum(
            1
            for line in self.output(limit=None).splitlines()
            if "Sending due task" in line and f"({task})" in line
        )

    def output(self, limit: int | None = 5000) -> str:
        text = self.log.read_text(errors="replace")
        return text if limit is None else text[-limit:]


class WebProcess:
    """gunicorn (sparkops/gunicorn_conf.py, gthread workers) in its own process on a free port of
    127.0.0.1, against the test database (or `database_url`) and a given broker."""

    def __init__(
        self,
        broker_url: str,
        *,
        workers: int = 1,
        threads: int = 8,
        database_url: str | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.broker_url = broker_url
        self.workers = workers
        self.threads = threads
        self.database_url = database_url
        self.extra_env = extra_env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="sparkops-web-", suffix=".log")[1])

    def env(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in {"DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}
        }
        env.update(
            {
                "DATABASE_URL": self.database_url or database_url(),
                "CELERY_BROKER_URL": self.broker_url,
                "SECRET_KEY": settings.SECRET_KEY,
                "DEBUG": "0",
                "ALLOWED_HOSTS": "127.0.0.1,localhost",
                "SPARKOPS_VAR_DIR": str(settings.VAR_DIR),
                "LOG_LEVEL": "WARNING",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    gunicorn,
                    "-c",
                    "python:sparkops.gunicorn_conf",
                    "sparkops.wsgi",
                    "-b",
                    f"127.0.0.1:{self.port}",
                    "-w",
                    str(self.workers),
                    "--threads",
                    str(self.threads),
                ],
                cwd=settings.BASE_DIR,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self._listening, timeout=60, what=f"gunicorn on {self.url}")

    def _listening(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited: {self.output()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:]
