"""Connections lost during HTTP waits: extra HTTP calls after `pg_terminate_backend` kills.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/x REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/reconnect.py       # uses database x_reconnect

Issue #14's fault case. Starts the workers `make run` starts (the orchestration queue on a
threads pool; `python -m sparkops.worker`, gevent on PostgreSQL + Redis, for the steps queue),
the steps worker's connections named by `application_name` so that only they are terminated,
and an HTTP endpoint on 127.0.0.1 that counts calls and answers after --delay s. Each round
creates --runs runs of a 5-step chain of HTTP tool steps (5 x --runs calls expected) and waits
for all to finish, running the sweeper every 0.5 s as beat would (heartbeat timeout 10 s), so a
step whose result was thrown away shows up as a second call. Round `baseline`: no kills.
Round `kills`: --kills times, spread over the round, every connection of the steps worker is
terminated while calls wait. Prints JSON: runs by status, calls seen, extra calls, duration,
backends terminated, and the worker's reconnect log lines. Nothing is asserted. Target (issue
#14): six kills during 100 HTTP steps, 0 extra HTTP calls.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench import inflight  # noqa: E402

APPLICATION_NAME = "sparkops-bench-steps"
NODES = ("a", "b", "c", "d", "e")


def configure_environment(workdir: Path) -> str:
    """A database of the benchmark's own (`<name>_reconnect`); returns its URL."""
    # The sweeper finds a silent step after production's 30 s. Not less: a live step is
    # silent while it waits for a pooled connection (up to DB_POOL_TIMEOUT, 10 s), and kills in
    # quick succession make psycopg_pool back off (it sleeps 1, 2, 4 s between connections it
    # finds ended, and waits before opening one again): tests/test_db_reconnect.py saw 14 s.
    sweeper = {
        "SPARKOPS_HEARTBEAT_SECONDS": "0.5",
        "SPARKOPS_HEARTBEAT_TIMEOUT": "30",
        "SPARKOPS_QUEUED_GRACE": "2",
    }
    return inflight.configure_environment(workdir, "_reconnect", sweeper, keep_query=False)


def start_workers(workdir: Path, database_url: str) -> dict[str, subprocess.Popen]:
    bin_dir = Path(sys.executable).parent
    common = ["--without-gossip", "--without-mingle", "-l", "WARNING"]
    celery = [str(bin_dir / "celery"), "-A", "sparkops", "worker", "-Q", "orchestration"]
    orchestration = inflight.start(
        workdir,
        "worker",
        [*celery, "-P", "threads", "-c", "8", "-n", "orchestration@%h", *common],
        {"DB_POOL_MAX_SIZE": "10"},
    )
    steps = inflight.start(
        workdir,
        "steps",
        [sys.executable, "-m", "sparkops.worker", "-n", "steps@%h", *common],
        {"DATABASE_URL": f"{database_url}?application_name={APPLICATION_NAME}"},
    )
    return {"worker": orchestration, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="runs a round (5 HTTP steps each)")
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--delay", type=float, default=0.4, help="the endpoint's answer time (s)")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sparkops-reconnect-"))
    database_url = configure_environment(workdir)
    inflight.django_ready()
    from django.db import connection

    from runs import services as runs
    from runs.models import Run, RunEvent
    from sparkops.testing.engine import purge_queues
    from sparkops.testing.processes import CountingServer
    from tools.services import tool_create
    from workflows.services import workflow_create

    endpoint = CountingServer(delay=args.delay).__enter__()
    user, project = inflight.bench_owner()
    tool_create(
        actor=user,
        project=project,
        name="record",
        kind="http",
        parameters={"type": "object", "properties": {"step": {"type": "string"}}},
        config={"method": "POST", "url": f"{endpoint.url}/record", "body": "{{ args }}"},
    )
    nodes = [
        {
            "id": node,
            "type": "tool",
            "tool": "record",
            "depends_on": [NODES[i - 1]] if i else [],
            "args": {"step": node},
            "retry": {"max_attempts": 3, "backoff_seconds": 0.1},
        }
        for i, node in enumerate(NODES)
    ]
    workflow = workflow_create(
        actor=user, project=project, name="chain", definition={"nodes": nodes}
    )

    def terminate() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s AND datname = current_database()",
                [APPLICATION_NAME],
            )
            return int(cursor.fetchone()[0])

    def reconnects() -> int:
        text = (workdir / "steps.log").read_text(errors="replace")
        return text.count("connection lost")

    def round_(kills: int) -> dict[str, Any]:
        before_calls = len(endpoint.requests)
        before_reconnects = reconnects()
        expected = args.runs * len(NODES)
        started = time.monotonic()
        ids = [
            runs.run_create(workflow=workflow, input={}, actor=user).pk for _ in range(args.runs)
        ]
        terminated = []
        spacing = expected // (kills + 1) if kills else 0
        deadline = started + args.timeout
        next_sweep = 0.0
        while True:
            calls = len(endpoint.requests) - before_calls
            if len(terminated) < kills and calls >= spacing * (len(terminated) + 1):
                terminated.append(terminate())
            if time.monotonic() >= next_sweep:
                runs.sweep()
                next_sweep = time.monotonic() + 0.5
            done = Run.objects.filter(pk__in=ids, status__in=Run.FINISHED_STATUSES).count()
            if done == len(ids) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        duration = time.monotonic() - started
        calls = len(endpoint.requests) - before_calls
        statuses = collections.Counter(
            Run.objects.filter(pk__in=ids).values_list("status", flat=True)
        )
        recovered = collections.Counter(
            RunEvent.objects.filter(run_id__in=ids, payload__recovered=True).values_list(
                "payload__reason", flat=True
            )
        )
        connection.close()
        return {
            "runs": dict(statuses),
            "http_steps": expected,
            "http_calls": calls,
            "extra_http_calls": calls - expected,
            "duration_s": round(duration, 2),
            "kills": len(terminated),
            "backends_terminated": sum(terminated),
            "worker_reconnect_log_lines": reconnects() - before_reconnects,
            "steps_recovered_by_the_sweeper": dict(recovered),
        }

    purge_queues()
    workers = start_workers(workdir, database_url)
    try:
        warm = runs.run_create(workflow=workflow, input={}, actor=user)
        deadline = time.monotonic() + 120
        while not Run.objects.filter(pk=warm.pk, status__in=Run.FINISHED_STATUSES).exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the warm-up run did not finish")
            time.sleep(0.05)
        result = {"baseline": round_(0), "kills": round_(args.kills)}
    finally:
        for proc in workers.values():
            proc.terminate()
        for proc in workers.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        endpoint.__exit__(None, None, None)
    print(json.dumps({"delay_s": args.delay, **result, "logs": str(workdir)}, indent=2))


if __name__ == "__main__":
    main()
