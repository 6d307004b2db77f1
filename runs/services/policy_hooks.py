"""Governance checks the engine calls at its fixed points (DESIGN.md §7). Policies and budgets
plug in here; until they do, everything is allowed."""

from __future__ import annotations

from typing import Any


def before_run_start(*, workflow: Any, input: dict[str, Any], actor: Any) -> None:
    """Raise a SparkOpsError to refuse a run before it is created."""
