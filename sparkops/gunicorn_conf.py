"""gunicorn settings for production: `gunicorn -c python:sparkops.gunicorn_conf sparkops.wsgi`.

Each gunicorn worker is a process of its own writing prometheus-client multiprocess files;
when one exits, its live-gauge files are dropped (its counters stay in the totals)."""

from __future__ import annotations

import os
from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    # The master never loads Django's settings: the directory must come from the environment
    # (docker-compose sets PROMETHEUS_MULTIPROC_DIR for web and worker).
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid, path)


def post_worker_init(worker: Any) -> None:
    # Event streams hold a thread each: the per-process cap leaves a quarter of the worker's
    # threads to ordinary requests (runs/streams.py). Async workers have no thread pool.
    kind = type(worker).__name__
    if kind in {"ThreadWorker", "SyncWorker"}:
        from runs import streams

        streams.set_server_threads(worker.cfg.threads if kind == "ThreadWorker" else 1)
