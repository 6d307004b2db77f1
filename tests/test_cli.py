"""The `sparkops` command-line client, run as a subprocess against a live server: gunicorn and a
Celery worker in their own processes on a redis-server of the module's own, over the test
database with the demo seeded. The server ends event streams after 1.5 s, so every follow of a
run that waits resumes with Last-Event-ID, as a client must after SPARKOPS_STREAM_MAX_SECONDS."""

from __future__ import annotations

import io
import json
import os
import pty
import stat
import subprocess
import sys
import threading
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command

from accounts.services import api_key_create
from policies.tests.factories import sim_priced
from projects.models import Project
from runs.models import Run
from runs.tests.factories import make_workflow, transform
from sparkops.testing.engine import wait_for_run, wait_until
from sparkops.testing.processes import RedisServer, WebProcess, WorkerProcess, free_port
from workflows.models import Workflow

pytestmark = pytest.mark.django_db(transaction=True)

DEMO_EMAIL, DEMO_PASSWORD = "demo@sparkops.local", "sparkops-demo"


@pytest.fixture(scope="module")
def server(django_db_setup: Any, django_db_blocker: Any) -> Iterator[WebProcess]:
    redis = RedisServer()
    redis.start()
    web = WebProcess(
        redis.url,
        threads=8,
        extra_env={
            "REDIS_URL": redis.url,
            "SPARKOPS_STREAM_MAX_SECONDS": "1.5",
            "SPARKOPS_STREAM_POLL_SECONDS": "0.05",
            "SPARKOPS_STREAM_KEEPALIVE_SECONDS": "0.5",
        },
    )
    worker = WorkerProcess(redis.url, concurrency=4)
    try:
        with django_db_blocker.unblock():
            web.start()
            worker.start()
        yield web
    finally:
        web.stop()
        worker.stop()
        redis.close()


@pytest.fixture
def demo(server: WebProcess, settings: Any) -> Any:
    """The demo user, project and workflows, as `make run` seeds them. The password is hashed
    with a hasher the server knows (tests elsewhere use a fast one the server does not)."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    call_command("seed_demo", stdout=io.StringIO())
    sim_priced()  # the migration's price rows, flushed by the tests before
    return Workflow.objects.get(slug="research-and-summarize").created_by


class CLI:
    """Runs `python -m sparkops_cli` (what the `sparkops` script runs) with its own config dir."""

    def __init__(self, server: WebProcess, home: Path) -> None:
        self.server = server
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SPARKOPS_")}
        self.env.update({"SPARKOPS_URL": server.url, "XDG_CONFIG_HOME": str(home)})
        self.config = home / "sparkops" / "config.json"

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "sparkops_cli", *args]

    def __call__(
        self, *args: str, stdin: str = "", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args),
            input=stdin,
            capture_output=True,
            text=True,
            cwd=django_settings.BASE_DIR,
            env={**self.env, **(env or {})},
            timeout=120,
        )

    def ok(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        done = self(*args, **kwargs)
        assert done.returncode == 0, (done.stdout, done.stderr, self.server.output())
        return done

    def login(self) -> None:
        self.ok("login", "--email", DEMO_EMAIL, stdin=DEMO_PASSWORD + "\n")


@pytest.fixture
def cli(server: WebProcess, tmp_path: Path) -> CLI:
    return CLI(server, tmp_path / "config-home")


def gated_workflow(demo: Any) -> Workflow:
    return make_workflow(
        _demo_project(),
        demo,
        [
            {"id": "review", "type": "approval", "message": "Ship it?"},
            transform("publish", "shipped", "review"),
        ],
        name="Gated",
        slug="gated",
    )


def _demo_project() -> Any:

    return Project.objects.get(slug="demo")


def on_a_terminal(cli: CLI, *args: str) -> str:
    """Runs the CLI with stderr on a pseudo-terminal; returns what it wrote there."""
    main, child = pty.openpty()
    with subprocess.Popen(
        cli.command(*args),
        cwd=django_settings.BASE_DIR,
        env=cli.env,
        stdout=subprocess.DEVNULL,
        stderr=child,
    ) as proc:
        os.close(child)
        chunks = []
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.wait(timeout=60) == 0
    os.close(main)
    return b"".join(chunks).decode()


class Follower:
    """`sparkops follow RUN --events` in the background, its stderr collected line by line."""

    def __init__(self, cli: CLI, run_id: str) -> None:
        self.proc = subprocess.Popen(
            cli.command("follow", run_id, "--events"),
            cwd=django_settings.BASE_DIR,
            env=cli.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.stdout: list[str] = []
        # One reader a pipe, for the process's whole life: `communicate()` would read stderr
        # too, racing this reader for its lines.
        self.readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout), daemon=True),
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(pipe: Any, into: list[str]) -> None:
        for line in pipe:
            into.append(line.rstrip("\n"))

    def saw(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def finish(self) -> tuple[int, str]:
        self.proc.wait(timeout=60)
        for reader in self.readers:
            reader.join(timeout=10)
        return self.proc.returncode, "\n".join(self.stdout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


# --- login, lists, a followed run -----------------------------------------------------------------


def test_login_keeps_a_private_config_and_refreshes_an_expired_access_token(cli, demo):
    wrong = cli("login", "--email", DEMO_EMAIL, "--password", "not-the-password")
    assert wrong.returncode == 3
    assert "401" in wrong.stderr and "error:" in wrong.stderr

    cli.login()
    assert stat.S_IMODE(cli.config.stat().st_mode) == 0o600
    assert stat.S_IMODE(cli.config.parent.stat().st_mode) == 0o700
    saved = json.loads(cli.config.read_text())
    assert saved["url"] == cli.server.url and saved["refresh"] and saved["access"]

    # An access token the server refuses: the stored refresh token gets a new pair.
    cli.config.write_text(json.dumps({**saved, "access": "expired"}))
    projects = cli.ok("projects")
    assert "demo" in projects.stdout
    renewed = json.loads(cli.config.read_text())
    assert renewed["access"] not in {"expired", saved["access"]}
    assert renewed["refresh"] != saved["refresh"]  # it rotates

    # The server comes from the login when neither --url nor $SPARKOPS_URL says.
    cli.env.pop("SPARKOPS_URL")
    assert "demo" in cli.ok("projects").stdout

    cli.ok("logout")
    after = cli("projects")
    assert after.returncode == 3
    assert "Authentication credentials were not provided." in after.stderr

    elsewhere = cli.config.parent / "elsewhere.json"
    moved = {"SPARKOPS_CONFIG": str(elsewhere), "SPARKOPS_PASSWORD": DEMO_PASSWORD}
    cli.ok("--url", cli.server.url, "login", "--email", DEMO_EMAIL, env=moved)
    assert json.loads(elsewhere.read_text())["email"] == DEMO_EMAIL
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o600


def test_lists_projects_and_workflows(cli, demo):
    cli.login()
    projects = cli.ok("projects")
    header, *rows = projects.stdout.splitlines()
    assert header.split() == ["ID", "SLUG", "NAME", "ROLE"]
    assert any(" demo " in row and row.rstrip().endswith("owner") for row in rows)

    project = str(_demo_project().pk)
    assert "paid-answer" in cli.ok("workflows", "--project", project).stdout
    assert "paid-answer" not in cli.ok("workflows", "--project", str(uuid.uuid4())).stdout
    workflows = cli.ok("workflows", "--search", "research")
    assert "research-and-summarize" in workflows.stdout
    assert "paid-answer" not in workflows.stdout
    listed = json.loads(cli.ok("--json", "workflows").stdout)
    assert {"research-and-summarize", "paid-answer"} <= {w["slug"] for w in listed}


def test_run_follow_shows_progress_and_prints_the_output(cli, demo):
    cli.login()
    done = cli.ok("run", "research-and-summarize", "--input", '{"topic": "bees"}', "--follow")
    assert json.loads(done.stdout)["summary"]["topic"] == "bees"
    progress = done.stderr.splitlines()
    assert progress[0].startswith("run ") and progress[0].endswith(" started")
    assert any("0/3 steps" in line for line in progress), done.stderr
    assert any("current: " in line and "current: -" not in line for line in progress)
    assert any(line.startswith("succeeded") and "3/3 steps" in line for line in progress)
    assert progress[-1].endswith("succeeded (cost $0)")

    # The priced model's cost shows while following, and matches the run's.
    paid = cli.ok("run", "paid-answer", "-f")
    run = Run.objects.get(workflow__slug="paid-answer")
    cost = format(run.cost.normalize(), "f")
    assert f"cost ${cost}" in paid.stderr.splitlines()[-2]
    assert paid.stderr.splitlines()[-1].endswith(f"succeeded (cost ${cost})")
    assert run.cost > 0

    # On a terminal the progress is one line, rewritten in place.
    assert "\r\x1b[K" not in paid.stderr
    assert "\r\x1b[K" in on_a_terminal(cli, "follow", str(run.pk))


def test_an_api_key_and_input_from_stdin_or_a_file(cli, demo, tmp_path):
    _, key = api_key_create(user=demo, name="cli")
    workflow = Workflow.objects.get(slug="research-and-summarize")

    piped = cli.ok(
        "run", "research-and-summarize", "-i", "-", "-f",
        stdin='{"topic": "ants"}', env={"SPARKOPS_API_KEY": key},
    )  # fmt: skip
    assert json.loads(piped.stdout)["summary"]["topic"] == "ants"

    path = tmp_path / "input.json"
    path.write_text('{"topic": "wasps"}')
    filed = cli.ok("--api-key", key, "run", str(workflow.pk), "--input", f"@{path}", "--follow")
    assert json.loads(filed.stdout)["summary"]["topic"] == "wasps"
    assert not cli.config.exists()  # an API key needs no login

    # Same Idempotency-Key and input: the same run.
    first = cli.ok("--api-key", key, "run", "paid-answer", "--idempotency-key", "k-1")
    again = cli.ok("--api-key", key, "run", "paid-answer", "--idempotency-key", "k-1")
    assert first.stdout == again.stdout
    assert Run.objects.filter(workflow__slug="paid-answer").count() == 1


# --- approvals, cancel, retry --------------------------------------------------------------------


def test_follow_resumes_across_streams_and_ends_when_the_approval_is_given(cli, demo):
    gated_workflow(demo)
    cli.login()
    run_id = cli.ok("run", "gated").stdout.strip()
    follower = Follower(cli, run_id)
    try:
        wait_until(
            lambda: follower.saw("waiting for approval: step review Ship it?"),
            timeout=60,
            what="the approval notice",
        )
        # The server ends each stream after 1.5 s; the client comes back with Last-Event-ID.
        wait_until(lambda: follower.saw("(stream resumed after #"), timeout=30, what="a resume")
        assert "review: approved" in cli.ok("approve", run_id, "review", "-m", "go").stdout
        code, stdout = follower.finish()
    finally:
        follower.kill()
    assert code == 0, follower.lines
    json.loads(stdout)  # the run's output
    seqs = [int(line.split()[0][1:]) for line in follower.lines if line.startswith("#")]
    assert seqs == list(range(1, len(seqs) + 1))  # every event once, in order
    assert follower.saw("step review approved")
    assert any(line.startswith("succeeded") and "2/2 steps" in line for line in follower.lines)
    assert Run.objects.get(pk=run_id).status == "succeeded"

    # Deciding again is the API's 409, its detail printed, exit code 3.
    again = cli("approve", run_id, "review")
    assert again.returncode == 3
    assert again.stderr.startswith("error: 409 conflict: ")


def test_reject_fails_the_run_and_follow_exits_1(cli, demo):
    gated_workflow(demo)
    cli.login()
    run_id = cli.ok("run", "gated").stdout.strip()
    wait_for_run(run_id, ("waiting_approval",))
    assert "review: rejected" in cli.ok("reject", run_id, "review", "-m", "not yet").stdout
    followed = cli("follow", run_id)
    assert followed.returncode == 1
    assert f"run {run_id} failed" in followed.stderr
    assert "rejected" in followed.stderr.splitlines()[-1]


def test_cancel_then_retry(cli, demo):
    gated_workflow(demo)
    cli.login()
    run_id = cli.ok("run", "gated").stdout.strip()
    wait_for_run(run_id, ("waiting_approval",))
    assert cli.ok("cancel", run_id).stdout.strip() == f"run {run_id}: cancelled"
    twice = cli("cancel", run_id)
    assert twice.returncode == 3 and twice.stderr.startswith("error: 409 conflict: ")
    assert cli("follow", run_id).returncode == 1

    retried = cli.ok("retry", run_id).stdout.strip()
    assert retried != run_id
    assert str(Run.objects.get(pk=retried).parent_run_id) == run_id
    wait_for_run(retried, ("waiting_approval",))
    cli.ok("approve", retried, "review")
    assert "succeeded" in cli.ok("follow", retried).stderr
    shown = cli.ok("show", retried).stdout
    assert shown.startswith(f"run {retried}: succeeded  Gated v1")


def test_a_failing_run_exits_1_with_its_error(cli, demo):
    make_workflow(
        _demo_project(), demo, [transform("a", "{{ input.missing.deeper }}")], slug="broken"
    )
    cli.login()
    failed = cli("run", "broken", "--follow")
    assert failed.returncode == 1
    assert "template_error" in failed.stderr
    assert any(
        line.startswith("failed") and "1/1 steps" in line for line in failed.stderr.split("\n")
    )
    run_id = failed.stderr.splitlines()[0].split()[1]
    again = cli("retry", run_id, "--from-failure", "--follow")
    assert again.returncode == 1 and "template_error" in again.stderr
    assert Run.objects.filter(parent_run_id=run_id, status="failed").count() == 1


# --- errors ---------------------------------------------------------------------------------------


def test_api_errors_exit_3_with_the_detail_and_bad_usage_2(cli, demo):
    _, key = api_key_create(user=demo, name="cli")
    as_key = {"SPARKOPS_API_KEY": key}

    missing = cli("show", str(uuid.uuid4()), env=as_key)
    assert (missing.returncode, missing.stderr) == (3, "error: 404 not_found: Not found.\n")
    assert cli("run", "999999", env=as_key).returncode == 3
    unknown = cli("run", "no-such-workflow", env=as_key)
    assert unknown.returncode == 3 and "no-such-workflow" in unknown.stderr
    bad_key = cli("projects", env={"SPARKOPS_API_KEY": "spk_nope"})
    assert bad_key.returncode == 3 and bad_key.stderr.startswith("error: 401 ")

    not_json = cli("run", "paid-answer", "--input", "[1]", env=as_key)
    assert (not_json.returncode, not_json.stderr) == (2, "error: the input must be a JSON object\n")
    assert cli("run", "paid-answer", "--input", "{", env=as_key).returncode == 2
    assert cli("no-such-command").returncode == 2

    nowhere = cli("--url", f"http://127.0.0.1:{free_port()}", "projects", env=as_key)
    assert nowhere.returncode == 4 and "cannot reach" in nowhere.stderr
    assert not Run.objects.exists()


# --- packaging ------------------------------------------------------------------------------------


def test_the_cli_is_a_console_script_that_loads_no_server_code():
    pyproject = tomllib.loads((Path(django_settings.BASE_DIR) / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"] == {"sparkops": "sparkops_cli.main:main"}
    makefile = (Path(django_settings.BASE_DIR) / "Makefile").read_text()
    assert "install -q --no-deps -e ." in makefile
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, sparkops_cli.main; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        cwd=django_settings.BASE_DIR,
        check=True,
    )
    loaded = {name.split(".")[0] for name in json.loads(probe.stdout.replace("'", '"'))}
    assert not loaded & {"django", "rest_framework", "celery", "sparkops", "runs"}


# --- live model output in the stream -------------------------------------------------------------


def test_follow_passes_over_live_model_output_and_resumes_by_the_last_stored_event():
    """A streaming agent step sends `llm.delta` frames between the stored events: no `id`, not
    replayed. `follow` once crashed on them (KeyError 'type') and would have resumed after
    `None`. A real HTTP server plays the stream: first connection ends after a delta without
    `end`, the second must ask for Last-Event-ID 2, the id of the last stored event."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from sparkops_cli.client import Client

    run = "7d1f7a8e-0000-4000-8000-000000000001"

    def frame(seq: int, kind: str, **payload: Any) -> str:
        event = {"seq": seq, "type": kind, "node_id": "answer", "payload": payload}
        return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(event)}\n\n"

    delta = 'event: llm.delta\ndata: {"node_id": "answer", "index": 0, "text": "Hel"}\n\n'
    streams = [
        "retry: 10\n\n" + frame(1, "run.status", status="running") + frame(2, "step.status")
        + delta,
        delta + frame(3, "run.status", status="succeeded") + "event: end\ndata: {}\n\n",
    ]  # fmt: skip
    asked: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            assert self.path == f"/api/v1/runs/{run}/stream"
            asked.append(self.headers.get("Last-Event-ID"))
            body = streams[len(asked) - 1].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    client = Client(url=f"http://127.0.0.1:{http.server_address[1]}", api_key="k")
    try:
        events = list(client.events(run))
    finally:
        client.close()
        http.shutdown()
        http.server_close()
    assert [event["seq"] for event in events] == [1, 2, 3]
    assert all(event["type"] != "llm.delta" for event in events)
    assert asked == ["0", "2"]
