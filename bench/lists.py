"""List endpoints as tables grow: `GET /api/v1/runs/` at 1,000 and at 1,000,000 runs.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/x .venv/bin/python bench/lists.py
    DATABASE_URL=... .venv/bin/python bench/lists.py --quick          # 1,000 and 100,000
    DATABASE_URL=... .venv/bin/python bench/lists.py --sizes 1000,1000000 --requests 300

PostgreSQL only. A database of its own per size, `sparkops_bench_lists_<size>` on the server
of DATABASE_URL (dropped and created at the start; `--reuse` keeps them and their runs, so a
second pass skips the insert).

Tenancy, so the caller's projects are a share of the table, not all of it: `--projects`
projects (20), each with one workflow of 24 transform nodes (the definition and the version
snapshot have a realistic size, a few KB); the caller is a viewer of `--member-of` of them (3)
and one more is public, so it sees 4 of 20 projects, 20 % of the runs. Runs are spread
round-robin over the projects, one second apart, newest last; each has a small input and
output, 90 % are finished. They are bulk-inserted server-side (`INSERT … SELECT FROM
generate_series`, 100,000 rows a transaction), then the table is vacuumed and analyzed.

A real server per size: gunicorn (sparkops/gunicorn_conf.py, 1 worker, gthread) in a
subprocess on a free port. The requests go one after another through sparkops.egress, the
project's one HTTP client (a new connection each; JWT of the caller; throttling raised out of
the way), after `--warmup` requests. The sizes take turns request by request, and the targets
round by round (`--rounds`, 3), so load from elsewhere on a shared machine hits every size
alike; each figure is the median of the rounds. Measured: the first page of `/api/v1/runs/`
(the target), the third page (two `next` cursors on), and the first page filtered by
`?status=failed` (5 % of the runs: 12 rows at 1,000, a full page above). Prints JSON:
p50/p95 in ms for each size and the ratios largest / smallest (target: p95 <= 1.5 for the
first page). Beside them, for each target, the page query as the API builds it (captured
in-process) under EXPLAIN ANALYZE: its database time and the rows of runs_run it read.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))

DATABASE = "sparkops_bench_lists"
BATCH = 100_000


def configure_environment(sizes: list[int], reuse: bool) -> dict[int, str]:
    """A database of the benchmark's own per size, `sparkops_bench_lists_<size>`; returns
    their URLs. Django in this process starts on the first (and switches, see use_database)."""
    url = os.environ.get("BENCH_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        sys.exit("bench/lists.py needs DATABASE_URL=postgres://... (it creates its own database)")
    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres")).replace("postgres://", "postgresql://", 1)
    import psycopg

    urls = {}
    with psycopg.connect(admin, autocommit=True) as conn:
        for size in sizes:
            name = f"{DATABASE}_{size}"
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not (reuse and found):
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
                conn.execute(f"CREATE DATABASE {name}")
            urls[size] = urlunsplit(parts._replace(path=f"/{name}"))
    os.environ["DATABASE_URL"] = urls[sizes[0]]
    os.environ["DB_POOL"] = "0"  # this process switches databases; the servers keep the pool
    os.environ.setdefault("SECRET_KEY", "bench-" + "x" * 50)
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ["SPARKOPS_VAR_DIR"] = tempfile.mkdtemp(prefix="sparkops-bench-lists-")
    return urls


def use_database(url: str) -> None:
    from django.db import connection

    connection.close()
    connection.settings_dict["NAME"] = urlsplit(url).path.lstrip("/")


def set_up(projects: int, member_of: int) -> tuple[Any, Any, list[tuple[Any, int, int]]]:
    """The caller, the projects (with one workflow each), idempotent for --reuse."""
    from accounts.models import User
    from projects.models import Membership, Project, Role
    from workflows.models import Workflow
    from workflows.services import workflow_create

    owner = User.objects.filter(email="owner@bench.test").first() or User.objects.create_user(
        "owner@bench.test", "bench-password"
    )
    caller = User.objects.filter(email="caller@bench.test").first() or User.objects.create_user(
        "caller@bench.test", "bench-password"
    )
    nodes = [
        {
            "id": f"n{i}",
            "type": "transform",
            "output": {"text": f"step {i}: {{{{ input.topic }}}} " + "lorem ipsum " * 8},
            "depends_on": [f"n{i - 1}"] if i else [],
        }
        for i in range(24)
    ]
    definition = {
        "input_schema": {"type": "object", "properties": {"topic": {"type": "string"}}},
        "nodes": nodes,
        "output": {"text": "{{ steps.n23.output.text }}"},
    }
    rows = []
    for i in range(projects):
        project, _ = Project.objects.get_or_create(
            slug=f"bench-{i}",
            defaults={"name": f"Bench {i}", "owner": owner, "is_public": i == member_of},
        )
        Membership.objects.get_or_create(project=project, user=owner, defaults={"role": Role.OWNER})
        if i < member_of:
            Membership.objects.get_or_create(
                project=project, user=caller, defaults={"role": Role.VIEWER}
            )
        workflow = Workflow.objects.filter(project=project).first() or workflow_create(
            actor=owner, project=project, name=f"Research {i}", definition=definition
        )
        rows.append((project.pk, workflow.pk, workflow.current_version.pk))
    return owner, caller, rows


INSERT = """
INSERT INTO runs_run (
    id, project_id, workflow_id, version_id, status, trigger, input, output, error,
    reuse_succeeded, chain_depth, created_by_id, created_at, queued_at, started_at, finished_at,
    duration_ms, input_tokens, output_tokens, cost, event_seq, cancel_requested)
SELECT
    gen_random_uuid(), w.project_id, w.workflow_id, w.version_id,
    CASE WHEN j %% 20 = 3 THEN 'failed' WHEN j %% 20 = 7 THEN 'cancelled'
         WHEN j %% 10 = 2 THEN 'running' ELSE 'succeeded' END,
    'api',
    jsonb_build_object('topic', 'topic ' || i),
    CASE WHEN j %% 10 = 2 THEN NULL
         ELSE jsonb_build_object('text', 'the summary of topic ' || i || repeat(' words', 20)) END,
    CASE WHEN j %% 20 = 3 THEN jsonb_build_object('type', 'step_failed', 'message', 'boom')
         ELSE NULL END,
    false, 0, %(owner)s,
    %(t0)s::timestamptz + make_interval(secs => i),
    %(t0)s::timestamptz + make_interval(secs => i),
    %(t0)s::timestamptz + make_interval(secs => i),
    CASE WHEN j %% 10 = 2 THEN NULL ELSE %(t0)s::timestamptz + make_interval(secs => i + 2) END,
    2000, 120, 80, 0.0012, 12, false
FROM generate_series(%(start)s, %(stop)s - 1) AS i
CROSS JOIN LATERAL (SELECT i / %(count)s AS j) AS status_of  -- not tied to the project
JOIN (SELECT * FROM unnest(%(projects)s::uuid[], %(workflows)s::bigint[], %(versions)s::bigint[])
      WITH ORDINALITY AS w(project_id, workflow_id, version_id, n)) AS w
  ON w.n - 1 = i %% %(count)s
"""


def grow_to(size: int, owner_id: int, rows: list[tuple[Any, int, int]], t0: str) -> float:
    """Insert runs until the table holds `size`; returns the seconds it took."""
    from django.db import connection, transaction

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs_run")
        have = cursor.fetchone()[0]
    started = time.monotonic()
    params: dict[str, Any] = {
        "owner": owner_id,
        "t0": t0,
        "projects": [str(p) for p, _, _ in rows],
        "workflows": [w for _, w, _ in rows],
        "versions": [v for _, _, v in rows],
        "count": len(rows),
    }
    for start in range(have, size, BATCH):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(INSERT, {**params, "start": start, "stop": min(start + BATCH, size)})
        print(f"  {min(start + BATCH, size):,} runs", file=sys.stderr, flush=True)
    if have < size:
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE runs_run")
    return time.monotonic() - started


def measure(
    servers: dict[int, tuple[str, str]], requests: int, warmup: int, rounds: int
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, str]]]:
    """p50 and p95 of each target on each server. The sizes take turns request by request
    (and the targets round by round), so a burst of load on a shared machine hits them alike;
    each figure is the median of the rounds'."""
    from sparkops import egress

    def get(target: str, size: int) -> Any:
        headers = {"Authorization": f"Bearer {servers[size][1]}"}
        response = egress.request("GET", target, headers=headers, timeout=60)
        if response.status_code != 200:
            raise SystemExit(f"GET {target}: {response.status_code} {response.text()[:300]}")
        return response.json()

    targets: dict[int, dict[str, str]] = {}
    for size, (url, _) in servers.items():
        deep = get(f"{url}/api/v1/runs/", size)["next"]
        for _ in range(2):
            deep = get(deep, size)["next"]
        targets[size] = {
            "first_page": f"{url}/api/v1/runs/",
            "page_3": deep,
            "status_failed": f"{url}/api/v1/runs/?status=failed",
        }
        for target in targets[size].values():
            for _ in range(warmup):
                get(target, size)
    samples: dict[tuple[int, str], list[tuple[float, float]]] = {}
    rows: dict[tuple[int, str], int] = {}
    for _ in range(rounds):
        for name in TARGETS:
            times: dict[int, list[float]] = {size: [] for size in servers}
            for _ in range(requests):
                for size in servers:
                    started = time.perf_counter()
                    body = get(targets[size][name], size)
                    times[size].append((time.perf_counter() - started) * 1000)
                    rows[size, name] = len(body["results"])
            for size, taken in times.items():
                taken.sort()
                p95 = taken[int(len(taken) * 0.95) - 1]
                samples.setdefault((size, name), []).append((statistics.median(taken), p95))
    figures: dict[int, dict[str, Any]] = {size: {} for size in servers}
    for (size, name), runs in samples.items():
        figures[size][name] = {
            "p50_ms": round(statistics.median(p50 for p50, _ in runs), 2),
            "p95_ms": round(statistics.median(p95 for _, p95 in runs), 2),
            "p95_rounds_ms": [round(p95, 1) for _, p95 in runs],
            "rows": rows[size, name],
        }
    return figures, targets


TARGETS = ("first_page", "page_3", "status_failed")


def database_time(caller: Any, targets: dict[str, str], repeat: int = 15) -> dict[str, Any]:
    """The page query of each target, as the API builds it (captured in-process), run under
    EXPLAIN ANALYZE: planning + execution time (median) and the runs_run rows its scans read.
    The server's share of a request, without the HTTP stack and the noise of a shared machine."""
    from urllib.parse import urlsplit

    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(caller)
    result = {}
    for name, target in targets.items():
        parts = urlsplit(target)
        with CaptureQueriesContext(connection) as queries:
            client.get(f"{parts.path}?{parts.query}" if parts.query else parts.path)
        sql = next(q["sql"] for q in queries.captured_queries if 'FROM "runs_run"' in q["sql"])
        times, read, seq = [], 0, False
        for _ in range(repeat):
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
                plan = cursor.fetchone()[0]
            plan = (json.loads(plan) if isinstance(plan, str) else plan)[0]
            times.append(plan["Planning Time"] + plan["Execution Time"])
            scans = [n for n in _nodes(plan["Plan"]) if n.get("Relation Name") == "runs_run"]
            read = sum(n["Actual Rows"] * n["Actual Loops"] for n in scans)
            seq = any(n["Node Type"] == "Seq Scan" for n in scans)
        result[name] = {
            "db_ms": round(statistics.median(times), 2),
            "runs_rows_read": read,
            "seq_scan": seq,
        }
    return result


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1000,1000000", help="run counts, ascending")
    parser.add_argument("--quick", action="store_true", help="sizes 1000,100000")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--projects", type=int, default=20)
    parser.add_argument("--member-of", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="keep the databases and their runs")
    args = parser.parse_args()
    sizes = [1000, 100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(sizes):
        sys.exit("--sizes must ascend (the ratios are largest / smallest)")

    urls = configure_environment(sizes, args.reuse)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sparkops.settings")
    os.environ.setdefault("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
    # HTTP goes through sparkops.egress, the project's only client: the server is local.
    os.environ["SPARKOPS_OUTBOUND_ALLOW"] = "127.0.0.1"
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from rest_framework_simplejwt.tokens import AccessToken

    from sparkops.testing.processes import WebProcess

    report: dict[str, Any] = {
        "server": "a gunicorn subprocess per size, 1 worker (gthread); sequential requests "
        "through sparkops.egress, the sizes taking turns",
        "projects": args.projects,
        "caller_sees": f"{args.member_of} member + 1 public of {args.projects} projects",
        "requests": f"{args.rounds} rounds of {args.requests} per target and size",
        "sizes": {},
    }
    callers = {}
    for size in sizes:
        use_database(urls[size])
        call_command("migrate", verbosity=0)
        owner, callers[size], rows = set_up(args.projects, args.member_of)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM runs_run")
            if cursor.fetchone()[0] > size:
                sys.exit(f"{DATABASE}_{size} holds more than {size} runs: drop --reuse")
            cursor.execute("SELECT (now() - interval '30 days')::text")
            t0 = cursor.fetchone()[0]
        seconds = grow_to(size, owner.pk, rows, t0)
        report["sizes"][str(size)] = {"insert_s": round(seconds, 1)}
    connection.close()
    broker = os.environ.get("REDIS_URL") or "memory://"
    servers = {
        size: WebProcess(
            broker,
            database_url=urls[size],
            extra_env={
                "THROTTLE_RATE_USER": "1000000/min",
                "SPARKOPS_VAR_DIR": tempfile.mkdtemp(),
                "DB_POOL": "1",
            },
        )
        for size in sizes
    }
    try:
        for web in servers.values():
            web.start()
        # Each database has a caller of its own (ids are uuids): a token for each server.
        signed = {
            size: (web.url, str(AccessToken.for_user(callers[size])))
            for size, web in servers.items()
        }
        figures, targets = measure(signed, args.requests, args.warmup, args.rounds)
    finally:
        for web in servers.values():
            web.stop()
    for size in sizes:
        use_database(urls[size])
        figures[size] = {
            name: {**figures[size][name], **db}
            for name, db in database_time(callers[size], targets[size]).items()
        }
        report["sizes"][str(size)].update(figures[size])
    first, last = report["sizes"][str(sizes[0])], report["sizes"][str(sizes[-1])]
    report["ratio_p95"] = {
        name: round(last[name]["p95_ms"] / first[name]["p95_ms"], 2) for name in TARGETS
    }
    report["ratio_p50"] = {
        name: round(last[name]["p50_ms"] / first[name]["p50_ms"], 2) for name in TARGETS
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
