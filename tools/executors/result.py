"""What an executor reports (its own module: the executors import it, and the package imports
the executors)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class ToolResult:
    output: Any
    ok: bool
    latency_ms: float
    http_status: int | None = None
    error: str | None = None
    retryable: bool = False
