"""Engine benchmark: Spark-Ops runs against raw Celery on the same broker, in the same run.

    .venv/bin/python bench/engine.py            # embedded default (SQLite + filesystem broker)
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/x REDIS_URL=redis://127.0.0.1:6379/3 \
        .venv/bin/python bench/engine.py        # PostgreSQL + Redis (uses database sparkops_bench)

Starts its own worker process, on the pool the `steps` queue's worker runs (sparkops.worker:
gevent, 1,000 greenlets, on PostgreSQL + Redis; 8 threads elsewhere; `--pool` to choose), the
same for raw Celery and the engine, and prints JSON:
(a) per-step overhead of a 200-node linear chain of no-op builtin steps vs a raw Celery chain
    of 200 no-op tasks (ratio; target <= 2 queued, issue #14);
(b) throughput of a 500-node fan-out vs a raw Celery group of 500 no-op tasks (ratio; target
    >= 0.5 queued);
(c) 100 concurrent runs of a 5-step workflow: runs/s and p50/p95 run latency (target p95 <=
    2 s queued);
(d) database statements per step for 10- and 50-step chains (constant; <= 8 queued);
(e) a `map` node over as many items as the fan-out has nodes, against that fan-out (ratio;
    target <= 1.5, issue #16).
The engine is measured twice: with its default (transforms and builtin tools run inline) and
with every step queued (SPARKOPS_INLINE_STEPS=0, the path of HTTP tools and model calls).
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


def configure_environment(workdir: Path, database: str = "") -> None:
    """A database and broker of the benchmark's own, so it never touches real data. The
    database is BENCH_DATABASE (default sparkops_bench) on the server of DATABASE_URL."""
    database = database or os.environ.get("BENCH_DATABASE", "sparkops_bench")
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
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            conn.execute(f"CREATE DATABASE {database}")
        os.environ["DATABASE_URL"] = urlunsplit(parts._replace(path=f"/{database}"))
    else:
        os.environ["DATABASE_URL"] = f"sqlite:///{workdir / 'bench.sqlite3'}"


# The engine measured twice: with its default (transforms and builtin tools run inline, up to
# 100 per planning transaction) and with every step queued (SPARKOPS_INLINE_STEPS=0), which
# is the path of steps that cannot run inline: HTTP tools and model calls.
MODES = {"inline": 100, "queued": 0}


def start_worker(
    workdir: Path, concurrency: int, name: str, inline: int | None = None, pool: str = "threads"
) -> subprocess.Popen[bytes]:
    env = os.environ.copy()
    if inline is not None:
        env["SPARKOPS_INLINE_STEPS"] = str(inline)
    env["WORKER_POOL"] = pool  # the settings follow it (SPARKOPS_STEPS_PER_MESSAGE)
    if pool == "gevent":  # the database pool sparkops.worker gives a gevent process
        from sparkops import worker

        env.setdefault("DB_POOL_MAX_SIZE", str(worker.GEVENT_DB_POOL))
        env.setdefault("DB_POOL_TIMEOUT", str(worker.GEVENT_DB_POOL_TIMEOUT))
    log = (workdir / f"worker-{name}.log").open("wb")
    return subprocess.Popen(
        [
            str(Path(sys.executable).parent / "celery"),
            "-A",
            "sparkops",
            "worker",
            "-Q",
            "orchestration,steps",
            "-P",
            pool,
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
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.terminate()
    worker.wait(timeout=30)


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
    parser.add_argument("--pool", choices=["gevent", "threads"], help="default: sparkops.worker's")
    parser.add_argument("--concurrency", type=int, help="default: 1000 on gevent, 8 on threads")
    args = parser.parse_args()
    from sparkops import pools
    from sparkops import worker as steps_worker

    pool = args.pool or pools.pool_for(os.environ)
    concurrency = args.concurrency or (
        steps_worker.GEVENT_CONCURRENCY if pool == "gevent" else steps_worker.THREADS_CONCURRENCY
    )

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

    def wait_runs(run_ids: list, timeout: float = 600.0) -> None:
        wait(lambda: finished(run_ids), timeout)

    # (d) queries per step, counted on the same code path the worker runs, in this process:
    # inline (transforms and builtin tools planned and run in one transaction) and queued
    # (every step a message to the steps queue, as an HTTP tool or a model call is).
    from django.test.utils import override_settings

    query_counts: dict[str, float] = {}
    for mode in MODES:
        for n in (10, 50):
            wf = workflow(f"queries-{mode}-{n}", chain_nodes(n))
            run = runs.run_create(workflow=wf, input={}, actor=user)
            counted = 0  # the engine's statements only, not this loop's own reads
            with override_settings(SPARKOPS_INLINE_STEPS=MODES[mode]):
                with CaptureQueriesContext(connection) as ctx:
                    runs.run_enqueue(run_id=run.pk)
                counted += len(ctx.captured_queries)
                for _ in range(2 * n):
                    run.refresh_from_db()
                    if run.is_finished:
                        break
                    step = run.steps.filter(status="queued").first()
                    with CaptureQueriesContext(connection) as ctx:
                        if step is None:
                            runs.run_advance(run_id=run.pk)
                        else:
                            runs.step_execute(step_id=step.pk, attempt=step.attempt)
                    counted += len(ctx.captured_queries)
            run.refresh_from_db()
            assert run.status == "succeeded", run.error
            query_counts[f"{mode}_chain_{n}"] = counted
    purge_queues()

    marker = workdir / "markers"
    marker.mkdir()
    # Raw Celery baselines, on a worker like the engine's.
    worker = start_worker(workdir, concurrency, "raw", pool=pool)
    try:
        from celery import chain

        noop.apply_async((str(marker), "warm"))
        wait(lambda: (marker / "warm").exists(), 120)
        started = time.perf_counter()
        chain(
            *[noop.si() for _ in range(args.chain - 1)], noop.si(str(marker), "chain-done")
        ).apply_async()
        wait(lambda: (marker / "chain-done").exists())
        raw_chain = time.perf_counter() - started

        fan_dir = workdir / "fan"
        fan_dir.mkdir()
        started = time.perf_counter()
        for i in range(args.fanout):
            noop.apply_async((str(fan_dir), f"t{i}"))
        wait(lambda: len(os.listdir(fan_dir)) >= args.fanout)
        raw_fan = time.perf_counter() - started
    finally:
        stop_worker(worker)

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
    raw_hop = raw_chain / args.chain
    result: dict = {
        "database": connection.vendor,
        "broker": app.conf.broker_url.split("://")[0],
        "worker_pool": pool,
        "worker_concurrency": concurrency,
        "raw_celery": {
            "chain_hop_ms": round(raw_hop * 1000, 2),
            "fan_out_tasks_per_s": round(args.fanout / raw_fan, 1),
        },
    }
    for mode in MODES:
        worker = start_worker(workdir, concurrency, mode, inline=MODES[mode], pool=pool)
        try:
            warm = workflow(f"warmup-{mode}", chain_nodes(3))
            warm_run = runs.run_create(workflow=warm, input={}, actor=user)
            wait_runs([warm_run.pk], 120)

            # (a) linear chain
            wf = workflow(f"chain-{mode}", chain_nodes(args.chain))
            started = time.perf_counter()
            run = runs.run_create(workflow=wf, input={}, actor=user)
            wait_runs([run.pk])
            engine_chain = time.perf_counter() - started
            assert Run.objects.get(pk=run.pk).status == "succeeded"

            # (b) fan-out
            wf = workflow(
                f"fanout-{mode}",
                [
                    {"id": f"n{i}", "type": "tool", "tool": "noop", "args": {"i": i}}
                    for i in range(args.fanout)
                ],
            )
            started = time.perf_counter()
            run = runs.run_create(workflow=wf, input={}, actor=user)
            wait_runs([run.pk])
            engine_fan = time.perf_counter() - started
            assert Run.objects.get(pk=run.pk).status == "succeeded"

            # (e) the same fan-out as one `map` node over a list of as many items
            wf = workflow(
                f"map-{mode}",
                [
                    {
                        "id": "m",
                        "type": "map",
                        "items": list(range(args.fanout)),
                        "node": {"type": "tool", "tool": "noop", "args": {"i": "{{ item }}"}},
                        "max_concurrency": 1000,
                    }
                ],
            )
            started = time.perf_counter()
            run = runs.run_create(workflow=wf, input={}, actor=user)
            wait_runs([run.pk])
            engine_map = time.perf_counter() - started
            assert Run.objects.get(pk=run.pk).status == "succeeded"

            # (c) concurrent runs of a 5-step workflow (a diamond plus a tail)
            wf = workflow(f"five-{mode}", nodes)
            started = time.perf_counter()
            ids = [runs.run_create(workflow=wf, input={}, actor=user).pk for _ in range(args.runs)]
            wait_runs(ids)
            elapsed = time.perf_counter() - started
            latencies = sorted(
                (r.finished_at - r.created_at).total_seconds()
                for r in Run.objects.filter(pk__in=ids)
            )
            statuses = set(Run.objects.filter(pk__in=ids).values_list("status", flat=True))
        finally:
            stop_worker(worker)

        engine_step = engine_chain / args.chain
        result[mode] = {
            "inline_steps_per_transaction": MODES[mode],
            "linear_chain": {
                "steps": args.chain,
                "engine_step_ms": round(engine_step * 1000, 2),
                "ratio_to_raw_hop": round(engine_step / raw_hop, 2),
                "target": "<= 2" if mode == "queued" else "",
            },
            "fan_out": {
                "nodes": args.fanout,
                "engine_steps_per_s": round(args.fanout / engine_fan, 1),
                "ratio_to_raw": round(raw_fan / engine_fan, 2),
                "target": ">= 0.5" if mode == "queued" else "",
            },
            "map": {
                "items": args.fanout,
                "seconds": round(engine_map, 3),
                "fan_out_seconds": round(engine_fan, 3),
                "ratio_to_fan_out": round(engine_map / engine_fan, 2),
                "target": "<= 1.5",
            },
            "concurrent_runs": {
                "runs": args.runs,
                "steps_per_run": 5,
                "statuses": sorted(statuses),
                "runs_per_s": round(args.runs / elapsed, 2),
                "p50_latency_s": round(statistics.median(latencies), 3),
                "p95_latency_s": round(latencies[int(0.95 * (len(latencies) - 1))], 3),
                "target": "p95 <= 2 s" if mode == "queued" else "",
            },
            # Per step of each chain (fixed per-run queries included), and per added step:
            # the second must not grow with the chain.
            "queries_per_step": {
                **{f"chain_{n}": round(query_counts[f"{mode}_chain_{n}"] / n, 2) for n in (10, 50)},
                "per_added_step": round(
                    (query_counts[f"{mode}_chain_50"] - query_counts[f"{mode}_chain_10"]) / 40, 2
                ),
            },
        }
    print(json.dumps(result, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
