"""The console's picture geometry, without a database: DAG layers and positions, timeline bars
from run events, and the SVG that draws them."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sparkops.console import layout
from sparkops.console.layout import (
    MAX_ROWS,
    dag_layout,
    format_offset,
    gantt_layout,
    step_attempts,
    tick_step,
)
from sparkops.console.svg import dag_svg, gantt_svg, stacked_bars_svg
from sparkops.console.views import TYPE_LEGEND

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def node(id: str, *deps: str, type: str = "transform", **extra):
    return {"id": id, "type": type, "depends_on": list(deps), **extra}


def overlaps(a, b) -> bool:
    return a.x < b.right and b.x < a.right and a.y < b.bottom and b.y < a.bottom


def random_dag(size: int, seed: int) -> dict:
    rng = random.Random(seed)
    nodes = []
    for i in range(size):
        earlier = [f"n{j}" for j in range(i)]
        deps = rng.sample(earlier, k=min(len(earlier), rng.choice([0, 1, 1, 2, 3])))
        nodes.append(node(f"n{i}", *deps, type=rng.choice(["agent", "tool", "transform"])))
    for n in nodes:
        if n["type"] == "agent":
            n["agent"] = "researcher"
        if n["type"] == "tool":
            n["tool"] = "http-get"
    return {"nodes": nodes}


# --- DAG ----------------------------------------------------------------------------------------


def test_layers_are_topological_ranks_left_to_right():
    definition = {
        "nodes": [
            node("a"),
            node("b", "a"),
            node("c", "a"),
            node("d", "b", "c"),
            node("e"),
        ]
    }
    dag = dag_layout(definition)
    assert dag.direction == "LR"
    assert dag.layers == [["a", "e"], ["b", "c"], ["d"]]
    x = {n.id: n.x for n in dag.nodes}
    assert x["a"] == x["e"] < x["b"] == x["c"] < x["d"]
    assert [n.layer for n in dag.nodes] == [0, 1, 1, 2, 0]
    for edge in dag.edges:  # every edge runs left to right, from right side to left side
        assert edge.x1 == dag.node(edge.source).right
        assert edge.x2 == dag.node(edge.target).x
        assert edge.x2 > edge.x1


def test_barycenter_ordering_keeps_children_next_to_their_parents():
    # Two chains declared interleaved: the second layer follows the first layer's order.
    definition = {"nodes": [node("p1"), node("p2"), node("c2", "p2"), node("c1", "p1")]}
    dag = dag_layout(definition)
    assert dag.layers == [["p1", "p2"], ["c1", "c2"]]
    assert dag.node("c1").y == dag.node("p1").y
    assert dag.node("c2").y == dag.node("p2").y


def test_fifty_node_dags_have_no_overlapping_nodes():
    for seed, direction in itertools.product(range(15), ("LR", "TB", "auto")):
        dag = dag_layout(random_dag(50, seed), direction)
        assert len(dag.nodes) == 50
        for a, b in itertools.combinations(dag.nodes, 2):
            assert not overlaps(a, b), (seed, direction, a.id, b.id)
        for n in dag.nodes:
            assert n.x >= 0 and n.right <= dag.width
            assert n.y >= 0 and n.bottom <= dag.height
        for edge in dag.edges:  # dependencies always sit in an earlier band
            if dag.direction == "LR":
                assert edge.x1 < edge.x2
            else:
                assert edge.y1 < edge.y2 and edge.vertical


def test_a_wide_layer_wraps_into_bands():
    definition = {"nodes": [node("root")] + [node(f"leaf{i}", "root") for i in range(50)]}
    for direction, limit, key in (("LR", MAX_ROWS, "x"), ("TB", layout.MAX_COLS, "y")):
        dag = dag_layout(definition, direction)
        bands: dict[float, int] = {}
        for n in dag.nodes:
            bands[getattr(n, key)] = bands.get(getattr(n, key), 0) + 1
        root = getattr(dag.node("root"), key)
        assert bands.pop(root) == 1
        assert max(bands.values()) <= limit and sum(bands.values()) == 50
        for a, b in itertools.combinations(dag.nodes, 2):
            assert not overlaps(a, b)
    lr = dag_layout(definition, "LR")  # 5 columns of 10: about a screen tall
    assert lr.height < (MAX_ROWS + 1) * (layout.NODE_H + layout.ROW_GAP) + 2 * layout.PAD


def test_a_shallow_graph_reads_left_to_right_a_deep_one_top_to_bottom():
    chain = {"nodes": [node("n0")] + [node(f"n{i}", f"n{i - 1}") for i in range(1, 50)]}
    deep = dag_layout(chain)
    assert deep.direction == "TB"
    assert len({n.x for n in deep.nodes}) == 1  # one column, 50 rows down the page
    assert deep.width == layout.NODE_W + 2 * layout.PAD
    flat = dag_layout(chain, "LR")
    assert len({n.y for n in flat.nodes}) == 1 and flat.width > 10_000
    short = dag_layout({"nodes": [node("a"), node("b", "a"), node("c", "b")]})
    assert short.direction == "LR"


def test_nodes_carry_type_reference_and_conditions():
    definition = {
        "nodes": [
            node("research", type="agent", agent="researcher", prompt="x"),
            node("fetch", type="tool", tool="http-get"),
            node("review", "research", type="approval"),
            node(
                "publish",
                "review",
                "fetch",
                type="tool",
                tool="post",
                when="{{ steps.research.output.confidence > 0.5 }}",
            ),
        ]
    }
    dag = dag_layout(definition)
    assert (dag.node("research").type, dag.node("research").ref) == ("agent", "researcher")
    assert dag.node("fetch").ref == "http-get"
    conditional = {(e.source, e.target) for e in dag.edges if e.conditional}
    assert conditional == {("review", "publish"), ("fetch", "publish")}
    assert all(e.when.startswith("{{ steps.research") for e in dag.edges if e.conditional)

    svg = str(dag_svg(dag))
    assert svg.count('class="node"') == 4
    assert 'data-node="research" data-type="agent"' in svg
    assert "<polygon" in svg  # the approval hexagon
    assert svg.count('data-conditional="1"') == 2
    assert "only when {{ steps.research.output.confidence &gt; 0.5 }}" in svg


def test_a_switch_is_an_octagon_with_conditional_edges_to_its_branches():
    definition = {
        "nodes": [
            node("route", type="switch", cases=[{"when": "{{ input.a }}", "to": "x"}], default="y"),
            node("x", "route"),
            node("y", "route"),
            node("z", "x", "y"),
        ]
    }
    dag = dag_layout(definition)
    conditional = {(e.source, e.target): e.when for e in dag.edges if e.conditional}
    assert conditional == {
        ("route", "x"): "switch route picks it",
        ("route", "y"): "switch route picks it",
    }
    svg = str(dag_svg(dag))
    start = svg.index('data-node="route" data-type="switch"')
    shape = svg[start : svg.index("</g>", start)]
    assert shape.count("<polygon") == 1 and shape.split('<polygon points="')[1].count(",") == 8
    assert "only when switch route picks it" in svg
    assert {"type": "switch", "fill": "#ccfbf1", "stroke": "#0d9488"} in TYPE_LEGEND


def test_a_map_is_a_stack_of_cards_naming_what_runs_per_item():
    definition = {
        "nodes": [
            node("m", type="map", items="{{ input.xs }}", node={"type": "tool", "tool": "fetch"}),
            node("n", type="map", items=[1], node={"type": "transform", "output": 1}),
        ]
    }
    dag = dag_layout(definition)
    assert (dag.node("m").ref, dag.node("n").ref) == ("each: fetch", "each: transform")
    svg = str(dag_svg(dag))
    start = svg.index('data-node="m" data-type="map"')
    shape = svg[start : svg.index("</g>", start)]
    assert shape.count("<rect") == 3
    assert {"type": "map", "fill": "#fce7f3", "stroke": "#db2777"} in TYPE_LEGEND


def test_a_workflow_node_is_a_subroutine_box_naming_its_workflow():
    dag = dag_layout({"nodes": [node("sub", type="workflow", workflow="research")]})
    assert dag.node("sub").ref == "research"
    svg = str(dag_svg(dag))
    start = svg.index('data-node="sub" data-type="workflow"')
    shape = svg[start : svg.index("</g>", start)]
    assert shape.count("<rect") == 1 and shape.count("<line") == 2
    assert {"type": "workflow", "fill": "#e0e7ff", "stroke": "#4f46e5"} in TYPE_LEGEND


def test_a_loop_is_a_box_in_a_box_naming_what_it_repeats():
    body = {"type": "agent", "agent": "critic", "prompt": "x"}
    dag = dag_layout({"nodes": [node("refine", type="loop", node=body, until="{{ true }}")]})
    assert dag.node("refine").ref == "repeat: critic"
    svg = str(dag_svg(dag))
    start = svg.index('data-node="refine" data-type="loop"')
    shape = svg[start : svg.index("</g>", start)]
    assert shape.count("<rect") == 2 and 'stroke-dasharray="3 2"' in shape
    assert {"type": "loop", "fill": "#ecfccb", "stroke": "#65a30d"} in TYPE_LEGEND


def test_svg_escapes_every_text():
    definition = {"nodes": [node("a", description='<script>alert("x")</script>')]}
    svg = str(dag_svg(dag_layout(definition)))
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg


# --- timeline -----------------------------------------------------------------------------------


def ev(seconds, node_id, status=None, attempt=None, type="step.status", **payload):
    if status is not None:
        payload["status"] = status
    return {
        "type": type,
        "node_id": node_id,
        "attempt": attempt,
        "payload": payload,
        "created_at": at(seconds),
    }


def test_attempts_from_events_retry_approval_skip_and_reuse():
    events = [
        ev(0, "", type="run.status", status="pending"),
        ev(0, "cached", "succeeded", reused_from="parent-run"),
        ev(1, "fetch", "queued", 1),
        ev(2, "fetch", "running", 1),
        ev(2.5, "fetch", type="llm.call", attempt=1, input_tokens=10, output_tokens=5, cost="0.01"),
        ev(
            3,
            "fetch",
            "queued",
            1,
            retry=True,
            error={"type": "tool_error", "message": "HTTP 503"},
            delay_seconds=1.5,
        ),
        ev(4.5, "fetch", "running", 2),
        ev(4.6, "fetch", type="llm.call", attempt=2, input_tokens=7, output_tokens=3, cost="0.02"),
        ev(5, "fetch", "succeeded", 2, duration_ms=500),
        ev(5, "review", "waiting_approval"),
        ev(9, "review", type="approval.decided", approved=True, by="ops@x", comment="ok"),
        ev(9, "review", "succeeded"),
        ev(9, "later", "skipped", reason="`when` is false"),
        ev(10, "lost", "queued", 1),
        ev(11, "lost", "running", 1),
        ev(20, "lost", "queued", 1, recovered=True, reason="heartbeat lost"),
        ev(21, "lost", "running", 2),
    ]
    bars = step_attempts(events)
    by = {(b.node_id, b.attempt, b.kind): b for b in bars}

    first, second = by[("fetch", 1, "task")], by[("fetch", 2, "task")]
    assert (first.status, first.queued_at, first.started_at, first.finished_at) == (
        "failed",
        at(1),
        at(2),
        at(3),
    )
    assert first.error == "HTTP 503"
    assert (first.input_tokens, first.output_tokens, first.cost) == (10, 5, Decimal("0.01"))
    assert (second.status, second.queued_at, second.started_at, second.finished_at) == (
        "succeeded",
        at(3),
        at(4.5),
        at(5),
    )
    assert second.note == "retry after 1.5 s backoff"
    assert (second.input_tokens, second.cost) == (7, Decimal("0.02"))

    review = by[("review", None, "approval")]
    assert (review.started_at, review.finished_at, review.status) == (at(5), at(9), "succeeded")
    assert review.note == "approved by ops@x: ok"

    assert by[("later", None, "marker")].status == "skipped"
    assert by[("cached", None, "marker")].note == "reused from run parent-run"

    lost1, lost2 = by[("lost", 1, "task")], by[("lost", 2, "task")]
    assert (lost1.status, lost1.error, lost1.finished_at) == ("lost", "heartbeat lost", at(20))
    assert lost2.open and lost2.status == "running" and lost2.finished_at is None


def test_an_agent_step_paused_for_a_tool_call_then_approved():
    events = [
        ev(1, "think", "queued", 1),
        ev(2, "think", "running", 1),
        ev(2.5, "think", type="llm.call", attempt=1, input_tokens=10, output_tokens=5, cost="0.01"),
        ev(3, "think", "waiting_approval", 1),
        ev(8, "think", type="approval.decided", approved=True, by="ops@x", comment=""),
        ev(8, "think", "queued", 2),
        ev(9, "think", "running", 2),
        ev(9.5, "think", type="llm.call", attempt=2, input_tokens=7, output_tokens=3, cost="0.02"),
        ev(10, "think", "succeeded", 2),
    ]
    first, approval, second = step_attempts(events)
    assert (first.kind, first.attempt, first.status, first.finished_at) == (
        "task",
        1,
        "waiting_approval",
        at(3),
    )
    assert not first.open and first.input_tokens == 10
    assert (approval.kind, approval.status, approval.started_at, approval.finished_at) == (
        "approval",
        "succeeded",
        at(3),
        at(8),
    )
    assert approval.note == "approved by ops@x"
    assert (second.attempt, second.status, second.queued_at, second.finished_at) == (
        2,
        "succeeded",
        at(8),
        at(10),
    )
    assert second.input_tokens == 7


def test_bars_stay_within_the_axis_and_are_never_invisible():
    events = [
        ev(-5, "early", "queued", 1),  # before the axis starts
        ev(-4, "early", "running", 1),
        ev(0.0001, "instant", "queued", 1),
        ev(0.0001, "instant", "running", 1),
        ev(0.0002, "instant", "succeeded", 1),
        ev(99, "late", "queued", 1),  # still running past the axis end
        ev(100, "late", "running", 1),
        ev(10, "end", "skipped"),  # a marker right at the end
    ]
    bars = step_attempts(events)
    gantt = gantt_layout(
        bars, order=["early", "instant", "late", "end"], row_status={}, start=at(0), end=at(10)
    )
    assert len(gantt.bars) == 4
    for bar in gantt.bars:
        for x, w in ((bar.wait_x, bar.wait_w), (bar.run_x, bar.run_w)):
            if w:
                assert gantt.plot_x0 <= x and x + w <= gantt.plot_x1 + 1e-6
                assert w >= 2
    instant = next(b for b in gantt.bars if b.attempt.node_id == "instant")
    assert instant.run_w == 2
    assert [t[1] for t in gantt.ticks][:3] == ["0", "+2s", "+4s"]
    assert gantt.ticks[-1][0] == gantt.plot_x1


def test_five_hundred_bars_on_fifty_rows():
    events = []
    for n in range(50):
        for attempt in range(1, 11):
            base = n * 2 + attempt * 10
            if attempt == 1:  # later attempts are queued by the retry event before them
                events.append(ev(base, f"step{n}", "queued", attempt))
            events.append(ev(base + 1, f"step{n}", "running", attempt))
            if attempt < 10:
                events.append(ev(base + 5, f"step{n}", "queued", attempt, retry=True, error="boom"))
            else:
                events.append(ev(base + 5, f"step{n}", "succeeded", attempt))
    bars = step_attempts(events)
    # A retry's "queued" event closes one attempt and opens the next: 10 bars per step.
    assert len(bars) == 500
    gantt = gantt_layout(
        bars, order=[f"step{n}" for n in range(50)], row_status={}, start=at(0), end=at(300)
    )
    assert len(gantt.rows) == 50 and gantt.rows[0].h == 22
    assert gantt.height == gantt.top + 50 * 22 + layout.AXIS_H
    for bar in gantt.bars:
        assert gantt.plot_x0 <= bar.run_x <= bar.run_x + bar.run_w <= gantt.plot_x1 + 1e-6
    svg = str(gantt_svg(gantt))
    assert svg.count('class="bar"') == 500
    assert 'data-node="step3" data-attempt="10" data-kind="task" data-status="succeeded"' in svg


def test_ticks_and_offsets():
    assert tick_step(10) == 2
    assert tick_step(0.05) == 0.01
    assert tick_step(3600) == 600
    assert format_offset(0) == "0"
    assert format_offset(0.25) == "+250ms"
    assert format_offset(1.5) == "+1.5s"
    assert format_offset(120) == "+2m"
    assert format_offset(5400) == "+1h30m"


def test_bar_titles_show_duration_tokens_cost_and_error():
    events = [
        ev(0, "a", "queued", 1),
        ev(0.5, "a", "running", 1),
        ev(1, "a", type="llm.call", attempt=1, input_tokens=120, output_tokens=40, cost="0.0012"),
        ev(3, "a", "failed", 1, error={"message": "model refused"}),
    ]
    gantt = gantt_layout(
        step_attempts(events), order=["a"], row_status={"a": "failed"}, start=at(0), end=at(3)
    )
    svg = str(gantt_svg(gantt))
    assert "waited 500 ms in the queue, ran 2.5 s" in svg
    assert "tokens 120 in / 40 out · cost $0.0012" in svg
    assert "error: model refused" in svg


def test_stacked_bars_chart():
    svg = str(
        stacked_bars_svg(
            [("10:00", {"succeeded": 3, "failed": 1}), ("11:00", {})],
            order=["succeeded", "failed"],
        )
    )
    assert svg.count('class="bucket"') == 2
    assert 'data-key="succeeded" data-value="3"' in svg
    assert 'data-key="failed" data-value="1"' in svg
    assert "10:00: succeeded 3, failed 1" in svg


SVG = "{http://www.w3.org/2000/svg}"


def rects_of(group):
    return [
        (float(r.get("x")), float(r.get("width")), float(r.get("y")), float(r.get("height")))
        for r in group.iter(f"{SVG}rect")
    ]


def call_events():
    """An agent step (model, tool, model), a tool step whose call failed, a step still running
    with a call made, a zero-length step, a step written all at once (three calls with one
    timestamp, as an inline step writes them), and events outside the run's span."""
    llm = {"type": "llm.call", "model": "gpt-test-1", "input_tokens": 50, "output_tokens": 9}
    return [
        ev(0, "think", "queued", 1),
        ev(0.5, "think", "running", 1),
        ev(2.5, "think", attempt=1, **llm, latency_ms=2000, cost="0.001", tool_calls=["lookup"]),
        ev(3.0, "think", attempt=1, type="tool.call", tool="lookup", ok=True, latency_ms=400),
        ev(4.0, "think", attempt=1, **llm, latency_ms=900, cost="0.002", finish_reason="stop"),
        ev(4.1, "think", "succeeded", 1),
        ev(4.2, "fetch", "queued", 1),
        ev(4.3, "fetch", "running", 1),
        # A latency longer than the attempt itself: clipped to the attempt.
        ev(
            5.0,
            "fetch",
            attempt=1,
            type="tool.call",
            tool="flaky",
            ok=False,
            latency_ms=9000,
            http_status=503,
            error="HTTP 503 from upstream",
        ),
        ev(5.1, "fetch", "failed", 1, error={"message": "HTTP 503"}),
        ev(6.0, "slow", "queued", 1),
        ev(6.2, "slow", "running", 1),
        # Written after the axis ends (the page's "now" was read before the events).
        ev(10.5, "slow", attempt=1, type="tool.call", tool="lookup", ok=True, latency_ms=300),
        ev(7.0, "instant", "queued", 1),
        ev(7.0, "instant", "running", 1),
        ev(7.0, "instant", "succeeded", 1),
        ev(8.0, "batch", "queued", 1),
        ev(8.0, "batch", "running", 1),
        *[
            ev(9.0, "batch", attempt=1, type="tool.call", tool=f"t{i}", ok=True, latency_ms=200)
            for i in range(3)
        ],
        ev(9.0, "batch", "succeeded", 1),
        ev(10, "end", "skipped"),
    ]


def test_calls_are_sub_bars_inside_their_attempt_and_every_bar_inside_the_plot():
    import xml.etree.ElementTree as ET

    bars = step_attempts(call_events())
    think = next(b for b in bars if b.node_id == "think")
    assert [(c.kind, c.name) for c in think.calls] == [
        ("llm", "gpt-test-1"),
        ("tool", "lookup"),
        ("llm", "gpt-test-1"),
    ]
    order = ["think", "fetch", "slow", "instant", "batch", "end"]
    gantt = gantt_layout(bars, order=order, row_status={}, start=at(0), end=at(10))
    by_node = {bar.attempt.node_id: bar for bar in gantt.bars}
    # The model call that took 2 s ends when its event was written and starts 2 s before.
    first = by_node["think"].calls[0]
    assert (first.start, first.end) == (at(0.5), at(2.5))
    # Three calls written at once are laid back to back, ending at that moment.
    batch = by_node["batch"].calls
    assert [c.end for c in batch] == [at(8.6), at(8.8), at(9.0)]
    for bar in gantt.bars:
        for call in bar.calls:
            assert bar.run_x - 1e-6 <= call.x and call.x + call.w <= bar.run_x + bar.run_w + 1e-6
            assert call.w >= min(2, bar.run_w)
    running = by_node["slow"]
    assert running.attempt.open and running.run_x + running.run_w == gantt.plot_x1
    assert running.calls[0].x + running.calls[0].w <= gantt.plot_x1

    svg = str(gantt_svg(gantt, now_line=True))
    root = ET.fromstring(svg)
    x0, x1 = float(root.get("data-plot-x0")), float(root.get("data-plot-x1"))
    plot = root.find(f"{SVG}rect[@class='plot']")
    assert (float(plot.get("x")), float(plot.get("x")) + float(plot.get("width"))) == (x0, x1)
    groups = root.findall(f".//{SVG}g[@class='bar']")
    assert len(groups) == len(gantt.bars) == 6
    for group in groups:
        for x, w, _y, _h in rects_of(group):
            assert x0 - 1e-6 <= x and x + w <= x1 + 1e-6, (group.get("data-node"), x, w)
            assert w >= 2
    calls = root.findall(f".//{SVG}g[@class='call']")
    for group in calls:
        assert rects_of(group)[0][3] > 0 and group.find(f"{SVG}title").text
    assert [c.get("data-kind") for c in calls].count("llm") == 2
    assert len(calls) == 3 + 1 + 1 + 3
    failed = root.find(f".//{SVG}g[@class='call'][@data-ok='0']")
    title = failed.find(f"{SVG}title").text
    assert "tool call flaky" in title and "failed" in title and "HTTP 503" in title
    model = calls[0].find(f"{SVG}title").text
    assert "model call gpt-test-1" in model and "took 2.0 s" in model
    assert "tokens 50 in / 9 out · cost $0.001" in model and "asked for: lookup" in model
    think_title = root.find(f".//{SVG}g[@class='bar'][@data-node='think']/{SVG}title").text
    assert "2 model calls, 1 tool call" in think_title
    # The last tick's label ends at its tick instead of running out of the picture.
    last = [t for t in root.iter(f"{SVG}text") if t.get("class") == "tick"][-1]
    assert last.get("text-anchor") == "end" and float(last.get("x")) <= x1


def test_a_marker_at_the_very_end_stays_inside_the_plot():
    bars = step_attempts([ev(5, "late", "skipped"), ev(5, "late2", "cancelled")])
    gantt = gantt_layout(bars, order=["late", "late2"], row_status={}, start=at(0), end=at(5))
    for bar in gantt.bars:
        assert bar.run_w == 3 and bar.run_x + bar.run_w <= gantt.plot_x1


def chart(buckets, **kwargs):
    import xml.etree.ElementTree as ET

    return ET.fromstring(str(stacked_bars_svg(buckets, **kwargs)))


def texts(root, cls):
    return [t.text for t in root.iter(f"{SVG}text") if t.get("class") == cls]


def test_a_chart_with_one_day_of_data_is_readable():
    days = [(f"Nov {d:02d}", {}) for d in range(1, 30)] + [("Nov 30", {"succeeded": 1})]
    root = chart(days, order=["succeeded", "failed"], label_every=5)
    seg = root.find(f".//{SVG}rect[@class='seg']")
    x, w, h = float(seg.get("x")), float(seg.get("width")), float(seg.get("height"))
    x0, x1 = float(root.get("data-plot-x0")), float(root.get("data-plot-x1"))
    assert x0 <= x and x + w <= x1 and w >= 10
    assert h == 180 - 14 - 24  # one run is the whole height: the axis tops out at 1
    # Whole-number gridlines for counts (no "0.5 runs"), the bar's date and value written.
    assert texts(root, "y-label") == ["0", "1"]
    assert "Nov 30" in texts(root, "x-label") and texts(root, "value") == ["1"]
    labels = [float(t.get("x")) for t in root.iter(f"{SVG}text") if t.get("class") == "x-label"]
    assert all(b - a >= 34 for a, b in itertools.pairwise(sorted(labels)))
    assert root.get("data-empty") is None

    # One bucket only: a bar of sensible width in the middle, not the whole chart.
    root = chart([("Dec 04", {"failed": 3})], order=["failed"])
    seg = root.find(f".//{SVG}rect[@class='seg']")
    assert float(seg.get("width")) == 48
    assert abs(float(seg.get("x")) + 24 - (44 + (560 - 44 - 8) / 2)) < 1
    assert texts(root, "y-label") == ["0", "5"] and texts(root, "value") == ["3"]

    # Small spend keeps its digits on the axis and on the bar.
    root = chart([("Dec 03", {}), ("Dec 04", {"spend": 0.0018})], order=["spend"], unit="$")
    assert texts(root, "y-label") == ["$0", "$0.001", "$0.002"]
    assert texts(root, "value") == ["$0.0018"]


def test_a_chart_without_data_says_so():
    root = chart([(f"{h:02d}:00", {}) for h in range(24)], order=["succeeded"], empty="No runs.")
    assert root.get("data-empty") == "1"
    assert texts(root, "empty") == ["No runs."]
    assert root.find(f".//{SVG}rect[@class='seg']") is None
    assert texts(root, "y-label") == ["0"]  # the baseline is drawn, no made-up scale
    assert texts(root, "x-label")[0] == "00:00" and len(texts(root, "x-label")) >= 6
