"""SVG for the console's pictures: a workflow DAG (plain, coloured by a run's step statuses, or
marked up as one side of a version diff), a run's timeline, and the dashboard's bar charts.
Every text goes through `escape`; hovering an element shows its SVG <title>. Elements carry
`data-*` attributes (node, status, attempt) so tests and scripts can find them."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from .layout import Attempt, CallBar, DagLayout, GanttLayout, NodeBox
from .palette import (
    CALL_COLORS,
    DEFAULT_TYPE_COLORS,
    DIFF_COLORS,
    STATUS_TINTS,
    TYPE_COLORS,
    status_color,
)

_ids = itertools.count(1)
FONT = "font-family=\"-apple-system,'Segoe UI',system-ui,Roboto,sans-serif\""


def _uid(prefix: str) -> str:
    return f"{prefix}{next(_ids)}"


def truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def humanize_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _between(a: datetime | None, b: datetime | None) -> float | None:
    return (b - a).total_seconds() if a is not None and b is not None else None


# --- DAG -------------------------------------------------------------------------------------


def _shape(node: NodeBox, fill: str, stroke: str, width: float, dash: str = "") -> str:
    x, y, w, h = node.x, node.y, node.w, node.h
    common = f'fill="{fill}" stroke="{stroke}" stroke-width="{width}"{dash}'
    if node.type == "approval":
        points = [
            (x + 12, y),
            (x + w - 12, y),
            (x + w, y + h / 2),
            (x + w - 12, y + h),
            (x + 12, y + h),
            (x, y + h / 2),
        ]
        return f'<polygon points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in points)}" {common}/>'
    if node.type == "transform":
        points = [(x + 10, y), (x + w, y), (x + w - 10, y + h), (x, y + h)]
        return f'<polygon points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in points)}" {common}/>'
    if node.type == "loop":  # a box with an inner dashed box: a body run again and again
        inner = f'fill="none" stroke="{stroke}" stroke-width="1" stroke-dasharray="3 2"'
        return (
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w}" height="{h}" rx="10" {common}/>'
            f'<rect x="{x + 4:.1f}" y="{y + 4:.1f}" width="{w - 8}" height="{h - 8}" rx="7" '
            f"{inner}/>"
        )
    if node.type == "workflow":  # a subroutine box: a workflow inside
        inner = f'stroke="{stroke}" stroke-width="1"'
        return (
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w}" height="{h}" rx="3" {common}/>'
            f'<line x1="{x + 8:.1f}" y1="{y:.1f}" x2="{x + 8:.1f}" y2="{y + h:.1f}" {inner}/>'
            f'<line x1="{x + w - 8:.1f}" y1="{y:.1f}" x2="{x + w - 8:.1f}" y2="{y + h:.1f}" '
            f"{inner}/>"
        )
    if node.type == "map":  # a stack of cards: one node per item
        back = f'fill="{fill}" stroke="{stroke}" stroke-width="1" stroke-opacity="0.6"'
        return (
            f'<rect x="{x + 6:.1f}" y="{y - 6:.1f}" width="{w}" height="{h}" rx="3" {back}/>'
            f'<rect x="{x + 3:.1f}" y="{y - 3:.1f}" width="{w}" height="{h}" rx="3" {back}/>'
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w}" height="{h}" rx="3" {common}/>'
        )
    if node.type == "switch":  # an octagon: a routing point
        points = [
            (x + 10, y),
            (x + w - 10, y),
            (x + w, y + 10),
            (x + w, y + h - 10),
            (x + w - 10, y + h),
            (x + 10, y + h),
            (x, y + h - 10),
            (x, y + 10),
        ]
        return f'<polygon points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in points)}" {common}/>'
    radius = 14 if node.type == "agent" else 3
    return f'<rect x="{x:.1f}" y="{y:.1f}" width="{w}" height="{h}" rx="{radius}" {common}/>'


def _node_title(node: NodeBox) -> str:
    lines = [f"{node.id} ({node.type}{' ' + node.ref if node.ref else ''})"]
    if node.description:
        lines.append(node.description)
    if node.when:
        lines.append(f"when: {node.when}")
    if node.status:
        attempts = f", {node.attempts} attempts" if node.attempts > 1 else ""
        lines.append(f"status: {node.status.replace('_', ' ')}{attempts}")
    if node.progress:
        lines.append(node.progress)
    if node.error:
        lines.append(f"error: {truncate(node.error, 300)}")
    if node.diff:
        keys = f": {', '.join(node.changed_keys)}" if node.changed_keys else ""
        lines.append(f"{node.diff}{keys}")
    return "\n".join(lines)


def _node(node: NodeBox) -> str:
    fill, stroke = TYPE_COLORS.get(node.type, DEFAULT_TYPE_COLORS)
    width, dash = 1.5, ""
    if node.status:
        fill = STATUS_TINTS.get(node.status, fill)
        if node.status == "skipped":
            dash = ' stroke-dasharray="4 3"'
    if node.diff:
        stroke, width = DIFF_COLORS[node.diff], 3
        fill = {"added": "#dcfce7", "removed": "#fee2e2", "changed": "#fef3c7"}[node.diff]
        if node.diff == "removed":
            dash = ' stroke-dasharray="6 3"'
    detail = node.type + (f" · {node.ref}" if node.ref else "")
    if node.progress:
        detail = node.progress
    if node.status:
        detail = f"{node.status.replace('_', ' ')} · {detail}"
    parts = [
        f'<g class="node" data-node="{escape(node.id)}" data-type="{escape(node.type)}"'
        + (f' data-status="{escape(node.status)}"' if node.status else "")
        + (f' data-diff="{node.diff}"' if node.diff else "")
        + ">",
        f"<title>{escape(_node_title(node))}</title>",
        _shape(node, fill, stroke, width, dash),
        f'<text x="{node.x + node.w / 2:.1f}" y="{node.y + 20:.1f}" text-anchor="middle" '
        f'font-size="13" font-weight="600" fill="#111827">{escape(truncate(node.id, 21))}</text>',
        f'<text x="{node.x + node.w / 2:.1f}" y="{node.y + 37:.1f}" text-anchor="middle" '
        f'font-size="11" fill="#374151">{escape(truncate(detail, 27))}</text>',
    ]
    if node.status:
        dot = status_color(node.status)
        parts.append(f'<circle cx="{node.x + 12:.1f}" cy="{node.y + 12:.1f}" r="4" fill="{dot}"/>')
    if node.attempts > 1:
        parts.append(
            f'<text x="{node.right - 8:.1f}" y="{node.y + 14:.1f}" text-anchor="end" '
            f'font-size="10" font-weight="700" fill="#b91c1c">&#215;{node.attempts}</text>'
        )
    parts.append("</g>")
    return "".join(parts)


def dag_svg(layout: DagLayout, *, label: str = "Workflow graph") -> SafeString:
    marker = _uid("arrow")
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sparkops-dag" role="img" '
        f'data-direction="{layout.direction}" aria-label="{escape(label)}" '
        f'width="{layout.width:.0f}" height="{layout.height:.0f}" '
        f'viewBox="0 0 {layout.width:.0f} {layout.height:.0f}" {FONT}>',
        f'<defs><marker id="{marker}" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#64748b"/></marker></defs>',
    ]
    layers = {node.id: node.layer for node in layout.nodes}
    for edge in layout.edges:
        dash = ' stroke-dasharray="6 4"' if edge.conditional else ""
        # An edge that skips bands runs behind the nodes between: draw it fainter.
        skips = layers[edge.target] - layers[edge.source] > 1
        faint = ' stroke-opacity="0.45"' if skips else ""
        title = f"{edge.source} → {edge.target}"
        if edge.when:
            title += f"\nonly when {edge.when}"
        out.append(
            f'<g class="edge" data-source="{escape(edge.source)}" '
            f'data-target="{escape(edge.target)}"'
            + (' data-conditional="1"' if edge.conditional else "")
            + f"><title>{escape(title)}</title>"
            f'<path d="{edge.path()}" fill="none" stroke="#64748b" stroke-width="1.4"{dash}{faint} '
            f'marker-end="url(#{marker})"/>'
        )
        if edge.conditional:
            cx, cy = (edge.x2, edge.y2 - 18) if edge.vertical else (edge.x2 - 20, edge.y2)
            out.append(
                f'<polygon points="{cx - 8:.1f},{cy:.1f} {cx:.1f},{cy - 8:.1f} '
                f'{cx + 8:.1f},{cy:.1f} {cx:.1f},{cy + 8:.1f}" fill="#fff" stroke="#d97706" '
                f'stroke-width="1.4"/><text x="{cx:.1f}" y="{cy + 3.5:.1f}" '
                'text-anchor="middle" font-size="10" font-weight="700" fill="#d97706">?</text>'
            )
        out.append("</g>")
    out.extend(_node(node) for node in layout.nodes)
    out.append("</svg>")
    return mark_safe("".join(out))  # noqa: S308  (every text above is escaped)


# --- timeline --------------------------------------------------------------------------------


def attempt_title(attempt: Attempt) -> str:
    label = attempt.node_id
    if attempt.kind == "approval":
        label += " · approval"
    elif attempt.attempt:
        label += f" · attempt {attempt.attempt}"
    lines = [
        f"{label} · {attempt.status.replace('_', ' ')}{' (in progress)' if attempt.open else ''}"
    ]
    if attempt.kind == "task":
        wait = _between(attempt.queued_at, attempt.started_at)
        ran = _between(attempt.started_at, attempt.finished_at)
        timing = []
        if wait is not None:
            timing.append(f"waited {humanize_seconds(wait)} in the queue")
        if ran is not None:
            timing.append(f"ran {humanize_seconds(ran)}")
        if timing:
            lines.append(", ".join(timing))
    elif attempt.kind == "approval":
        waited = _between(attempt.started_at, attempt.finished_at)
        if waited is not None:
            lines.append(f"waited {humanize_seconds(waited)} for a decision")
    if attempt.input_tokens or attempt.output_tokens or attempt.cost:
        lines.append(
            f"tokens {attempt.input_tokens} in / {attempt.output_tokens} out · "
            f"cost ${attempt.cost.normalize():f}"
        )
    if attempt.calls:
        models = sum(1 for call in attempt.calls if call.kind == "llm")
        tools = len(attempt.calls) - models
        counts = [
            f"{n} {what}{'s' if n != 1 else ''}"
            for n, what in ((models, "model call"), (tools, "tool call"))
            if n
        ]
        lines.append(", ".join(counts) + " (hover the inner bars)")
    if attempt.error:
        lines.append(f"error: {truncate(attempt.error, 300)}")
    if attempt.note:
        lines.append(attempt.note)
    return "\n".join(lines)


def call_title(bar: CallBar) -> str:
    call, payload = bar.call, bar.call.payload
    took = humanize_seconds(call.latency) if call.latency else "under 1 ms"
    when = f"{bar.start:%H:%M:%S.%f}"[:-3]
    if call.kind == "llm":
        lines = [f"model call {call.name or '?'}" + _iteration(payload)]
        lines.append(f"took {took} · ended {when}")
        lines.append(
            f"tokens {payload.get('input_tokens', 0)} in / {payload.get('output_tokens', 0)} out"
            f" · cost ${_decimal_text(payload.get('cost'))}"
            + (" (price unknown)" if payload.get("price_unknown") else "")
        )
        if payload.get("tool_calls"):
            lines.append("asked for: " + ", ".join(str(t) for t in payload["tool_calls"]))
        elif payload.get("finish_reason"):
            lines.append(f"finished: {payload['finish_reason']}")
        return "\n".join(lines)
    lines = [f"tool call {call.name or '?'}" + _iteration(payload)]
    lines.append(f"{'ok' if call.ok else 'failed'} · took {took} · ended {when}")
    if payload.get("http_status"):
        lines.append(f"HTTP {payload['http_status']}")
    if payload.get("error"):
        lines.append(f"error: {truncate(str(payload['error']), 300)}")
    return "\n".join(lines)


def _iteration(payload: dict[str, Any]) -> str:
    return f" · iteration {payload['iteration']}" if payload.get("iteration") else ""


def _decimal_text(value: Any) -> str:
    try:
        return f"{Decimal(str(value or 0)).normalize():f}"
    except ArithmeticError:
        return "?"


def _call_bars(bars: Sequence[CallBar], y: float, h: float) -> str:
    if not bars:
        return ""
    inset = 3 if h >= 12 else 1
    out = ['<g class="calls">']
    for bar in bars:
        call = bar.call
        fill = CALL_COLORS[call.kind] if call.ok else CALL_COLORS["failed"]
        out.append(
            f'<g class="call" data-kind="{call.kind}" data-name="{escape(call.name)}"'
            f' data-ok="{1 if call.ok else 0}"><title>{escape(call_title(bar))}</title>'
            f'<rect x="{bar.x:.1f}" y="{y + inset:.1f}" width="{bar.w:.1f}" '
            f'height="{h - 2 * inset:.1f}" fill="{fill}" stroke="#fff" stroke-width="0.6" '
            'rx="1"/></g>'
        )
    out.append("</g>")
    return "".join(out)


def gantt_svg(layout: GanttLayout, *, now_line: bool = False) -> SafeString:
    hatch = _uid("hatch")
    bottom = layout.top + sum(row.h for row in layout.rows)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sparkops-gantt" role="img" '
        f'data-plot-x0="{layout.plot_x0:.1f}" data-plot-x1="{layout.plot_x1:.1f}" '
        f'aria-label="Run timeline" width="{layout.width:.0f}" height="{layout.height:.0f}" '
        f'viewBox="0 0 {layout.width:.0f} {layout.height:.0f}" {FONT}>',
        f'<defs><pattern id="{hatch}" patternUnits="userSpaceOnUse" width="6" height="6" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fde68a"/>'
        '<line x1="0" y1="0" x2="0" y2="6" stroke="#d97706" stroke-width="2.5"/></pattern></defs>',
    ]
    for i, row in enumerate(layout.rows):
        if i % 2 == 0:
            out.append(
                f'<rect x="0" y="{row.y:.1f}" width="{layout.width:.0f}" height="{row.h}" '
                'fill="#f8fafc"/>'
            )
        size = 12 if row.h > 16 else 10
        out.append(
            f'<g class="row" data-node="{escape(row.node_id)}" data-status="{row.status}">'
            f"<title>{escape(row.node_id)}: {row.status.replace('_', ' ')}</title>"
            f'<circle cx="10" cy="{row.y + row.h / 2:.1f}" r="4" '
            f'fill="{status_color(row.status)}"/>'
            f'<text x="20" y="{row.y + row.h / 2 + size / 2 - 1:.1f}" font-size="{size}" '
            f'fill="#111827">{escape(truncate(row.node_id, 26))}</text></g>'
        )
    plot_w = layout.plot_x1 - layout.plot_x0
    out.append(
        f'<rect class="plot" x="{layout.plot_x0:.1f}" y="{layout.top:.1f}" '
        f'width="{plot_w:.1f}" height="{bottom - layout.top:.1f}" fill="none" '
        'stroke="#cbd5e1"/>'
    )
    for x, label in layout.ticks:
        # A label near the right edge ends at its tick, so it never runs out of the picture.
        anchor = "end" if layout.plot_x1 - x < 30 else "middle"
        out.append(
            f'<line x1="{x:.1f}" y1="{layout.top:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" '
            'stroke="#e5e7eb"/>'
            f'<text class="tick" x="{x:.1f}" y="{layout.top - 8:.1f}" text-anchor="{anchor}" '
            f'font-size="10" fill="#6b7280">{escape(label)}</text>'
            f'<text class="tick" x="{x:.1f}" y="{bottom + 16:.1f}" text-anchor="{anchor}" '
            f'font-size="10" fill="#6b7280">{escape(label)}</text>'
        )
    for bar in layout.bars:
        attempt = bar.attempt
        color = status_color(attempt.status)
        is_open = ' data-open="1"' if attempt.open else ""
        out.append(
            f'<g class="bar" data-node="{escape(attempt.node_id)}" '
            f'data-attempt="{attempt.attempt or ""}" data-kind="{attempt.kind}" '
            f'data-status="{attempt.status}"{is_open}>'
            f"<title>{escape(attempt_title(attempt))}</title>"
        )
        if bar.wait_w:
            out.append(
                f'<rect class="wait" x="{bar.wait_x:.1f}" y="{bar.y:.1f}" '
                f'width="{bar.wait_w:.1f}" height="{bar.h}" fill="{color}" fill-opacity="0.3" '
                'rx="2"/>'
            )
        if bar.run_w:
            fill = f"url(#{hatch})" if attempt.kind == "approval" else color
            stroke = ' stroke="#d97706"' if attempt.kind == "approval" else ""
            if attempt.kind == "marker":
                out.append(
                    f'<rect class="run" x="{bar.run_x:.1f}" y="{bar.y:.1f}" '
                    f'width="{bar.run_w:.1f}" height="{bar.h}" fill="{color}"/>'
                )
            else:
                out.append(
                    f'<rect class="run" x="{bar.run_x:.1f}" y="{bar.y:.1f}" '
                    f'width="{bar.run_w:.1f}" height="{bar.h}" fill="{fill}"{stroke} rx="2"/>'
                )
            out.append(_call_bars(bar.calls, bar.y, bar.h))
            if (
                attempt.attempt
                and attempt.attempt > 1
                and bar.run_w > 22
                and bar.h >= 12
                and not bar.calls
            ):
                out.append(
                    f'<text x="{bar.run_x + 4:.1f}" y="{bar.y + bar.h - 4:.1f}" font-size="9" '
                    f'fill="#fff">#{attempt.attempt}</text>'
                )
        out.append("</g>")
    if now_line:
        x = layout.plot_x1
        out.append(
            f'<line class="now" x1="{x:.1f}" y1="{layout.top - 4:.1f}" x2="{x:.1f}" '
            f'y2="{bottom:.1f}" stroke="#dc2626" stroke-dasharray="3 3"><title>now</title></line>'
        )
    out.append("</svg>")
    return mark_safe("".join(out))  # noqa: S308  (every text above is escaped)


# --- charts ----------------------------------------------------------------------------------


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * magnitude:
            return factor * magnitude
    return value


def _axis_text(value: float, unit: str) -> str:
    if unit != "$":
        return f"{value:g}"
    if value == 0:
        return "$0"
    digits = 2 if value >= 0.1 else max(2, 1 - math.floor(math.log10(value)))
    text = f"{value:,.{digits}f}"
    while digits > 2 and text.endswith("0"):  # $0.0010 → $0.001, but $0.50 stays
        text, digits = text[:-1], digits - 1
    return f"${text}"


# A chart with at most this many buckets holding data is "sparse" (one day of data in a
# 30-day chart): each such bar gets its date and its value written next to it.
SPARSE = 3
LABEL_GAP = 34  # px between the centres of two x-axis labels, so they never overlap


def _gridlines(
    top_value: float, unit: str, *, left: float, right: float, top: float, plot_h: float
) -> list[str]:
    """Horizontal lines with their value: whole numbers only for counts (no "0.5 runs"),
    halves for money; only the baseline when there is no data (no made-up scale)."""
    out = []
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        value = top_value * fraction
        if fraction and not top_value:
            continue
        if unit != "$" and value != int(value):
            continue
        if unit == "$" and fraction in (0.25, 0.75):
            continue
        y = top + plot_h * (1 - fraction)
        out.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" '
            f'stroke="{"#9ca3af" if fraction == 0 else "#e5e7eb"}"/>'
            f'<text class="y-label" x="{left - 4}" y="{y + 3:.1f}" text-anchor="end" '
            f'font-size="9" fill="#6b7280">{escape(_axis_text(value, unit))}</text>'
        )
    return out


def stacked_bars_svg(
    buckets: Sequence[tuple[str, dict[str, float]]],
    *,
    order: Sequence[str],
    label_every: int = 1,
    width: float = 560,
    height: float = 180,
    unit: str = "",
    colors: dict[str, str] | None = None,
    empty: str = "No data in this period.",
) -> SafeString:
    """Vertical bars, one per bucket, stacked by key in `order`. `buckets` = (label, values).

    Readable whatever the data: counts get whole-number gridlines; a bar is at most 48 px wide
    (one bucket does not fill the chart); when only a few buckets hold data (one day of data
    in a 30-day chart) each of those bars is labelled with its bucket and its value; small
    amounts of money keep their significant digits; no data at all draws the frame and says
    `empty` in the middle."""
    left, right, top, bottom = 44, 8, 14, 24
    plot_h = height - top - bottom
    plot_w = width - left - right
    totals = [sum(float(v or 0) for v in values.values()) for _, values in buckets]
    total = max(totals, default=0)
    top_value = _nice_max(float(total)) if total else 0.0
    slot = plot_w / max(len(buckets), 1)
    bar_w = min(max(slot * 0.75, 1.0), 48.0)
    filled = [i for i, t in enumerate(totals) if t > 0]
    sparse = 0 < len(filled) <= SPARSE
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sparkops-chart" width="{width:.0f}" '
        f'height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}" role="img"'
        + (' data-empty="1"' if not filled else "")
        + f' data-plot-x0="{left}" data-plot-x1="{width - right:.0f}" {FONT}>'
    ]
    out.extend(_gridlines(top_value, unit, left=left, right=width - right, top=top, plot_h=plot_h))
    if not filled:
        out.append(
            f'<text class="empty" x="{left + plot_w / 2:.1f}" y="{top + plot_h / 2:.1f}" '
            f'text-anchor="middle" font-size="12" fill="#6b7280">{escape(empty)}</text>'
        )
    labelled: list[float] = []

    def label(i: int, text: str, strong: bool = False) -> None:
        cx = left + i * slot + slot / 2
        if any(abs(cx - other) < LABEL_GAP for other in labelled):
            return
        labelled.append(cx)
        half = len(text) * 2.9  # about 5.8 px a character at this size
        cx = min(max(cx, left + half), width - right - half)  # inside the picture
        weight = ' font-weight="600" fill="#374151"' if strong else ' fill="#6b7280"'
        out.append(
            f'<text class="x-label" x="{cx:.1f}" y="{height - 8}" text-anchor="middle" '
            f'font-size="9"{weight}>{escape(text)}</text>'
        )

    for i, (name, values) in enumerate(buckets):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        summary = ", ".join(f"{k.replace('_', ' ')} {v:g}" for k, v in values.items() if v)
        out.append(
            f'<g class="bucket" data-label="{escape(name)}" data-total="{totals[i]:g}">'
            f"<title>{escape(name)}: {escape(summary or 'none')}</title>"
            f'<rect x="{left + i * slot:.1f}" y="{top}" width="{slot:.1f}" height="{plot_h}" '
            'fill="transparent"/>'
        )
        for key in order:
            value = float(values.get(key, 0) or 0)
            if not value:
                continue
            h = value / top_value * plot_h
            y -= h
            color = (colors or {}).get(key) or status_color(key)
            out.append(
                f'<rect class="seg" data-key="{escape(key)}" data-value="{value:g}" '
                f'x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" fill="{color}"/>'
            )
        if sparse and totals[i] > 0:
            value_text = _axis_text(totals[i], unit) if unit == "$" else f"{totals[i]:g}"
            # Centred over its bar, but never out of the picture (about 6 px a character).
            half = len(value_text) * 3.2
            cx = min(max(x + bar_w / 2, left + half), width - right - half)
            out.append(
                f'<text class="value" x="{cx:.1f}" y="{max(y - 3, 9):.1f}" '
                f'text-anchor="middle" font-size="10" font-weight="600" fill="#111827">'
                f"{escape(value_text)}</text>"
            )
        out.append("</g>")
    if sparse:  # the bars with data first, then the regular labels where there is room
        for i in filled:
            label(i, buckets[i][0], strong=True)
    for i, (name, _) in enumerate(buckets):
        if i % label_every == 0 or i == len(buckets) - 1:
            label(i, name)
    out.append("</svg>")
    return mark_safe("".join(out))  # noqa: S308  (every text above is escaped)


def money(value: Decimal | float | None) -> str:
    value = Decimal(str(value or 0))
    if value and abs(value) < Decimal("0.01"):
        return f"${value:.4f}"
    return f"${value:,.2f}"


def legend_items(items: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """(key, label) → what the legend template shows."""
    return [
        {"key": key, "label": label, "color": status_color(key), "tint": STATUS_TINTS.get(key)}
        for key, label in items
    ]
