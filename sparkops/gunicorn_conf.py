"""gunicorn settings for every web process (`make run`, the Dockerfile, docker-compose):
`gunicorn -c python:sparkops.gunicorn_conf sparkops.wsgi -b ADDRESS -w N --threads T`.

Each gunicorn worker is a process of its own writing prometheus-client multiprocess files;
when one exits, its live-gauge files are dropped (its counters stay in the totals)."""

from __future__ import annotations

import os
from typing import Any

# Threads: a held event stream takes one, and a thread takes a database connection only while
# it handles a request (from the process's pool, DB_POOL_MAX_SIZE), so threads may outnumber it.
worker_class = "gthread"
threads = 32

# An idle keep-alive connection is closed after this many seconds. It must outlast the idle
# timeout of whatever reuses connections in front (nginx upstream keepalive and AWS ALB: 60 s,
# most HTTP client pools less): if gunicorn closed first (its default is 2 s), a request sent on
# a connection the server is closing at that moment gets a connection reset.
keepalive = 75
# SIGTERM (deploy, `docker compose stop`, Ctrl-C): requests in flight get this long to finish.
graceful_timeout = 30
# A worker silent this long is restarted (gthread workers notify between requests).
timeout = 120


def child_exit(server: Any, worker: Any) -> None:
    # The master never loads Django's settings: the directory must come from the environment
    # (docker-compose sets PROMETHEUS_MULTIPROC_DIR for web and worker).
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        # Only with multiprocess metrics on; the master imports nothing it does not need.
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)


def post_worker_init(worker: Any) -> None:
    # Event streams hold a thread each: the per-process cap leaves a quarter of the worker's
    # threads to ordinary requests (runs/streams.py). Async workers have no thread pool.
    kind = type(worker).__name__
    if kind in {"ThreadWorker", "SyncWorker"}:
        # gunicorn reads this file before Django is set up; the worker has loaded it by now.
        from runs import streams

        streams.set_server_threads(worker.cfg.threads if kind == "ThreadWorker" else 1)
