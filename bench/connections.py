"""Database connections under load, against a running stack (`make run` or compose).

Start the stack on PostgreSQL and Redis, with outbound calls to this machine allowed (the
agent's model is a fake OpenAI-compatible server this script starts on 127.0.0.1):

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/sparkops REDIS_URL=redis://127.0.0.1:6379/0 \
        SPARKOPS_OUTBOUND_ALLOW=127.0.0.1 make run
    .venv/bin/python bench/connections.py --url http://127.0.0.1:8000 \
        --database-url postgres://postgres@127.0.0.1:5432/sparkops --runs 300 --concurrency 16

It signs in as the demo user, creates an `openai_compatible` agent pointed at the fake model
(answering after --delay seconds) and a one-agent workflow in the demo project, then
--concurrency threads each create runs through the API (POST /api/v1/runs/, then GET
/api/v1/runs/) until --runs exist, and waits until every run finishes. Meanwhile it samples
pg_stat_activity for the database. Prints JSON: runs by status, HTTP status counts (5xx
among them; 0: no answer), peak connections to the database, wall time. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
# HTTP goes through sparkops.egress, the project's only client; the stack is on this machine.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "sparkops.settings")
os.environ.setdefault("SECRET_KEY", "bench-" + "x" * 50)
os.environ["SPARKOPS_OUTBOUND_ALLOW"] = "127.0.0.1,localhost"
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from sparkops import egress  # noqa: E402
from sparkops.testing.fake_llm import FakeLLMServer  # noqa: E402


class Client:
    """The stack's API at `base`, signed in once."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        self.headers: dict[str, str] = {}

    def call(self, method: str, path: str, **kwargs: Any) -> egress.EgressResponse:
        return egress.request(method, self.base + path, headers=self.headers, timeout=60, **kwargs)

    def ok(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.call(method, path, **kwargs)
        if response.status_code >= 300:
            raise SystemExit(f"{method} {path}: {response.status_code} {response.text()[:500]}")
        return response.json()


def sign_in(client: Client, email: str, password: str) -> None:
    tokens = client.ok("POST", "/api/v1/auth/login", json={"email": email, "password": password})
    client.headers["Authorization"] = f"Bearer {tokens['access']}"


def set_up(client: Client, project_slug: str, model_url: str) -> int:
    projects = client.ok("GET", "/api/v1/projects/", params={"page_size": 100})["results"]
    project = next(p for p in projects if p["slug"] == project_slug)
    tag = uuid.uuid4().hex[:8]
    client.ok(
        "POST",
        "/api/v1/agents/",
        json={
            "project": project["id"],
            "name": f"bench-{tag}",
            "slug": f"bench-{tag}",
            "provider": "openai_compatible",
            "model": "bench",
            "base_url": model_url,
        },
    )
    workflow = client.ok(
        "POST",
        "/api/v1/workflows/",
        json={
            "project": project["id"],
            "name": f"bench connections {tag}",
            "definition": {
                "nodes": [
                    {"id": "answer", "type": "agent", "agent": f"bench-{tag}", "prompt": "Hi"}
                ],
                "output": {"text": "{{ steps.answer.output.text }}"},
            },
        },
    )
    return int(workflow["id"])


class ConnectionWatcher(threading.Thread):
    """Samples how many backends are connected to the database (this one's own excluded)."""

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True)
        self.url = database_url.replace("postgres://", "postgresql://", 1)
        self.dbname = urlsplit(self.url).path.lstrip("/")
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            while not self.done.wait(0.05):
                (count,) = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = %s AND pid <> pg_backend_pid()",
                    [self.dbname],
                ).fetchone()
                self.peak = max(self.peak, count)

    def statuses(self, workflow_id: int) -> Counter[str]:
        with psycopg.connect(self.url) as conn:
            rows = conn.execute(
                "SELECT status, count(*) FROM runs_run WHERE workflow_id = %s GROUP BY status",
                [workflow_id],
            ).fetchall()
        return Counter(dict(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--database-url", required=True, help="the stack's PostgreSQL database")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--delay", type=float, default=0.5, help="the model's answer time (s)")
    parser.add_argument("--email", default="demo@sparkops.local")
    parser.add_argument("--password", default="sparkops-demo")
    parser.add_argument("--project", default="demo")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    model = FakeLLMServer().start()
    for _ in range(args.runs):
        model.enqueue("openai", {"content": "done", "delay": args.delay})
    watcher = ConnectionWatcher(args.database_url)
    codes: Counter[int] = Counter()
    lock = threading.Lock()
    client = Client(args.url)
    sign_in(client, args.email, args.password)
    workflow_id = set_up(client, args.project, model.openai_base_url)
    watcher.start()
    started = time.monotonic()

    def status_of(method: str, path: str, **kwargs: Any) -> int:
        try:
            return client.call(method, path, **kwargs).status_code
        except egress.EgressError:
            return 0  # no answer at all (connection refused or reset, timeout)

    def create(_: int) -> None:
        made = status_of("POST", "/api/v1/runs/", json={"workflow": workflow_id, "input": {}})
        listed = status_of("GET", "/api/v1/runs/", params={"workflow": workflow_id})
        with lock:
            codes[made] += 1
            codes[listed] += 1

    with ThreadPoolExecutor(args.concurrency) as creators:
        list(creators.map(create, range(args.runs)))
    created = time.monotonic() - started

    finished = ("succeeded", "failed", "cancelled", "timed_out")
    deadline = started + args.timeout
    while True:
        statuses = watcher.statuses(workflow_id)
        if sum(statuses[s] for s in finished) >= codes[201] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    wall = time.monotonic() - started
    watcher.done.set()
    watcher.join(timeout=5)
    model.stop()
    print(
        json.dumps(
            {
                "runs": args.runs,
                "concurrency": args.concurrency,
                "model_delay_s": args.delay,
                "runs_by_status": dict(statuses),
                "runs_succeeded": statuses["succeeded"],
                "http_status_counts": {str(k): v for k, v in sorted(codes.items())},
                "http_5xx": sum(v for k, v in codes.items() if k >= 500),
                "peak_db_connections": watcher.peak,
                "creation_wall_s": round(created, 2),
                "wall_s": round(wall, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
