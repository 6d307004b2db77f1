"""Model calls in flight: N one-agent-step runs against a model that answers after --delay s.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/x REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/inflight.py --runs 1000     # uses database x_inflight

Starts the workers `make run` starts (Procfile): `worker`, the orchestration queue on a threads
pool, and `steps`, `python -m sparkops.worker` (gevent on PostgreSQL + Redis; `--pool threads`
forces the threads pool for comparison), and a fake OpenAI-compatible server on 127.0.0.1
(sparkops/testing/fake_llm.py). Creates an `openai_compatible` agent on it and a one-agent
workflow, creates --runs runs one after another (runs.services.run_create, as the API does),
and waits for all to succeed. Then, on the same workers, raw Celery: --runs tasks each making
the same SDK call (bench.tasks.llm_call). Prints JSON: time from the first run created to all
succeeded, and after the last was created; the most model calls the server held at once; the
peak of PostgreSQL connections to the database (pg_stat_activity) and the peak resident memory
of each worker (with its child processes, CPU too: the steps worker is the parent of
STEPS_PROCESSES gevent workers, 2 by default). Nothing is asserted. Targets (issue #14), for
1,000 runs and a 2 s model: all succeeded within 10 s of the last run created, <= 50
connections, the worker < 1 GB.

`--map` adds issue #16's case between the two: ONE run whose `map` node has --runs agent items
at `max_concurrency` --runs, timed from its creation to its success (target: within the time
the N runs take).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))


def configure_environment(
    workdir: Path,
    suffix: str = "_inflight",
    env: dict[str, str] | None = None,
    keep_query: bool = True,
) -> str:
    """A database of the benchmark's own (`<name><suffix>`, `env` set besides); returns its
    URL. Shared by the benchmarks that start workers (reconnect.py, stream_latency.py)."""
    os.environ.setdefault("SECRET_KEY", "bench-" + "x" * 50)
    os.environ["SPARKOPS_VAR_DIR"] = str(workdir / "var")
    os.environ["SPARKOPS_OUTBOUND_ALLOW"] = "127.0.0.1"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.update(env or {})
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres") or not os.environ.get("REDIS_URL"):
        script = f"bench/{Path(sys.argv[0]).name}"
        raise SystemExit(f"{script} measures PostgreSQL + Redis: set both URLs")
    parts = urlsplit(url)
    name = parts.path.lstrip("/") + suffix
    import psycopg

    admin = urlunsplit(parts._replace(path="/postgres")).replace("postgres://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = parts._replace(path=f"/{name}")
    os.environ["DATABASE_URL"] = urlunsplit(parts if keep_query else parts._replace(query=""))
    return os.environ["DATABASE_URL"]


def django_ready() -> None:
    """Django set up on the benchmark's database, migrated."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sparkops.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def bench_owner() -> tuple[Any, Any]:
    """The benchmark's user and its project."""
    from accounts.models import User
    from projects.services import project_create

    user = User.objects.create_user(email="bench@example.com", password="x" * 20)
    return user, project_create(actor=user, name="Bench")


def start(workdir: Path, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    log = (workdir / f"{name}.log").open("wb")
    return subprocess.Popen(
        argv, cwd=BASE_DIR, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )


def start_workers(workdir: Path, pool: str | None) -> dict[str, subprocess.Popen]:
    """The two workers of the Procfile, as `make run` starts them."""
    bin_dir = Path(sys.executable).parent
    common = ["-I", "bench.tasks", "--without-gossip", "--without-mingle", "-l", "WARNING"]
    celery = [str(bin_dir / "celery"), "-A", "sparkops", "worker", "-Q", "orchestration"]
    orchestration = start(
        workdir,
        "worker",
        [*celery, "-P", "threads", "-c", "8", "-n", "orchestration@%h", *common],
        {"DB_POOL_MAX_SIZE": "10"},
    )
    steps = start(
        workdir,
        "steps",
        [sys.executable, "-m", "sparkops.worker", "-n", "steps@%h", *common],
        {"WORKER_POOL": pool} if pool else {},
    )
    return {"worker": orchestration, "steps": steps}


def tree(pid: int) -> list[int]:
    """`pid` and its descendants (the steps worker is a parent of STEPS_PROCESSES workers)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(p for child in children for p in tree(int(child)))]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants."""
    total = 0.0
    for each in tree(pid):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def cpu_s(pid: int) -> float:
    """CPU time (user + system) of a process and its live descendants so far."""
    total = 0.0
    for each in tree(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Watcher(threading.Thread):
    """Samples connections to the database (this watcher's own excluded) and workers' RSS."""

    def __init__(self, database_url: str, workers: dict[str, subprocess.Popen]) -> None:
        super().__init__(daemon=True)
        self.url = database_url.replace("postgres://", "postgresql://", 1)
        self.dbname = urlsplit(self.url).path.lstrip("/")
        self.workers = workers
        self.stop = threading.Event()
        self.reset()

    def reset(self) -> None:
        self.peak_connections = 0
        self.peak_rss = dict.fromkeys(self.workers, 0.0)
        self.cpu = {name: cpu_s(proc.pid) for name, proc in self.workers.items()}
        self.own_cpu = time.process_time()

    def cpu_used(self) -> dict[str, float]:
        used = {n: round(cpu_s(p.pid) - self.cpu[n], 2) for n, p in self.workers.items()}
        return {**used, "bench": round(time.process_time() - self.own_cpu, 2)}

    def run(self) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.stop.wait(0.05):
                (count,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    [self.dbname],
                ).fetchone()
                self.peak_connections = max(self.peak_connections, count)
                for name, proc in self.workers.items():
                    self.peak_rss[name] = max(self.peak_rss[name], rss_mb(proc.pid))


def wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--delay", type=float, default=2.0, help="the model's answer time (s)")
    parser.add_argument("--pool", choices=["gevent", "threads"], help="force the steps pool")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--map", action="store_true", help="also one run mapping --runs items")
    args = parser.parse_args()
    n = args.runs

    workdir = Path(tempfile.mkdtemp(prefix="sparkops-inflight-"))
    database_url = configure_environment(workdir)
    django_ready()
    from django.db import connection

    from agents.services import agent_create
    from bench.tasks import llm_call
    from runs import services as runs
    from runs.models import Run
    from sparkops.testing.engine import purge_queues
    from sparkops.testing.fake_llm import FakeLLMServer
    from workflows.services import workflow_create

    model = FakeLLMServer(delay=args.delay).start()
    user, project = bench_owner()
    agent_create(
        actor=user,
        project=project,
        name="Bench model",
        slug="bench-model",
        provider="openai_compatible",
        model="bench",
        base_url=model.openai_base_url,
    )
    workflow = workflow_create(
        actor=user,
        project=project,
        name="one agent step",
        definition={
            "nodes": [{"id": "answer", "type": "agent", "agent": "bench-model", "prompt": "Hi"}]
        },
    )

    def succeeded(ids: list) -> int:
        return Run.objects.filter(pk__in=ids, status=Run.Status.SUCCEEDED).count()

    def finished(ids: list) -> bool:
        done = Run.objects.filter(pk__in=ids, status__in=Run.FINISHED_STATUSES).count()
        return done == len(ids)

    purge_queues()
    workers = start_workers(workdir, args.pool)
    watcher = Watcher(database_url, workers)
    watcher.start()
    try:
        warm = runs.run_create(workflow=workflow, input={}, actor=user)
        wait(lambda: finished([warm.pk]), 120, "the warm-up run")
        connection.close()
        model.reset()
        watcher.reset()

        # The engine: runs created one after another, as fast as this process can.
        started = time.monotonic()
        ids = [runs.run_create(workflow=workflow, input={}, actor=user).pk for _ in range(n)]
        created = time.monotonic()
        wait(lambda: finished(ids), args.timeout, "every run to finish")
        done = time.monotonic()
        engine = {
            "runs": args.runs,
            "succeeded": succeeded(ids),
            "creation_s": round(created - started, 2),
            "first_created_to_all_succeeded_s": round(done - started, 2),
            "after_last_created_s": round(done - created, 2),
            "peak_model_calls_in_flight": model.peak_in_flight,
            "peak_db_connections": watcher.peak_connections,
            "peak_rss_mb": {k: round(v, 1) for k, v in watcher.peak_rss.items()},
            "cpu_s": watcher.cpu_used(),
        }
        connection.close()
        model.reset()
        watcher.reset()

        mapped = None
        if args.map:  # one run, a map of N agent items all in flight at once
            fan = workflow_create(
                actor=user,
                project=project,
                name="map of agent items",
                definition={
                    "nodes": [
                        {
                            "id": "each",
                            "type": "map",
                            "items": list(range(n)),
                            "max_concurrency": min(n, 1000),
                            "node": {
                                "type": "agent",
                                "agent": "bench-model",
                                "prompt": "{{ item }}",
                            },
                        }
                    ]
                },
            )
            started = time.monotonic()
            run_id = runs.run_create(workflow=fan, input={}, actor=user).pk
            wait(lambda: finished([run_id]), args.timeout, "the map run")
            done = time.monotonic()
            mapped = {
                "items": n,
                "status": Run.objects.get(pk=run_id).status,
                "created_to_succeeded_s": round(done - started, 2),
                "peak_model_calls_in_flight": model.peak_in_flight,
                "peak_db_connections": watcher.peak_connections,
                "cpu_s": watcher.cpu_used(),
            }
            connection.close()
            model.reset()
            watcher.reset()

        # Raw Celery: the same SDK call in a task on the same steps worker.
        markers = workdir / "markers"
        markers.mkdir()
        started = time.monotonic()
        for i in range(args.runs):
            llm_call.apply_async((model.openai_base_url, str(markers), f"c{i}"), queue="steps")
        sent = time.monotonic()
        wait(lambda: len(os.listdir(markers)) >= args.runs, args.timeout, "the raw calls")
        done = time.monotonic()
        raw = {
            "tasks": args.runs,
            "sending_s": round(sent - started, 2),
            "first_sent_to_all_done_s": round(done - started, 2),
            "after_last_sent_s": round(done - sent, 2),
            "peak_model_calls_in_flight": model.peak_in_flight,
            "peak_rss_mb": {k: round(v, 1) for k, v in watcher.peak_rss.items()},
            "cpu_s": watcher.cpu_used(),
        }
    finally:
        watcher.stop.set()
        for proc in workers.values():
            proc.terminate()
        for proc in workers.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        model.stop()
    steps_log = (workdir / "steps.log").read_text(errors="replace")
    print(
        json.dumps(
            {
                "database": connection.vendor,
                "steps_pool": args.pool or "default (sparkops.worker)",
                "model_delay_s": args.delay,
                "engine": engine,
                **({"map": mapped} if mapped else {}),
                "raw_celery": raw,
                "steps_worker_errors": steps_log.count("ERROR"),
            },
            indent=2,
        )
    )
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
