"""What an executor reports (its own module: the executors import it, and the package imports
the executors)."""

from __future__ import annotations

from collections.abc import Callable
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


@dataclass
class FileScope:
    """Where an HTTP tool's files come from and go: the project (a row or its id) whose files
    `body_file` and `multipart` may send, and what a saved response records (the run and node
    that wrote it, or the person who invoked the tool). `scan_text`, given by the engine,
    applies the content rules of tool outputs (PII, blocked patterns) to a saved text file."""

    project: Any
    run_id: Any = None
    node_id: str = ""
    actor: Any = None
    scan_text: Callable[[str], str] | None = None
