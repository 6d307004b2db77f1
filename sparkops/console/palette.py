"""Colours shared by badges, graphs, timelines and charts, so a status looks the same
everywhere in the console."""

from __future__ import annotations

# Strong colours: badges, timeline bars, chart segments, legends.
STATUS_COLORS = {
    "pending": "#9ca3af",
    "queued": "#60a5fa",
    "running": "#2563eb",
    "waiting_approval": "#d97706",
    "succeeded": "#16a34a",
    "failed": "#dc2626",
    "cancelled": "#6b7280",
    "timed_out": "#7f1d1d",
    "skipped": "#a3a3a3",
    "lost": "#374151",
}

# Light fills for graph nodes (dark text stays readable on them).
STATUS_TINTS = {
    "pending": "#f3f4f6",
    "queued": "#dbeafe",
    "running": "#bfdbfe",
    "waiting_approval": "#fde68a",
    "succeeded": "#bbf7d0",
    "failed": "#fecaca",
    "cancelled": "#e5e7eb",
    "timed_out": "#fca5a5",
    "skipped": "#fafafa",
}

# Node types: (fill, stroke).
TYPE_COLORS = {
    "agent": ("#ede9fe", "#7c3aed"),
    "tool": ("#e0f2fe", "#0284c7"),
    "approval": ("#fef3c7", "#d97706"),
    "transform": ("#f1f5f9", "#475569"),
    "switch": ("#ccfbf1", "#0d9488"),
    "map": ("#fce7f3", "#db2777"),
    "workflow": ("#e0e7ff", "#4f46e5"),
    "loop": ("#ecfccb", "#65a30d"),
}
DEFAULT_TYPE_COLORS = ("#f9fafb", "#6b7280")

# Order in stacked charts and legends: outcomes first, then what is still in progress.
RUN_STATUS_ORDER = [
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
    "waiting_approval",
    "running",
    "queued",
    "pending",
]

# Sub-bars of a timeline attempt: its model calls and tool calls (a failed tool call is red).
CALL_COLORS = {"llm": "#7c3aed", "tool": "#0284c7", "failed": "#b91c1c"}

DIFF_COLORS = {"added": "#16a34a", "removed": "#dc2626", "changed": "#d97706"}


def status_color(status: str | None) -> str:
    return STATUS_COLORS.get(status or "", "#6b7280")
