"""Geometry of the console's pictures, as plain data (no database, no markup): where the nodes
of a workflow DAG go, and where the bars of a run's timeline go. `svg` draws these.

DAG: nodes sit in bands by topological rank (longest path from a root, the same layers the
engine uses). Within a band, a few barycenter sweeps order the nodes after their neighbours
to cut edge crossings. A shallow graph (up to MAX_LR_BANDS bands) reads left to right, which
fits the admin's width; a deeper one reads top to bottom, so a 50-step chain grows down the
page (which scrolls) instead of 12 000 px sideways. A rank wider than MAX_ROWS (left to
right) or MAX_COLS (top to bottom) wraps into several bands. Bands never share a range along
the flow and nodes within a band never share a range across it, so nodes cannot overlap, and
every edge runs forward (a dependency always sits in an earlier band).

Timeline: one bar per step attempt (retries and recoveries are separate bars on the step's
row), derived from the run's `step.status` events, which record every transition with its
attempt number. Queue wait is the lighter part of a bar; approval waits are their own bars.
The model calls (`llm.call`) and tool calls (`tool.call`) of an attempt are sub-bars inside it:
each event is written when its call returns, with its `latency_ms`, so a call spans
[written - latency, written], clipped to its attempt (events a step writes all at once, as an
inline step does, are laid back to back ending where they were written). Every bar and sub-bar
lies inside the plot area, whatever the events say.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from workflows.definition import graph

NODE_W = 176
NODE_H = 48
COL_GAP = 64  # between bands, left to right
ROW_GAP = 18  # between nodes of a band, left to right
BAND_GAP = 40  # between bands, top to bottom
NODE_GAP = 24  # between nodes of a band, top to bottom
PAD = 24
MAX_ROWS = 12
MAX_COLS = 6
MAX_LR_BANDS = 5


@dataclass
class NodeBox:
    id: str
    type: str
    ref: str  # the agent's slug or the tool's name
    when: str | None
    description: str
    layer: int
    x: float = 0.0
    y: float = 0.0
    w: float = NODE_W
    h: float = NODE_H
    # Run view: the step's status and how many attempts it took.
    status: str | None = None
    attempts: int = 0
    error: str = ""
    progress: str = ""  # a map's items: "finished/total items"
    # Diff view: added | removed | changed, with the keys that changed.
    diff: str | None = None
    changed_keys: list[str] = field(default_factory=list)

    @property
    def right(self) -> float:
        return self.x + self.w

    @property
    def bottom(self) -> float:
        return self.y + self.h

    @property
    def cy(self) -> float:
        return self.y + self.h / 2

    @property
    def cx(self) -> float:
        return self.x + self.w / 2


@dataclass
class EdgeLine:
    source: str
    target: str
    conditional: bool
    when: str | None
    x1: float
    y1: float
    x2: float
    y2: float
    vertical: bool = False

    def path(self) -> str:
        if self.vertical:
            dy = max((self.y2 - self.y1) / 2, 16.0)
            return (
                f"M{self.x1:.1f},{self.y1:.1f} C{self.x1:.1f},{self.y1 + dy:.1f} "
                f"{self.x2:.1f},{self.y2 - dy:.1f} {self.x2:.1f},{self.y2:.1f}"
            )
        dx = max((self.x2 - self.x1) / 2, 24.0)
        return (
            f"M{self.x1:.1f},{self.y1:.1f} C{self.x1 + dx:.1f},{self.y1:.1f} "
            f"{self.x2 - dx:.1f},{self.y2:.1f} {self.x2:.1f},{self.y2:.1f}"
        )


@dataclass
class DagLayout:
    nodes: list[NodeBox]
    edges: list[EdgeLine]
    layers: list[list[str]]
    width: float
    height: float
    direction: str = "LR"

    def node(self, node_id: str) -> NodeBox:
        return next(n for n in self.nodes if n.id == node_id)


def _ref(node: dict[str, Any]) -> str:
    inner = node.get("node")
    if node.get("type") == "map" and isinstance(inner, dict):  # what runs per item
        return f"each: {_ref(inner) or inner.get('type')}"
    if node.get("type") == "loop" and isinstance(inner, dict):  # what each iteration runs
        return f"repeat: {_ref(inner) or inner.get('type')}"
    value = node.get(node.get("type") or "")
    return value if isinstance(value, str) else ""


def order_layers(layers: list[list[str]], deps: dict[str, list[str]]) -> list[list[str]]:
    """Reorder each layer by the barycenter of its neighbours' positions: down (parents), up
    (children), down again. Ties keep the previous order, so a chain stays as written."""
    layers = [list(layer) for layer in layers]
    children: dict[str, list[str]] = defaultdict(list)
    for node_id, node_deps in deps.items():
        for dep in node_deps:
            children[dep].append(node_id)

    def positions() -> dict[str, float]:
        # Centred index: layers of different sizes line up around the middle.
        return {
            node_id: index - (len(layer) - 1) / 2
            for layer in layers
            for index, node_id in enumerate(layer)
        }

    def sweep(indexes: Iterable[int], neighbours: Any) -> None:
        for i in indexes:
            pos = positions()
            current = {node_id: index for index, node_id in enumerate(layers[i])}

            def key(
                node_id: str, pos: dict[str, float] = pos, current: dict[str, int] = current
            ) -> tuple[float, int]:
                near = [pos[n] for n in neighbours(node_id) if n in pos]
                centre = sum(near) / len(near) if near else pos[node_id]
                return (centre, current[node_id])

            layers[i].sort(key=key)

    down = range(1, len(layers))
    up = range(len(layers) - 2, -1, -1)
    sweep(down, lambda n: deps.get(n, []))
    sweep(up, lambda n: children.get(n, []))
    sweep(down, lambda n: deps.get(n, []))
    return layers


def _bands(layers: list[list[str]], limit: int) -> list[tuple[int, list[str]]]:
    """(layer index, node ids) per band; a layer above `limit` splits into even bands."""
    bands = []
    for index, layer in enumerate(layers):
        parts = max(math.ceil(len(layer) / limit), 1)
        size = math.ceil(len(layer) / parts) if layer else 0
        for start in range(0, len(layer), size or 1):
            bands.append((index, layer[start : start + size]))
    return bands


def dag_layout(definition: Any, direction: str = "auto") -> DagLayout:
    """Lay out a (validated) workflow definition, left to right ("LR"), top to bottom ("TB")
    or whichever suits its depth ("auto"). Raises InvalidInput on a cycle."""
    shape = graph(definition)
    raw = {
        node["id"]: node
        for node in (definition.get("nodes") or [])
        if isinstance(node, dict) and isinstance(node.get("id"), str)
    }
    deps = {node["id"]: node["depends_on"] for node in shape["nodes"]}
    layers = order_layers(shape["layers"], deps)
    if direction == "auto":
        direction = "LR" if len(_bands(layers, MAX_ROWS)) <= MAX_LR_BANDS else "TB"
    across = direction == "LR"
    bands = _bands(layers, MAX_ROWS if across else MAX_COLS)
    # Along the flow: one band after the other; across it: the band's nodes, centred.
    band_step = NODE_W + COL_GAP if across else NODE_H + BAND_GAP
    node_step = NODE_H + ROW_GAP if across else NODE_W + NODE_GAP
    widest = max((len(ids) for _, ids in bands), default=0)
    full = widest * node_step - (node_step - (NODE_H if across else NODE_W)) if widest else 0
    boxes: dict[str, NodeBox] = {}
    for band, (layer_index, ids) in enumerate(bands):
        size = len(ids) * node_step - (node_step - (NODE_H if across else NODE_W))
        offset = PAD + (full - size) / 2
        for position, node_id in enumerate(ids):
            node = raw.get(node_id, {})
            when = node.get("when")
            along, cross = PAD + band * band_step, offset + position * node_step
            boxes[node_id] = NodeBox(
                id=node_id,
                type=str(node.get("type") or ""),
                ref=_ref(node),
                when=when if isinstance(when, str) else None,
                description=str(node.get("description") or ""),
                layer=layer_index,
                x=along if across else cross,
                y=cross if across else along,
            )
    nodes = [boxes[node["id"]] for node in shape["nodes"]]
    edges = []
    for edge in shape["edges"]:
        source, target = boxes[edge["source"]], boxes[edge["target"]]
        if across:
            ends = (source.right, source.cy, target.x, target.cy)
        else:
            ends = (source.cx, source.bottom, target.cx, target.y)
        edges.append(
            EdgeLine(
                edge["source"],
                edge["target"],
                edge["conditional"],
                target.when
                or (f"switch {source.id} picks it" if source.type == "switch" else None),
                *ends,
                vertical=not across,
            )
        )
    length = 2 * PAD + len(bands) * band_step - (band_step - (NODE_W if across else NODE_H))
    if not bands:
        length = 2 * PAD
    return DagLayout(
        nodes=nodes,
        edges=edges,
        layers=layers,
        width=length if across else 2 * PAD + full,
        height=2 * PAD + full if across else length,
        direction=direction,
    )


# --- run timeline ----------------------------------------------------------------------------


@dataclass
class Call:
    """A model call or a tool call made during an attempt, as its event recorded it."""

    kind: str  # "llm" or "tool"
    name: str  # the model, or the tool
    at: datetime  # when the event was written: the call had returned
    latency: float  # seconds
    ok: bool = True
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class Attempt:
    """One bar: a step attempt (`task`), an approval wait (`approval`), or an instant
    (`marker`: skipped, reused from the parent run, cancelled before it was queued)."""

    node_id: str
    attempt: int | None
    kind: str
    status: str
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    open: bool = False
    error: str = ""
    note: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost: Decimal = Decimal(0)
    calls: list[Call] = field(default_factory=list)

    @property
    def begin(self) -> datetime | None:
        return self.queued_at or self.started_at or self.finished_at


def _get(event: Any, name: str) -> Any:
    return event.get(name) if isinstance(event, dict) else getattr(event, name)


def _error_text(payload: dict[str, Any]) -> str:
    error = payload.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or "")
    return str(error or "")


def _decimal(value: Any) -> Decimal:
    try:
        return Decimal(str(value or 0))
    except (InvalidOperation, ValueError):
        return Decimal(0)


def _close(bar: Attempt, at: datetime, status: str, error: str = "") -> None:
    bar.finished_at, bar.status, bar.open = at, status, False
    bar.error = error or bar.error


class _AttemptLog:
    """Reads a run's events in order and keeps one open bar per node: each `step.status`
    closes the node's open bar or opens the next one; `llm.call` adds to an attempt's usage and,
    like `tool.call`, is one of its calls; `approval.decided` notes the verdict on the bar
    waiting for it."""

    def __init__(self) -> None:
        self.bars: list[Attempt] = []
        self.current: dict[str, Attempt] = {}
        self.usage: dict[tuple[str, int | None], list[Any]] = defaultdict(
            lambda: [0, 0, Decimal(0)]
        )
        self.calls: dict[tuple[str, int | None], list[Call]] = defaultdict(list)

    def read(self, event: Any) -> None:
        kind, node_id = _get(event, "type"), _get(event, "node_id")
        if not node_id:
            return
        payload = _get(event, "payload") or {}
        at, attempt = _get(event, "created_at"), _get(event, "attempt")
        if kind == "llm.call":
            spent = self.usage[(node_id, attempt)]
            spent[0] += int(payload.get("input_tokens") or 0)
            spent[1] += int(payload.get("output_tokens") or 0)
            spent[2] += _decimal(payload.get("cost"))
            self.call(node_id, attempt, "llm", str(payload.get("model") or ""), at, payload)
        elif kind == "tool.call":
            name = str(payload.get("tool") or "")
            self.call(node_id, attempt, "tool", name, at, payload, ok=bool(payload.get("ok", True)))
        elif kind == "approval.decided" and node_id in self.current:
            verdict = "approved" if payload.get("approved") else "rejected"
            comment = f": {payload['comment']}" if payload.get("comment") else ""
            self.current[node_id].note = f"{verdict} by {payload.get('by', '?')}{comment}"
        elif kind == "step.status":
            status = payload.get("status")
            if status == "queued":
                self.queued(node_id, attempt, at, payload)
            elif status == "running":
                self.running(node_id, attempt, at)
            elif status == "waiting_approval":
                self.waiting(node_id, at)
            elif status in ("succeeded", "failed", "cancelled", "skipped"):
                self.finished(node_id, attempt, at, status, payload)

    def call(
        self,
        node_id: str,
        attempt: int | None,
        kind: str,
        name: str,
        at: datetime,
        payload: dict[str, Any],
        ok: bool = True,
    ) -> None:
        try:
            latency = max(float(payload.get("latency_ms") or 0), 0.0) / 1000
        except (TypeError, ValueError):
            latency = 0.0
        self.calls[(node_id, attempt)].append(Call(kind, name, at, latency, ok, payload))

    def _open(self, bar: Attempt) -> Attempt:
        self.current[bar.node_id] = bar
        self.bars.append(bar)
        return bar

    def queued(self, node_id: str, attempt: int | None, at: datetime, payload: dict) -> None:
        bar = self.current.get(node_id)
        again = payload.get("retry") or payload.get("recovered")
        if bar is not None and bar.kind == "approval":
            _close(bar, at, "succeeded")  # a held tool call approved: the step runs (again)
        elif bar is not None:
            _close(bar, at, "failed" if payload.get("retry") else "lost", _error_text(payload))
            if payload.get("recovered"):
                bar.error = str(payload.get("reason") or "worker lost")
        number = (attempt or 0) + 1 if again else attempt
        bar = self._open(Attempt(node_id, number, "task", "queued", queued_at=at, open=True))
        if payload.get("retry"):
            bar.note = f"retry after {payload.get('delay_seconds', 0)} s backoff"
        elif payload.get("recovered"):
            bar.note = "re-queued: the previous attempt's worker went silent"

    def running(self, node_id: str, attempt: int | None, at: datetime) -> None:
        bar = self.current.get(node_id)
        if bar is None or (attempt is not None and bar.attempt not in (None, attempt)):
            if bar is not None:
                _close(bar, at, "lost")
            bar = self._open(Attempt(node_id, attempt, "task", "running", open=True))
        bar.status, bar.started_at = "running", at

    def waiting(self, node_id: str, at: datetime) -> None:
        bar = self.current.get(node_id)
        if bar is not None and bar.kind == "task":
            # An agent step paused at a tool call its model made: the attempt ends here.
            _close(bar, at, "waiting_approval")
            bar.note = "paused for the approval of a tool call"
        self._open(Attempt(node_id, None, "approval", "waiting_approval", started_at=at, open=True))

    def finished(
        self, node_id: str, attempt: int | None, at: datetime, status: str, payload: dict
    ) -> None:
        bar = self.current.pop(node_id, None)
        if bar is not None and status != "skipped":
            _close(bar, at, status, _error_text(payload))
            return
        note = ""
        if payload.get("reused_from"):
            note = f"reused from run {payload['reused_from']}"
        elif payload.get("reason"):
            note = str(payload["reason"])
        marker = Attempt(node_id, attempt, "marker", status, started_at=at, finished_at=at)
        marker.note, marker.error = note, _error_text(payload)
        self.bars.append(marker)

    def result(self) -> list[Attempt]:
        for bar in self.bars:
            if bar.kind == "task":
                spent = self.usage.get((bar.node_id, bar.attempt))
                if spent:
                    bar.input_tokens, bar.output_tokens, bar.cost = spent
                bar.calls = self.calls.get((bar.node_id, bar.attempt), [])
        return self.bars


def step_attempts(events: Iterable[Any]) -> list[Attempt]:
    """Bars from a run's events (in `seq` order; dicts or RunEvent rows with type, node_id,
    attempt, payload, created_at). Attempts still open when the log ends have `open=True`."""
    log = _AttemptLog()
    for event in events:
        log.read(event)
    return log.result()


@dataclass
class CallBar:
    call: Call
    x: float
    w: float
    start: datetime
    end: datetime


@dataclass
class GanttBar:
    attempt: Attempt
    row: int
    y: float
    h: float
    # The lighter part (waiting in the queue or for a retry's backoff), then the run itself.
    wait_x: float
    wait_w: float
    run_x: float
    run_w: float
    calls: list[CallBar] = field(default_factory=list)


@dataclass
class GanttRow:
    node_id: str
    status: str
    y: float
    h: float


@dataclass
class GanttLayout:
    rows: list[GanttRow]
    bars: list[GanttBar]
    ticks: list[tuple[float, str]]
    start: datetime
    end: datetime
    plot_x0: float
    plot_x1: float
    top: float
    width: float
    height: float


LABEL_W = 190
AXIS_H = 26
_STEPS = [
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
]


def format_offset(seconds: float) -> str:
    """+250ms, +1.5s, +2m, +1h30m: tick labels relative to the run's start."""
    if seconds <= 0:
        return "0"
    if seconds < 1:
        return f"+{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"+{seconds:.3g}s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"+{minutes}m{rest:02d}s" if rest else f"+{minutes}m"
    hours, rest = divmod(round(seconds) // 60, 60)
    return f"+{hours}h{rest:02d}m" if rest else f"+{hours}h"


def tick_step(span_seconds: float, max_ticks: int = 8) -> float:
    return next((s for s in _STEPS if span_seconds / s <= max_ticks), _STEPS[-1])


def gantt_layout(
    attempts: list[Attempt],
    *,
    order: list[str],
    row_status: dict[str, str],
    start: datetime,
    end: datetime,
    width: float = 1000,
) -> GanttLayout:
    """Place the bars on one time axis from `start` to `end` (the run's creation to its end, or
    now while it is active; open attempts reach `end`). Every bar lies within the axis and is
    at least 2 px wide (a marker 3 px), so an instant still shows; every call's sub-bar lies
    within its attempt's bar."""
    if end <= start:
        end = start + timedelta(seconds=1)
    span = (end - start).total_seconds()
    plot_x0, plot_x1 = LABEL_W, width - 12
    plot_w = plot_x1 - plot_x0
    node_ids = list(order) + [a.node_id for a in attempts if a.node_id not in order]
    node_ids = list(dict.fromkeys(node_ids))
    row_h = 22 if len(node_ids) <= 60 else 14
    top = AXIS_H

    def x_of(at: datetime | None) -> float:
        offset = ((at or end) - start).total_seconds()
        return plot_x0 + min(max(offset / span, 0.0), 1.0) * plot_w

    def segment(
        a: float, b: float, min_w: float = 2.0, lo: float = plot_x0, hi: float = plot_x1
    ) -> tuple[float, float]:
        """[a, b] inside [lo, hi], at least `min_w` wide (or as wide as [lo, hi] allows)."""
        a, b = min(max(a, lo), hi), min(max(b, lo), hi)
        width_ = max(b - a, 0.0)
        if width_ < min_w:
            width_ = min(min_w, hi - lo)
            a = max(min(a, hi - width_), lo)
        return a, width_

    def call_bars(attempt: Attempt, run_x: float, run_w: float) -> list[CallBar]:
        """The attempt's calls inside its run segment, laid out from the last one back: each
        ends when its event was written (or where the next one begins, if earlier)."""
        if attempt.kind != "task" or attempt.started_at is None or not attempt.calls:
            return []
        begin, limit = attempt.started_at, attempt.finished_at or end
        placed = []
        for call in reversed(attempt.calls):
            stop = max(min(call.at, limit), begin)
            start_ = max(stop - timedelta(seconds=call.latency), begin)
            limit = start_
            x, w = segment(x_of(start_), x_of(stop), 2.0, run_x, run_x + run_w)
            placed.append(CallBar(call, x, w, start_, stop))
        placed.reverse()
        return placed

    rows = [
        GanttRow(node_id, row_status.get(node_id, "pending"), top + i * row_h, row_h)
        for i, node_id in enumerate(node_ids)
    ]
    index = {node_id: i for i, node_id in enumerate(node_ids)}
    bars = []
    for attempt in attempts:
        row = index[attempt.node_id]
        wait_x = wait_w = 0.0
        if attempt.kind == "task" and attempt.queued_at is not None:
            wait_end = attempt.started_at or attempt.finished_at
            wait_x, wait_w = segment(x_of(attempt.queued_at), x_of(wait_end))
        if attempt.kind == "task" and attempt.started_at is None:
            run_x, run_w = wait_x + wait_w, 0.0  # never started: only the wait shows
        else:
            begin = attempt.started_at or attempt.finished_at
            min_w = 3.0 if attempt.kind == "marker" else 2.0
            run_x, run_w = segment(x_of(begin), x_of(attempt.finished_at), min_w)
        bars.append(
            GanttBar(
                attempt=attempt,
                row=row,
                y=top + row * row_h + 3,
                h=row_h - 6,
                wait_x=wait_x,
                wait_w=wait_w,
                run_x=run_x,
                run_w=run_w,
                calls=call_bars(attempt, run_x, run_w),
            )
        )
    step = tick_step(span)
    ticks = []
    count = int(span / step)
    for i in range(count + 1):
        seconds = i * step
        ticks.append((plot_x0 + seconds / span * plot_w, format_offset(seconds)))
    height = top + len(node_ids) * row_h + AXIS_H
    return GanttLayout(
        rows=rows,
        bars=bars,
        ticks=ticks,
        start=start,
        end=end,
        plot_x0=plot_x0,
        plot_x1=plot_x1,
        top=top,
        width=width,
        height=height,
    )
