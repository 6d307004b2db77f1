"""The worker of the `steps` queue (model and HTTP calls), with the pool that suits them:

    .venv/bin/python -m sparkops.worker [more celery worker options, e.g. -l INFO -n steps@%h]

Steps spend their life waiting on the network. On PostgreSQL with a Redis broker the worker
runs Celery's gevent pool: every waiting call is a greenlet, not a thread, and holds no
database connection (sparkops.db.release_connection), so a thousand calls are in flight in
one process on a pool of `DB_POOL_MAX_SIZE` (16) connections. psycopg (>= 3.1.14) waits
cooperatively once gevent has patched the standard library, which `celery -P gevent` does
before anything else is imported; the Redis transport's connection pool blocks instead of
refusing (sparkops/broker.py).

Elsewhere it runs the threads pool, as before: SQLite locks the whole file and its calls block
the process, so greenlets would queue behind one writer (and a writer waiting for the lock
would stall every other greenlet for up to DB_SQLITE_TIMEOUT); the filesystem broker is not
tried under gevent. There a threads pool of WORKER_CONCURRENCY (8) threads and a database pool
of concurrency + 2 (the heartbeat thread, a spare), the numbers README's budget adds up.

A gevent process runs on one core, and a busy worker's greenlets spend their CPU in the
engine (start, policies, usage, finish: tens of ms a model call), so on gevent it starts
STEPS_PROCESSES (2) worker processes, each with its share of the database pool (16 in all, at
least 4 each) and concurrency STEPS_CONCURRENCY, and stays their parent: a signal it gets goes
to every process, and when one exits the others are stopped and it exits with the first's
status (the process manager restarts the whole). The first keeps the node name given (`-n`),
the others add `-2`, `-3`... before the `@`. With one process (threads, or STEPS_PROCESSES=1)
it execs `celery`, so signals reach the worker itself.

WORKER_POOL=threads|gevent overrides the choice; STEPS_CONCURRENCY, DB_POOL_MAX_SIZE (per
process) and DB_POOL_TIMEOUT override the sizes."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import environ

from sparkops.pools import pool_for

BASE_DIR = Path(__file__).resolve().parent.parent

GEVENT_CONCURRENCY = 1000
GEVENT_PROCESSES = 2
GEVENT_DB_POOL = 16  # in all, shared out between the processes
GEVENT_DB_POOL_MIN = 4  # each process's at least
# A greenlet may queue for a connection behind hundreds of others when their calls all
# return at once: wait longer than a thread would (a timeout still retries the task).
GEVENT_DB_POOL_TIMEOUT = 60
THREADS_CONCURRENCY = 8


def processes(environ_: Mapping[str, str]) -> int:
    """How many worker processes: STEPS_PROCESSES (default 2) on gevent, one on threads."""
    if pool_for(environ_) != "gevent":
        return 1
    count = int(environ_.get("STEPS_PROCESSES") or GEVENT_PROCESSES)
    if count < 1:
        raise SystemExit(f"STEPS_PROCESSES must be at least 1, not {count}")
    return count


def command(environ_: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """The `celery worker` arguments and the environment of each steps worker process."""
    env = dict(environ_)
    pool = pool_for(env)
    if pool == "gevent":
        concurrency = int(env.get("STEPS_CONCURRENCY") or GEVENT_CONCURRENCY)
        share = max(GEVENT_DB_POOL // processes(env), GEVENT_DB_POOL_MIN)
        env.setdefault("DB_POOL_MAX_SIZE", str(share))
        env.setdefault("DB_POOL_TIMEOUT", str(GEVENT_DB_POOL_TIMEOUT))
    else:
        concurrency = int(
            env.get("STEPS_CONCURRENCY") or env.get("WORKER_CONCURRENCY") or THREADS_CONCURRENCY
        )
        env.setdefault("DB_POOL_MAX_SIZE", str(concurrency + 2))
    argv = ["-A", "sparkops", "worker", "-Q", "steps", "-P", pool, "-c", str(concurrency)]
    return argv, env


def node_options(extra: Sequence[str], index: int) -> list[str]:
    """`extra` (the caller's celery options) for process `index`: the first keeps its node
    name, the others add `-<index + 1>` before the `@` (one is made when none is given)."""
    options = list(extra)
    if index == 0:
        return options
    suffix = f"-{index + 1}"
    for i, arg in enumerate(options):
        for flag in ("-n", "--hostname"):
            if arg == flag and i + 1 < len(options):
                options[i + 1] = _renamed(options[i + 1], suffix)
                return options
            if arg.startswith(flag + "="):
                options[i] = flag + "=" + _renamed(arg[len(flag) + 1 :], suffix)
                return options
    return [*options, "-n", f"steps{suffix}@%h"]


def _renamed(node: str, suffix: str) -> str:
    name, at, host = node.partition("@")
    return f"{name}{suffix}{at}{host}"


def supervise(commands: Sequence[Sequence[str]], env: Mapping[str, str]) -> int:
    """Run the processes; pass SIGTERM, SIGINT and SIGQUIT on to all of them; when one exits,
    stop the others. Returns the exit status of the first that exited."""
    # Their own process group: a terminal's Ctrl-C reaches this parent only, which passes it
    # on once (twice would be Celery's cold shutdown). Each dies with this parent, so a kill -9
    # of the worker is a kill -9 of all of it, as with one process.
    children = [
        subprocess.Popen(list(argv), env=dict(env), process_group=0, preexec_fn=_die_with_parent)  # noqa: S603
        for argv in commands
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, forward)
    first: int | None = None
    while first is None:
        try:
            pid, status = os.wait()
        except ChildProcessError:  # pragma: no cover (all reaped elsewhere)
            break
        for child in children:
            if child.pid == pid:
                child.returncode = os.waitstatus_to_exitcode(status)
                first = child.returncode
    for child in children:
        if child.poll() is None:
            child.terminate()
    for child in children:
        child.wait()
    if first is None:  # pragma: no cover
        return 0
    return first if first >= 0 else 128 - first  # killed by a signal: as a shell reports it


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (Linux; elsewhere nothing)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover
        pass


_PR_SET_PDEATHSIG = 1


def main() -> None:
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)  # as settings.py reads it
    argv, env = command(os.environ)
    celery = str(Path(sys.executable).parent / "celery")
    count = processes(os.environ)
    if count == 1:
        os.execve(celery, [celery, *argv, *sys.argv[1:]], env)  # noqa: S606 (no shell wanted)
    commands = [[celery, *argv, *node_options(sys.argv[1:], i)] for i in range(count)]
    sys.exit(supervise(commands, env))


if __name__ == "__main__":
    main()
