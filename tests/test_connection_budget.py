"""The PostgreSQL connection budget of `make run` (Procfile) and docker-compose, as README,
"Database connections", adds it up: every process's pool cap, from the commands themselves
(the steps worker's from sparkops/worker.py, which picks its pool and sizes)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml
from django.conf import settings

ROOT = Path(settings.BASE_DIR)
DEFAULT_POOL = 10  # DB_POOL_MAX_SIZE's default (tests/test_db_connections.py checks it)


def option(argv: list[str], *names: str) -> str:
    for i, arg in enumerate(argv):
        if arg in names:
            return argv[i + 1]
    raise AssertionError(f"none of {names} in {argv}")


def procfile_process(name: str, tmp: Path) -> tuple[dict[str, str], list[str]]:
    """The environment a Procfile line gives its program and the program's arguments, run
    through a shell as honcho runs it (none of the variables it reads set: `make run`'s
    defaults), with a stand-in that reports them for the program."""
    line = dict(
        entry.split(": ", 1) for entry in (ROOT / "Procfile").read_text().splitlines() if entry
    )[name]
    report = tmp / "report.py"
    report.write_text(
        "import json, os, sys\n"
        "print(json.dumps([os.environ.get('DB_POOL_MAX_SIZE'), sys.argv[1:]]))\n"
    )
    read = {"WORKER_CONCURRENCY", "WEB_PORT", "WEB_CONCURRENCY", "DB_POOL_MAX_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in read}
    out = subprocess.run(
        ["sh", "-c", re.sub(r"\.venv/bin/\w+", f"{sys.executable} {report}", line, count=1)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    pool, argv = json.loads(out)
    return ({"DB_POOL_MAX_SIZE": pool} if pool else {}), argv


def pool_of(env: dict[str, str]) -> int:
    return int(env.get("DB_POOL_MAX_SIZE") or DEFAULT_POOL)


def steps_worker(environment: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """What `python -m sparkops.worker` runs with this environment (PostgreSQL + Redis), its
    pool the sum over its processes."""
    from sparkops.worker import command, processes

    environment = {
        "DATABASE_URL": "postgres://u@db/x",
        "REDIS_URL": "redis://redis:6379/0",
        **environment,
    }
    argv, env = command(environment)
    total = processes(environment) * pool_of(env)
    return {**env, "DB_POOL_MAX_SIZE": str(total)}, argv


def test_make_run_needs_48_connections_at_most(tmp_path):
    web_env, web = procfile_process("web", tmp_path)
    worker_env, worker = procfile_process("worker", tmp_path)
    beat_env, _ = procfile_process("beat", tmp_path)
    concurrency = int(option(worker, "-c", "--concurrency"))
    assert (option(worker, "-P", "--pool"), option(worker, "-Q")) == ("threads", "orchestration")
    assert pool_of(worker_env) == concurrency + 2  # the heartbeat thread and a spare
    procfile = dict(line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines())
    assert procfile["steps"].startswith(".venv/bin/python -m sparkops.worker ")
    steps_env, steps = steps_worker({})
    assert (option(steps, "-P"), option(steps, "-Q"), option(steps, "-c")) == (
        "gevent",
        "steps",
        "1000",
    )
    budget = int(option(web, "-w", "--workers")) * pool_of(web_env)
    budget += pool_of(worker_env) + pool_of(steps_env) + pool_of(beat_env)
    assert (budget, pool_of(steps_env), pool_of(beat_env)) == (48, 16, 2)


def test_compose_needs_58_connections_at_most():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]

    def env(name: str) -> dict[str, str]:
        return services[name].get("environment") or {}

    web = shlex.split(services["web"]["command"])
    worker = shlex.split(services["worker"]["command"])
    assert option(worker, "-P", "--pool") == "threads"
    assert pool_of(env("worker")) == int(option(worker, "-c", "--concurrency")) + 2
    assert shlex.split(services["steps"]["command"])[:3] == ["python", "-m", "sparkops.worker"]
    steps_env, steps = steps_worker(env("steps"))
    assert option(steps, "-P") == "gevent"
    budget = int(option(web, "-w", "--workers")) * pool_of(env("web"))
    budget += pool_of(env("worker")) + pool_of(steps_env) + pool_of(env("beat"))
    assert budget == 58


def test_the_steps_worker_runs_gevent_only_on_postgresql_and_redis():
    """gevent where it is tested and measured; threads on the embedded default (SQLite locks
    the whole file, and its calls would stall every greenlet), and wherever one is missing."""
    from sparkops.worker import command

    postgres, redis = "postgres://u@db/x", "redis://redis:6379/0"
    cases = [
        ({}, ("threads", "8", "10")),
        ({"DATABASE_URL": "sqlite:////tmp/x.sqlite3", "REDIS_URL": redis}, ("threads", "8", "10")),
        ({"DATABASE_URL": postgres}, ("threads", "8", "10")),  # the filesystem broker
        ({"DATABASE_URL": postgres, "CELERY_BROKER_URL": redis}, ("gevent", "1000", "8")),
        (  # the 16 connections are shared out, at least 4 a process
            {"DATABASE_URL": postgres, "REDIS_URL": redis, "STEPS_PROCESSES": "1"},
            ("gevent", "1000", "16"),
        ),
        (
            {"DATABASE_URL": postgres, "REDIS_URL": redis, "STEPS_PROCESSES": "8"},
            ("gevent", "1000", "4"),
        ),
        (
            {"DATABASE_URL": postgres, "REDIS_URL": redis, "WORKER_POOL": "threads"},
            ("threads", "8", "10"),
        ),
        ({"WORKER_CONCURRENCY": "4"}, ("threads", "4", "6")),
        (
            {
                "DATABASE_URL": postgres,
                "REDIS_URL": redis,
                "STEPS_CONCURRENCY": "300",
                "DB_POOL_MAX_SIZE": "8",
            },
            ("gevent", "300", "8"),
        ),
    ]
    for environment, expected in cases:
        argv, env = command(environment)
        assert (option(argv, "-P"), option(argv, "-c"), env["DB_POOL_MAX_SIZE"]) == expected
        assert option(argv, "-Q") == "steps"
    _, env = command({"DATABASE_URL": postgres, "REDIS_URL": redis})
    assert env["DB_POOL_TIMEOUT"] == "60"


def test_the_steps_worker_runs_two_gevent_processes_by_default():
    from sparkops.worker import node_options, processes

    postgres, redis = "postgres://u@db/x", "redis://redis:6379/0"
    assert processes({"DATABASE_URL": postgres, "REDIS_URL": redis}) == 2
    assert processes({"DATABASE_URL": postgres, "REDIS_URL": redis, "STEPS_PROCESSES": "3"}) == 3
    assert processes({}) == 1  # threads: one process
    assert processes({"DATABASE_URL": postgres, "REDIS_URL": redis, "WORKER_POOL": "threads"}) == 1
    given = ["-n", "steps@%h", "-l", "INFO"]
    assert node_options(given, 0) == given
    assert node_options(given, 1) == ["-n", "steps-2@%h", "-l", "INFO"]
    assert node_options(["--hostname=s@box"], 2) == ["--hostname=s-3@box"]
    assert node_options(["-l", "INFO"], 1) == ["-l", "INFO", "-n", "steps-2@%h"]
