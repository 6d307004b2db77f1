"""gunicorn as every documented web command starts it (Procfile, Dockerfile, docker-compose):
keep-alive longer than the idle timeout of a proxy or client pool in front, so the server never
closes a connection a client is about to reuse (a reset under load), and graceful stops."""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.conf import settings

from sparkops.testing.processes import WebProcess

ROOT = Path(settings.BASE_DIR)


def web_commands() -> dict[str, list[str]]:
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    procfile = dict(
        line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line
    )
    return {
        "Dockerfile": cmd,
        "docker-compose": shlex.split(compose["services"]["web"]["command"]),
        # honcho's shell fills in ${NAME:-default}; the defaults are what `make run` starts.
        "Procfile": shlex.split(re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", procfile["web"])),
    }


def loaded_config(argv: list[str]) -> dict[str, str]:
    """What gunicorn resolves from these arguments (`--print-config`)."""
    args = argv[1:]
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    env = {**os.environ, "SECRET_KEY": "x"}
    out = subprocess.run(
        [gunicorn, "--print-config", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    pairs = (line.partition("=") for line in out.splitlines())
    return {name.strip(): value.strip() for name, _, value in pairs}


@pytest.mark.parametrize("where", ["Dockerfile", "docker-compose", "Procfile"])
def test_every_web_command_loads_the_keepalive_and_graceful_timeouts(where):
    argv = web_commands()[where]
    assert Path(argv[0]).name == "gunicorn"
    config = loaded_config(argv)
    assert config["keepalive"] == "75"
    assert config["graceful_timeout"] == "30"
    assert config["worker_class"] == "gthread"
    assert int(config["threads"]) > 1


def test_compose_gives_a_stopping_web_container_its_graceful_timeout():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert compose["services"]["web"]["stop_grace_period"] == "40s"  # > graceful_timeout 30


def request(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /api/v1/no-such-route HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: *(\d+)", head, re.I).group(1))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection mid-response"
        body += chunk
    return head


def test_an_idle_connection_stays_open_past_gunicorns_default_keepalive(tmp_path):
    """gunicorn's own default closes an idle connection after 2 s: a client (or proxy) pool
    that reuses it a moment later races the close and gets a reset. With the configured
    keep-alive the server keeps it open; the same connection serves the next request."""
    web = WebProcess("redis://127.0.0.1:1/0", threads=2, database_url=f"sqlite:///{tmp_path}/x")
    web.start()
    try:
        with socket.create_connection(("127.0.0.1", web.port), timeout=10) as sock:
            assert request(sock).startswith(b"HTTP/1.1 404")
            # Nothing to read for 3 s means the server did not close it (EOF would be readable).
            readable, _, _ = select.select([sock], [], [], 3.0)
            assert readable == []
            assert request(sock).startswith(b"HTTP/1.1 404")
    finally:
        web.stop()
