"""The steps worker's processes (sparkops/worker.py): on gevent it runs STEPS_PROCESSES worker
processes under one parent. Real processes on a real Redis: both answer a ping, a SIGTERM stops
them all, a kill -9 of the parent takes them with it, and one dying stops the worker (so the
process manager restarts the whole)."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest

from sparkops.celery import app
from sparkops.testing.engine import wait_until
from sparkops.testing.processes import RedisServer, WorkerProcess, broker


@pytest.fixture
def steps_worker(db):
    server = RedisServer()
    server.start()
    worker = WorkerProcess(
        server.url, steps=True, extra_env={"WORKER_POOL": "gevent", "STEPS_PROCESSES": "2"}
    )
    try:
        with broker(server.url):
            worker.start()
            yield worker
    finally:
        worker.kill()
        server.close()


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def answering(worker: WorkerProcess) -> set[str]:
    """The worker's node names that answer a ping."""
    replies = app.control.ping(timeout=1.0)
    return {name for reply in replies for name in reply if name.startswith(worker_prefix(worker))}


def worker_prefix(worker: WorkerProcess) -> str:
    assert worker.proc is not None
    argv = worker.proc.args
    return str(argv[argv.index("-n") + 1]).split("@")[0]


def started(worker: WorkerProcess) -> list[int]:
    assert worker.proc is not None
    prefix = worker_prefix(worker)
    host = socket.gethostname()
    wait_until(
        lambda: answering(worker) == {f"{prefix}@{host}", f"{prefix}-2@{host}"},
        timeout=90,
        interval=0.2,
        what="both steps processes to answer a ping",
    )
    pids = children(worker.proc.pid)
    assert len(pids) == 2, pids
    return pids


def test_both_processes_answer_and_a_sigterm_stops_them_all(steps_worker):
    pids = started(steps_worker)
    assert steps_worker.proc is not None
    steps_worker.proc.send_signal(signal.SIGTERM)  # warm shutdown, passed on to each
    assert steps_worker.proc.wait(timeout=60) == 0
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=30, what="the processes")


def test_a_kill_9_of_the_worker_takes_its_processes_with_it(steps_worker):
    pids = started(steps_worker)
    steps_worker.kill()
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=30, what="the processes")


def test_one_process_dying_stops_the_worker(steps_worker):
    first, second = started(steps_worker)
    assert steps_worker.proc is not None
    os.kill(second, signal.SIGKILL)
    assert steps_worker.proc.wait(timeout=60) == 128 + signal.SIGKILL
    wait_until(lambda: not alive(first), timeout=30, what="the other process to stop")
