from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from sparkops.testing.fake_llm import FakeLLMServer


@pytest.fixture
def allow_loopback(settings: Any) -> None:
    """Let the egress guard reach the fake LLM server (and nothing else private)."""
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1", "localhost"]


@pytest.fixture
def fake_llm() -> Iterator[FakeLLMServer]:
    """A fresh fake OpenAI/Anthropic server on 127.0.0.1 for one test. Pair it with
    `allow_loopback`, or the egress guard refuses to talk to it."""
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """A tripwire under the egress guard: every socket connect is recorded, and any target but
    loopback is refused, so a test that goes wrong still never leaves the machine. Returns the
    list of addresses connected to (or attempted)."""
    attempts: list[Any] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(address: Any) -> None:
        attempts.append(address)
        host = address[0] if isinstance(address, tuple) else address
        try:
            if ipaddress.ip_address(host).is_loopback:
                return
        except ValueError:
            pass
        raise ConnectionRefusedError(111, f"test network: no traffic to {address!r}")

    def connect(sock: socket.socket, address: Any) -> None:
        check(address)
        return real_connect(sock, address)

    def connect_ex(sock: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return attempts
