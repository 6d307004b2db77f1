from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tools.tests.server import ToolServer


@pytest.fixture
def allow_loopback(settings: Any) -> None:
    """Let the egress guard reach the local test server (127.0.0.1 only)."""
    settings.SPARKOPS_OUTBOUND_ALLOW = ["127.0.0.1"]


@pytest.fixture
def server(allow_loopback: None) -> Iterator[ToolServer]:
    with ToolServer() as running:
        yield running
