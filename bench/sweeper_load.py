"""Sweeper under load: runs created at a steady rate, the sweeper sent as beat sends it; how many
messages it sent again, and how long the backlog took to drain once the load stopped.

    .venv/bin/python bench/sweeper_load.py                      # 10 runs/s for 180 s
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/x REDIS_URL=redis://127.0.0.1:6379/3 \\
        .venv/bin/python bench/sweeper_load.py --rate 10 --seconds 180

Like bench/engine.py it starts its own worker process (threads pool) on a database of its own
(`sparkops_bench_sweeper` on the PostgreSQL of DATABASE_URL, or SQLite) and the configured
broker. Each run is a 5-step workflow (a diamond plus a tail) of no-op builtin steps, every one
queued (SPARKOPS_INLINE_STEPS=0: the path of HTTP tools and model calls). Every
`--sweep-seconds` this process sends `runs.sweep` to the orchestration queue, as beat does.
`--grace` is SPARKOPS_QUEUED_GRACE for the worker (60 s in production; shorter makes the
sweeper look harder). Prints JSON: runs by status, the peak of queued steps, the drain time
(load stopped → every run finished), and the sweeper's re-sends (`resends` of steps and runs)
as a share of step attempts and of runs (target: <= 5 % of attempts).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

from bench.engine import configure_environment, start_worker, stop_worker, wait  # noqa: E402

NODES = [
    {"id": "a", "type": "tool", "tool": "noop", "args": {}},
    {"id": "b", "type": "tool", "tool": "noop", "args": {}, "depends_on": ["a"]},
    {"id": "c", "type": "tool", "tool": "noop", "args": {}, "depends_on": ["a"]},
    {"id": "d", "type": "tool", "tool": "noop", "args": {}, "depends_on": ["b", "c"]},
    {"id": "e", "type": "tool", "tool": "noop", "args": {}, "depends_on": ["d"]},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=10.0, help="runs created per second")
    parser.add_argument("--seconds", type=float, default=180.0, help="how long the load lasts")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--grace", type=float, default=60.0)
    parser.add_argument("--sweep-seconds", type=float, default=30.0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="sparkops-bench-sweeper-"))
    configure_environment(workdir, database="sparkops_bench_sweeper")
    os.environ["SPARKOPS_QUEUED_GRACE"] = str(args.grace)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sparkops.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.db.models import Count, Sum

    call_command("migrate", verbosity=0)

    from accounts.models import User
    from projects.services import project_create
    from runs import services as runs
    from runs.models import Run, RunStep
    from sparkops.celery import app
    from sparkops.testing.engine import purge_queues
    from tools.services import tool_create
    from workflows.services import workflow_create

    user = User.objects.create_user(email="bench@example.com", password="x" * 20)
    project = project_create(actor=user, name="Bench")
    tool_create(
        actor=user, project=project, name="noop", kind="builtin", config={"function": "noop"}
    )
    workflow = workflow_create(
        actor=user, project=project, name="five", definition={"nodes": NODES}
    )
    purge_queues()

    stop = threading.Event()
    sweeps = {"sent": 0}
    queued_peak = {"steps": 0}

    def beat() -> None:
        while not stop.wait(args.sweep_seconds):
            app.send_task("runs.sweep", queue="orchestration", expires=args.sweep_seconds)
            sweeps["sent"] += 1

    def sample() -> None:
        while not stop.wait(1.0):
            n = RunStep.objects.filter(status=RunStep.Status.QUEUED).count()
            queued_peak["steps"] = max(queued_peak["steps"], n)
        connection.close()

    worker = start_worker(workdir, args.concurrency, "sweeper-load", inline=0)
    threads = [threading.Thread(target=beat, daemon=True), threading.Thread(target=sample)]
    try:
        warm = runs.run_create(workflow=workflow, input={}, actor=user)
        wait(lambda: Run.objects.get(pk=warm.pk).is_finished, 120)
        for thread in threads:
            thread.start()
        started = time.monotonic()
        created = 0
        while (elapsed := time.monotonic() - started) < args.seconds:
            due = int(elapsed * args.rate) + 1
            while created < due:
                runs.run_create(workflow=workflow, input={"n": created}, actor=user)
                created += 1
            time.sleep(max(0.0, created / args.rate - (time.monotonic() - started)))
        load_stopped = time.monotonic()
        wait(
            lambda: (
                not Run.objects.exclude(pk=warm.pk)
                .exclude(status__in=Run.FINISHED_STATUSES)
                .exists()
            ),
            timeout=3600,
            interval=0.1,
        )
        drained = time.monotonic() - load_stopped
    finally:
        stop.set()
        for thread in threads:
            if thread.is_alive():
                thread.join(timeout=10)
        stop_worker(worker)

    bench_runs = Run.objects.exclude(pk=warm.pk)
    steps = RunStep.objects.filter(run__in=bench_runs)
    step_totals = steps.aggregate(
        attempts=Sum("attempt"), resends=Sum("resends"), resent=Count("resent_at")
    )
    run_totals = bench_runs.aggregate(resends=Sum("resends"), runs=Count("pk"))
    statuses = dict(bench_runs.values_list("status").annotate(n=Count("pk")))
    attempts = step_totals["attempts"] or 0
    step_resends = step_totals["resends"] or 0
    run_resends = run_totals["resends"] or 0
    result = {
        "database": connection.vendor,
        "broker": app.conf.broker_url.split("://")[0],
        "worker_concurrency": args.concurrency,
        "load": {"runs_per_s": args.rate, "seconds": args.seconds, "runs": created},
        "grace_s": args.grace,
        "sweep_every_s": args.sweep_seconds,
        "sweeps_sent": sweeps["sent"],
        "statuses": statuses,
        "queued_steps_peak": queued_peak["steps"],
        "drain_s": round(drained, 1),
        "drain_target_s": 30,
        "step_attempts": attempts,
        "step_resends": step_resends,
        "step_resend_pct": round(100 * step_resends / attempts, 2) if attempts else None,
        "run_resends": run_resends,
        "run_resend_pct": round(100 * run_resends / created, 2) if created else None,
        "resend_target_pct": 5,
    }
    print(json.dumps(result, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
