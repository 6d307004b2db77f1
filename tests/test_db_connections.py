"""Database connections under load and when the database refuses them (README, "Database
connections"): a real gunicorn and a real Celery worker, each in its own process, against the
test database. On PostgreSQL they log in as a role of the test's own with a CONNECTION LIMIT,
so more connections than the budget fail loudly; the test process keeps its own superuser
connection to watch and to kill backends."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from django.db import connection
from rest_framework_simplejwt.tokens import AccessToken

from agents import services as agent_services
from runs import services
from runs.models import Run, RunStep
from runs.tests.factories import model_workflow
from sparkops.testing.engine import wait_until
from sparkops.testing.fake_llm import FakeLLMServer
from sparkops.testing.processes import (
    RedisServer,
    WebProcess,
    WorkerProcess,
    broker,
    database_url,
)
from workflows import services as workflow_services

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A private redis-server; runs created in this process are sent there too."""
    server = RedisServer()
    server.start()
    try:
        with broker(server.url):
            yield server.url
    finally:
        server.close()


class LimitedDatabase:
    """A way into the test database with room for `limit` connections: on PostgreSQL a login
    role with CONNECTION LIMIT and rights on every table; on SQLite (no connection limit) the
    test database itself. `hold()` takes every connection the role may open."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.role = f"sparkops_limited_{os.getpid()}"
        self.postgres = connection.vendor == "postgresql"

    @property
    def url(self) -> str:
        if not self.postgres:
            return database_url()
        params = connection.settings_dict
        host = params.get("HOST") or "127.0.0.1"
        port = params.get("PORT") or 5432
        return f"postgres://{self.role}:limited@{host}:{port}/{params['NAME']}"

    def create(self) -> None:
        if not self.postgres:
            return
        self.drop()
        with connection.cursor() as cursor:
            cursor.execute(
                f"CREATE ROLE {self.role} LOGIN PASSWORD 'limited' NOSUPERUSER "
                f"CONNECTION LIMIT {self.limit}"
            )
            cursor.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {self.role}")
            cursor.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {self.role}")

    def drop(self) -> None:
        if not self.postgres:
            return
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [self.role])
            if cursor.fetchone() is None:
                return
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                [self.role],
            )
            cursor.execute(f"DROP OWNED BY {self.role}")
            cursor.execute(f"DROP ROLE {self.role}")

    def backends(self) -> list[tuple[int, str, str | None]]:
        """(pid, state, wait_event_type) of every connection of the role."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid, state, wait_event_type FROM pg_stat_activity WHERE usename = %s",
                [self.role],
            )
            return list(cursor.fetchall())

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """PostgreSQL: open every connection the role may have, so the next one is refused."""
        wait_until(lambda: not self.backends(), timeout=30, what="the role's connections to end")
        params = connection.settings_dict
        held = [
            psycopg.connect(
                host=params.get("HOST") or "127.0.0.1",
                port=params.get("PORT") or 5432,
                dbname=params["NAME"],
                user=self.role,
                password="limited",
            )
            for _ in range(self.limit)
        ]
        try:
            yield
        finally:
            for conn in held:
                conn.close()


@pytest.fixture
def limited_database() -> Iterator[Any]:
    made: list[LimitedDatabase] = []

    def make(limit: int) -> LimitedDatabase:
        db = LimitedDatabase(limit)
        db.create()
        made.append(db)
        return db

    try:
        yield make
    finally:
        for db in made:
            db.drop()


class UnreachableSqlite:
    """SQLite's refusal: the web or worker process opens the test database through a directory
    link that does not exist yet ("unable to open database file"); `restore()` makes it."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sparkops-unreachable-"))
        self.link = self.dir / "db"
        self.target = Path(connection.settings_dict["NAME"])
        self.url = f"sqlite:///{self.link / self.target.name}"

    def restore(self) -> None:
        self.link.symlink_to(self.target.parent, target_is_directory=True)


def one_agent_workflow(cast: Any) -> Any:
    agent_services.agent_create(
        actor=cast.owner,
        project=cast.project,
        name="Answerer",
        slug="answerer",
        provider="simulated",
        model="sim-1",
        settings={"mode": "fixed", "reply": "done"},
    )
    return workflow_services.workflow_create(
        actor=cast.owner,
        project=cast.project,
        name="one agent",
        definition={
            "nodes": [{"id": "answer", "type": "agent", "agent": "answerer", "prompt": "Hi"}],
            "output": {"text": "{{ steps.answer.output.text }}"},
        },
    )


def bearer(user: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {AccessToken.for_user(user)}"}


def assert_database_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, (response.status_code, response.text[:500])
    assert response.headers["Retry-After"] == "5"
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["type"] == "database_unavailable"


def test_more_requests_and_runs_than_connections_all_finish(cast, redis_url, limited_database):
    """32 request threads and 8 worker threads share 12 connections (PostgreSQL refuses a
    13th): 2 web processes x DB_POOL_MAX_SIZE 4 + 1 worker x 4. Every request answers, every
    run succeeds, without the sweeper."""
    db = limited_database(12)
    workflow = one_agent_workflow(cast)
    pool = {"DB_POOL_MAX_SIZE": "4", "DB_POOL_TIMEOUT": "30"}
    web = WebProcess(redis_url, workers=2, threads=16, database_url=db.url, extra_env=pool)
    worker = WorkerProcess(redis_url, concurrency=8, extra_env={"DATABASE_URL": db.url, **pool})
    runs, peak = 64, [0]
    watching = threading.Event()

    def watch() -> None:  # the most connections the role ever had at once
        try:
            while not watching.wait(0.05):
                peak[0] = max(peak[0], len(db.backends()))
        finally:
            connection.close()

    watcher = threading.Thread(target=watch, daemon=True)
    try:
        web.start()
        worker.start()
        if db.postgres:
            watcher.start()
        with httpx.Client(base_url=web.url, headers=bearer(cast.developer), timeout=60) as client:

            def create(i: int) -> list[int]:
                made = client.post("/api/v1/runs/", json={"workflow": workflow.pk, "input": {}})
                listed = client.get("/api/v1/runs/", params={"workflow": workflow.pk})
                return [made.status_code, listed.status_code]

            with ThreadPoolExecutor(16) as creators:
                codes = Counter(code for pair in creators.map(create, range(runs)) for code in pair)
        assert codes == {201: runs, 200: runs}, (codes, web.output())
        wait_until(
            lambda: Run.objects.filter(status__in=Run.FINISHED_STATUSES).count() == runs,
            timeout=180,
            interval=0.2,
            what="every run to finish",
        )
    finally:
        watching.set()
        if watcher.is_alive():
            watcher.join(timeout=10)
        web.stop()
        worker.stop()
    assert Counter(Run.objects.values_list("status", flat=True)) == {"succeeded": runs}
    if db.postgres:
        assert 0 < peak[0] <= 12


def test_the_steps_worker_keeps_more_model_calls_in_flight_than_it_has_connections(
    cast, redis_url, limited_database, settings
):
    """The steps worker as `make run` starts it (`python -m sparkops.worker`). On PostgreSQL +
    Redis it runs a gevent pool whose steps give their connection back while the model thinks:
    40 model calls are held open at the fake model at once, by a steps worker of 4 connections
    and an orchestration worker of 3 (the role refuses an 8th), none of them in a transaction
    meanwhile; then all 40 runs succeed. On the embedded default it runs a threads pool of 8,
    and 8 calls overlap. Overlap is counted at the server, not timed."""
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]
    db = limited_database(7)
    calls = 40 if db.postgres else 8
    model = FakeLLMServer().start()
    model.gate.clear()  # every call waits until the test has seen them all in flight
    workflow = model_workflow(cast, model.openai_base_url)
    steps = WorkerProcess(
        redis_url,
        steps=True,
        extra_env={"DATABASE_URL": db.url, "DB_POOL_MAX_SIZE": "4", "STEPS_PROCESSES": "1"},
    )
    orchestration = WorkerProcess(
        redis_url,
        queues="orchestration",
        concurrency=2,
        extra_env={"DATABASE_URL": db.url, "DB_POOL_MAX_SIZE": "3"},
    )
    try:
        steps.start()
        orchestration.start()
        runs = [
            services.run_create(workflow=workflow, input={}, actor=cast.owner) for _ in range(calls)
        ]
        wait_until(
            lambda: model.in_flight >= calls,
            timeout=120,
            interval=0.1,
            what=f"{calls} model calls in flight at once",
        )
        if db.postgres:
            # While every call waits, the workers' connections sit idle in their pools: no
            # transaction (no row lock, no snapshot) is held across a model call.
            states = [state for _, state, _ in db.backends()]
            assert len(states) <= 7
            assert "idle in transaction" not in states, states
        assert steps.proc is not None
        command = Path(f"/proc/{steps.proc.pid}/cmdline").read_bytes().split(b"\0")
        model.gate.set()
        wait_until(
            lambda: Run.objects.filter(status__in=Run.FINISHED_STATUSES).count() == calls,
            timeout=120,
            interval=0.2,
            what="every run to finish",
        )
    finally:
        model.stop()
        steps.stop()
        orchestration.stop()
    assert Counter(Run.objects.values_list("status", flat=True)) == {"succeeded": calls}, (
        steps.output()
    )
    assert model.peak_in_flight == calls
    assert not RunStep.objects.filter(run__in=runs, attempt__gt=1).exists()  # nothing retried
    pool = b"gevent" if db.postgres else b"threads"
    assert command[command.index(b"-P") + 1] == pool, command


def test_a_connection_is_given_back_before_a_wait_but_never_inside_a_transaction(cast):
    """sparkops.db.release_connection, called right before a model, HTTP tool or webhook
    call: a pooled PostgreSQL connection goes back to the pool; inside a transaction (a row
    lock, uncommitted writes) it stays; SQLite's file connection stays (no server resource)."""
    from django.db import transaction

    from sparkops.db import release_connection

    postgres = connection.vendor == "postgresql"
    assert Run.objects.count() == 0  # a connection is open
    with transaction.atomic():
        Run.objects.count()
        assert release_connection() is False
        assert connection.connection is not None and connection.in_atomic_block
    assert release_connection() is postgres
    assert (connection.connection is None) is postgres
    assert Run.objects.count() == 0  # the next query takes one again


def test_refused_connections_answer_503_then_recover(cast, redis_url, limited_database):
    """The database refuses every connection (PostgreSQL: the role's limit is taken; SQLite:
    the file cannot be opened): the API and the views outside DRF answer 503 with Retry-After
    in the JSON error shape; once connections return, the next request succeeds."""
    db = limited_database(2)
    unreachable = None if db.postgres else UnreachableSqlite()
    web = WebProcess(
        redis_url,
        threads=4,
        database_url=db.url if db.postgres else unreachable.url,
        extra_env={"DB_POOL_MAX_SIZE": "2", "DB_POOL_TIMEOUT": "1"},
    )
    headers = bearer(cast.developer)
    web.start()
    try:
        with httpx.Client(base_url=web.url, timeout=30) as client:
            with db.hold() if db.postgres else contextlib.nullcontext():
                assert_database_unavailable(client.get("/api/v1/runs/", headers=headers))
                # The admin and the console (not DRF): the session is read from the database.
                client.cookies.set("sessionid", "x" * 32)
                assert_database_unavailable(client.get("/admin/"))
                client.cookies.clear()
                assert client.get("/health").status_code == 503
            if unreachable is not None:
                unreachable.restore()
            listed = wait_until(
                lambda: (
                    (r := client.get("/api/v1/runs/", headers=headers)).status_code == 200 and r
                ),
                timeout=30,
                interval=0.2,
                what="the API to answer again",
            )
            assert listed.json()["results"] == []
    finally:
        web.stop()


def test_accepted_runs_move_on_when_connections_return_without_a_sweep(
    cast, redis_url, limited_database, settings
):
    """Runs accepted while the worker gets no connection: its tasks retry with a short backoff
    and the runs finish once connections return, long before the sweeper would look."""
    settings.SPARKOPS_QUEUED_GRACE = 3600.0
    db = limited_database(3)
    unreachable = None if db.postgres else UnreachableSqlite()
    workflow = one_agent_workflow(cast)
    worker = WorkerProcess(
        redis_url,
        concurrency=4,
        extra_env={
            "DATABASE_URL": db.url if db.postgres else unreachable.url,
            "DB_POOL_MAX_SIZE": "3",
            "DB_POOL_TIMEOUT": "1",
            "LOG_LEVEL": "INFO",
        },
        loglevel="INFO",
    )
    try:
        with db.hold() if db.postgres else contextlib.nullcontext():
            worker.start()
            runs = [
                services.run_create(workflow=workflow, input={}, actor=cast.owner) for _ in range(5)
            ]
            wait_until(
                lambda: "Retry in" in worker.output(),
                timeout=60,
                interval=0.2,
                what="the worker to retry a task the database refused",
            )
            assert Run.objects.filter(status=Run.Status.PENDING).count() == len(runs)
        if unreachable is not None:
            unreachable.restore()
        wait_until(
            lambda: Run.objects.filter(status=Run.Status.SUCCEEDED).count() == len(runs),
            timeout=90,
            interval=0.2,
            what="the accepted runs to finish",
        )
    finally:
        worker.stop()


def test_a_connection_lost_mid_request_answers_503_and_the_next_request_succeeds(
    cast, redis_url, limited_database
):
    """A cancel waits on the run's row lock, which the test holds; then the request's
    connection is lost (PostgreSQL: its backend is terminated with pg_terminate_backend;
    SQLite: the write lock is not given up within DB_SQLITE_TIMEOUT). The request answers 503;
    the pool drops the dead connection and the next request succeeds."""
    db = limited_database(4)
    workflow = one_agent_workflow(cast)
    run = services.run_create(workflow=workflow, input={}, actor=cast.owner)  # no worker: pending
    web = WebProcess(
        redis_url,
        threads=4,
        database_url=db.url,
        extra_env={"DB_POOL_MAX_SIZE": "2", "DB_SQLITE_TIMEOUT": "1"},
    )
    web.start()
    headers = bearer(cast.developer)
    try:
        with httpx.Client(base_url=web.url, timeout=60) as client:
            assert client.get(f"/api/v1/runs/{run.pk}", headers=headers).status_code == 200
            with row_lock_held(run), ThreadPoolExecutor(1) as pool:
                cancel = pool.submit(client.post, f"/api/v1/runs/{run.pk}/cancel", headers=headers)
                if db.postgres:
                    waiting = wait_until(
                        lambda: [pid for pid, _, wait in db.backends() if wait == "Lock"],
                        timeout=30,
                        what="the cancel to wait on the row lock",
                    )
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_terminate_backend(%s)", [waiting[0]])
                assert_database_unavailable(cancel.result(timeout=60))
            assert Run.objects.get(pk=run.pk).status == Run.Status.PENDING
            cancelled = client.post(f"/api/v1/runs/{run.pk}/cancel", headers=headers)
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["status"] == "cancelled"
    finally:
        web.stop()


@contextlib.contextmanager
def row_lock_held(run: Run) -> Iterator[None]:
    """Another session locks the run's row (SQLite: the whole database) until the block ends."""
    params = connection.settings_dict
    if connection.vendor == "postgresql":
        conn = psycopg.connect(
            host=params.get("HOST") or "127.0.0.1",
            port=params.get("PORT") or 5432,
            dbname=params["NAME"],
            user=params.get("USER") or "postgres",
            password=params.get("PASSWORD") or None,
        )
        conn.execute("SELECT 1 FROM runs_run WHERE id = %s FOR UPDATE", [run.pk])
    else:
        conn = sqlite3.connect(params["NAME"], isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.rollback() if connection.vendor == "postgresql" else conn.execute("ROLLBACK")
        conn.close()


def test_a_held_event_stream_gives_its_pooled_connection_back_between_polls(
    cast, settings, redis_url
):
    """An open stream polls the event table; between polls its connection goes back to the
    process's pool (PostgreSQL), so streams held for minutes cannot starve the requests."""
    from runs import streams

    settings.SPARKOPS_STREAM_POLL_SECONDS = 0.1
    # Sent to a broker no worker reads (redis_url): the run stays pending, the stream open.
    run = services.run_create(workflow=one_agent_workflow(cast), input={}, actor=cast.owner)
    chunks: list[str] = []

    slot = streams.acquire(cast.owner.pk)

    def consume() -> None:
        try:
            chunks.extend(streams.event_stream(run.pk, 0, slot))
        finally:
            slot.release()
            connection.close()

    connection.close()  # this thread's own connection back to the pool before watching it
    pool = getattr(connection, "pool", None)

    def checked_out() -> int:  # connections of this process's pool in use (by any thread)
        stats = pool.get_stats()
        return stats["pool_size"] - stats["pool_available"]

    idle = checked_out() if pool is not None else 0
    stream = threading.Thread(target=consume, daemon=True)
    stream.start()
    try:
        wait_until(lambda: any(c.startswith("id: ") for c in chunks), what="the first events")
        if pool is not None:
            assert checked_out() <= idle + 1
            wait_until(
                lambda: checked_out() == idle,
                timeout=10,
                interval=0.01,
                what="the stream's connection back in the pool between two polls",
            )
            assert stream.is_alive()
    finally:
        services.run_cancel(run=run, actor=cast.owner)  # the stream ends with the run
        stream.join(timeout=30)
    assert not stream.is_alive()
    assert chunks[-1] == "event: end\ndata: {}\n\n"


def database_settings(**env: str) -> dict[str, Any]:
    """DATABASES["default"] as a process started with this environment loads it."""
    code = (
        "import json, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'sparkops.settings'\n"
        "from django.conf import settings\n"
        "print(json.dumps(settings.DATABASES['default'], default=str))"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DB_")}
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        env={**clean, "SECRET_KEY": "x", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return json.loads(out)


def test_postgresql_connections_come_from_a_capped_pool_unless_turned_off():
    url = "postgres://u@127.0.0.1:5432/d"
    pooled = database_settings(DATABASE_URL=url)
    assert pooled["CONN_MAX_AGE"] == 0
    assert pooled["OPTIONS"]["pool"] == {
        "min_size": 0,
        "max_size": 10,
        "timeout": 10.0,
        "reconnect_timeout": 5.0,
    }
    sized = database_settings(DATABASE_URL=url, DB_POOL_MAX_SIZE="34", DB_POOL_TIMEOUT="2")
    assert (sized["OPTIONS"]["pool"]["max_size"], sized["OPTIONS"]["pool"]["timeout"]) == (34, 2)
    # Off: a connection per thread, closed after each request unless DB_CONN_MAX_AGE says.
    assert "pool" not in database_settings(DATABASE_URL=url, DB_POOL="0").get("OPTIONS", {})
    assert database_settings(DATABASE_URL=url, DB_POOL="0")["CONN_MAX_AGE"] == 0
    kept = database_settings(DATABASE_URL=url, DB_POOL="0", DB_CONN_MAX_AGE="30")
    assert kept["CONN_MAX_AGE"] == 30
    sqlite = database_settings(DATABASE_URL="sqlite:////tmp/x.sqlite3", DB_SQLITE_TIMEOUT="2")
    assert sqlite["OPTIONS"]["timeout"] == 2


@pytest.mark.parametrize("path", ["/api/v1/runs/", "/admin/"])
def test_a_database_error_outside_any_view_answers_503_too(path):
    """Middleware (a session read, the governance flush) runs outside views: Django hands its
    exceptions to handler500, which answers a database error like the views do."""
    from django.db import OperationalError
    from django.test import RequestFactory

    from sparkops.urls import handler500

    try:
        raise OperationalError("server closed the connection unexpectedly")
    except OperationalError:
        response = handler500(RequestFactory().get(path))
    assert response.status_code == 503
    assert response["Retry-After"] == "5"
    assert json.loads(response.content)["type"] == "database_unavailable"
