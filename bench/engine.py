"""Engine benchmark: Spark-Ops runs against raw Celery on the same broker, in the same run.

    .venv/bin/python bench/engine.py            # embedded default (SQLite + filesystem broker)
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/x REDIS_URL=redis://127.0.0.1:6379/3 \
        .venv/bin/python bench/engine.py        # PostgreSQL + Redis (uses database sparkops_bench)

Starts its own worker process (threads pool) and prints JSON:
(a) per-step overhead of a 200-node linear chain of no-op builtin steps vs a raw Celery chain
    of 200 no-op tasks (ratio; target <= 3);
(b) throughput of a 500-node fan-out vs a raw Celery group of 500 no-op tasks (ratio; target
    >= 0.4);
(c) 100 concurrent runs of a 5-step workflow: runs/s and p50/p95 run latency;
(d) database queries per step for 10- and 50-step chains (should be constant).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))


def configure_environment(workdir: Path) -> None:
    """A database and broker of the benchmark's own, so it never touches real data."""
    os.environ.setdefault("SECRET_KEY", "bench-" + "x" * 50)
    os.environ["SPARKOPS_VAR_DIR"] = str(workdir / "var")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        parts = urlsplit(url)
        admin = urlunsplit(parts._replace(path="/postgres"))
        import psycopg

        with psycopg.connect(
            admin.replace("postgres://", "postgresql://", 1), autocommit=True
        ) as conn:
            conn.execute("DROP DATABASE IF EXISTS sparkops_bench WITH (FORCE)")
            conn.execute("CREATE DATABASE sparkops_bench")
        os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path="/sparkops_bench"))
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"


def start_worker(workdir: Path, concurrency: int) -> subprocess.Popen[bytes]:
    log = (workdir / "worker.log").open("wb")
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "celery"),
            "-A",
            "sparkops",
            "worker",
            "-Q",
            "orchestration,steps",
            "-P",
            "threads",
            "-c",
            str(concurrency),
            "-I",
            "bench.tasks",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "WARNING",
        ],
        cwd=BASE_DIR,
        env=os.environ.copy(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait(predicate, timeout: float = 600.0, interval: float = 0.01):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish in time")
        time.sleep(interval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chain", type=int, default=200)
    parser.add_argument("--fanout", type=int, default=500)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sparkops-bench-"))
    configure_environment(workdir)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sparkops.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    call_command("migrate", verbosity=0)

    from accounts.models import User
    from bench.tasks import noop
    from projects.services import project_create
    from runs import services as runs
    from runs.models import Run
    from sparkops.celery import app
    from sparkops.testing.engine import purge_queues
    from tools.services import tool_create
    from workflows.services import workflow_create

    user = User.objects.create_user(email="bench@example.com", password="x" * 20)
    project = project_create(actor=user, name="Bench")
    tool_create(
        actor=user, project=project, name="noop", kind="builtin", config={"function": "noop"}
    )

    def workflow(name: str, nodes: list[dict]) -> object:
        return workflow_create(
            actor=user,
            project=project,
            name=name,
            definition={"nodes": nodes},
            timeout_seconds=3600,
        )

    def chain_nodes(n: int) -> list[dict]:
        return [
            {
                "id": f"s{i}",
                "type": "tool",
                "tool": "noop",
                "args": {"i": i},
                "depends_on": [f"s{i - 1}"] if i else [],
            }
            for i in range(n)
        ]

    def finished(run_ids: list) -> bool:
        return Run.objects.filter(pk__in=run_ids, status__in=Run.FINISHED_STATUSES).count() == len(
            run_ids
        )

    # (d) queries per step, counted on the same code path the worker runs, in this process.
    query_counts = {}
    for n in (10, 50):
        wf = workflow(f"queries-{n}", chain_nodes(n))
        run = runs.run_create(workflow=wf, input={}, actor=user)
        with CaptureQueriesContext(connection) as ctx:
            runs.run_enqueue(run_id=run.pk)
            for _ in range(n):
                step = run.steps.filter(status="queued").first()
                runs.step_execute(step_id=step.pk, attempt=step.attempt)
        run.refresh_from_db()
        assert run.status == "succeeded", run.error
        query_counts[n] = round(len(ctx.captured_queries) / n, 2)
    purge_queues()

    worker = start_worker(workdir, args.concurrency)
    marker = workdir / "markers"
    try:
        # Warm up: the worker is consuming and connections are open.
        warm = workflow("warmup", chain_nodes(3))
        warm_run = runs.run_create(workflow=warm, input={}, actor=user)
        wait(lambda: finished([warm_run.pk]), 120)

        # (a) linear chain
        marker.mkdir()
        started = time.perf_counter()
        from celery import chain

        chain(
            *[noop.si() for _ in range(args.chain - 1)], noop.si(str(marker), "chain-done")
        ).apply_async()
        wait(lambda: (marker / "chain-done").exists())
        raw_chain = time.perf_counter() - started

        wf = workflow("chain", chain_nodes(args.chain))
        started = time.perf_counter()
        run = runs.run_create(workflow=wf, input={}, actor=user)
        wait(lambda: finished([run.pk]))
        engine_chain = time.perf_counter() - started
        assert Run.objects.get(pk=run.pk).status == "succeeded"

        # (b) fan-out
        fan_dir = workdir / "fan"
        fan_dir.mkdir()
        started = time.perf_counter()
        for i in range(args.fanout):
            noop.apply_async((str(fan_dir), f"t{i}"))
        wait(lambda: len(os.listdir(fan_dir)) >= args.fanout)
        raw_fan = time.perf_counter() - started

        wf = workflow(
            "fanout",
            [
                {"id": f"n{i}", "type": "tool", "tool": "noop", "args": {"i": i}}
                for i in range(args.fanout)
            ],
        )
        started = time.perf_counter()
        run = runs.run_create(workflow=wf, input={}, actor=user)
        wait(lambda: finished([run.pk]))
        engine_fan = time.perf_counter() - started
        assert Run.objects.get(pk=run.pk).status == "succeeded"

        # (c) concurrent runs of a 5-step workflow (a diamond plus a tail)
        nodes = [
            {"id": "a", "type": "tool", "tool": "noop", "args": {}},
            {"id": "b", "type": "tool", "tool": "noop", "args": {}, "depends_on": ["a"]},
            {"id": "c", "type": "tool", "tool": "noop", "args": {}, "depends_on": ["a"]},
            {
                "id": "d",
                "type": "transform",
                "output": "{{ steps.b.output }}",
                "depends_on": ["b", "c"],
            },
            {"id": "e", "type": "tool", "tool": "noop", "args": {}, "depends_on": ["d"]},
        ]
        wf = workflow("five", nodes)
        started = time.perf_counter()
        ids = [runs.run_create(workflow=wf, input={}, actor=user).pk for _ in range(args.runs)]
        wait(lambda: finished(ids))
        elapsed = time.perf_counter() - started
        latencies = sorted(
            (r.finished_at - r.created_at).total_seconds() for r in Run.objects.filter(pk__in=ids)
        )
        statuses = set(Run.objects.filter(pk__in=ids).values_list("status", flat=True))
    finally:
        worker.terminate()
        worker.wait(timeout=30)

    raw_hop = raw_chain / args.chain
    engine_step = engine_chain / args.chain
    result = {
        "database": connection.vendor,
        "broker": app.conf.broker_url.split("://")[0],
        "worker_concurrency": args.concurrency,
        "linear_chain": {
            "steps": args.chain,
            "raw_celery_hop_ms": round(raw_hop * 1000, 2),
            "engine_step_ms": round(engine_step * 1000, 2),
            "ratio": round(engine_step / raw_hop, 2),
            "target": "<= 3",
        },
        "fan_out": {
            "nodes": args.fanout,
            "raw_celery_tasks_per_s": round(args.fanout / raw_fan, 1),
            "engine_steps_per_s": round(args.fanout / engine_fan, 1),
            "ratio": round(raw_fan / engine_fan, 2),
            "target": ">= 0.4",
        },
        "concurrent_runs": {
            "runs": args.runs,
            "steps_per_run": 5,
            "statuses": sorted(statuses),
            "runs_per_s": round(args.runs / elapsed, 2),
            "p50_latency_s": round(statistics.median(latencies), 3),
            "p95_latency_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
        },
        "queries_per_step": {f"chain_{n}": q for n, q in query_counts.items()},
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
