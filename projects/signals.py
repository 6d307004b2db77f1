"""Signals projects sends to the apps above it (which it may not import)."""

from __future__ import annotations

from django.dispatch import Signal

# Sent inside the transaction that changed a project's status, with `project`.
project_status_changed = Signal()
