"""`map` nodes on a real Celery worker: one step row per item, outputs in input order,
`max_concurrency`, per-item retries, fail_fast and collect, the item limit, cancel and a
resume from failure that re-runs only the failed items."""

from __future__ import annotations

import threading

import pytest

from runs import services
from runs.models import Run
from runs.tests.conftest import events_of, http_tool
from runs.tests.factories import make_workflow, transform
from sparkops.errors import InvalidInput
from sparkops.testing.engine import wait_for_run, wait_until

pytestmark = pytest.mark.usefixtures("engine")

FAST_RETRY = {"max_attempts": 3, "backoff_seconds": 0.05, "max_backoff_seconds": 0.1}


def start(workflow, actor, input=None):
    return services.run_create(workflow=workflow, input=input or {}, actor=actor)


def map_node(id, items, node, *depends_on, **fields):
    return {
        "id": id,
        "type": "map",
        "items": items,
        "node": node,
        "depends_on": list(depends_on),
        **fields,
    }


def items_of(run, map_id="m"):
    return list(
        run.steps.filter(item_index__isnull=False, node_id__startswith=f"{map_id}[")
        .order_by("item_index")
        .values_list("node_id", "item_index", "status", "attempt")
    )


def test_a_map_of_transforms_runs_each_item_and_keeps_input_order(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("words", "{{ input.text.split(' ') }}"),
            map_node(
                "m",
                "{{ steps.words.output }}",
                {"type": "transform", "output": "{{ item_index }}:{{ item | upper }}"},
                "words",
            ),
            transform("joined", "{{ steps.m.output | join(',') }}", "m"),
        ],
        output="{{ steps.joined.output }}",
    )
    run = wait_for_run(start(wf, cast.owner, {"text": "map every word"}).pk)
    assert run.status == "succeeded", run.error
    assert run.output == "0:MAP,1:EVERY,2:WORD"
    assert items_of(run) == [
        ("m[0]", 0, "succeeded", 1),
        ("m[1]", 1, "succeeded", 1),
        ("m[2]", 2, "succeeded", 1),
    ]
    m = run.steps.get(node_id="m")
    assert (m.status, m.input) == ("succeeded", {"items": 3, "reused": 0})
    assert [e.payload["status"] for e in events_of(run, "step.status", "m[1]")] == [
        "queued",
        "running",
        "succeeded",
    ]
    assert m.item_index is None and run.steps.get(node_id="m[2]").item == "word"


def test_a_map_of_http_tools_holds_max_concurrency_and_retries_each_item(cast, tool_server):
    lock = threading.Lock()
    state = {"now": 0, "peak": 0, "calls": 0}
    release = threading.Event()

    def handler(hit):
        with lock:
            state["now"] += 1
            state["calls"] += 1
            state["peak"] = max(state["peak"], state["now"])
            first_two = state["calls"] <= 2
        try:
            if first_two:
                return 503, {"error": "busy"}
            tool_server.hold(0.2, release)
            return 200, {"n": hit.body["n"] * 10}
        finally:
            with lock:
                state["now"] -= 1

    http_tool(cast.project, cast.owner, "times-ten", tool_server.route("/x", handler))
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            map_node(
                "m",
                "{{ input.numbers }}",
                {"type": "tool", "tool": "times-ten", "args": {"n": "{{ item }}"}},
                max_concurrency=2,
                retry=FAST_RETRY,
            )
        ],
        output="{{ steps.m.output | map(attribute='n') | list }}",
    )
    run = wait_for_run(start(wf, cast.owner, {"numbers": [1, 2, 3, 4, 5]}).pk)
    assert run.status == "succeeded", run.error
    assert run.output == [10, 20, 30, 40, 50]
    assert state["peak"] == 2
    assert state["calls"] == 7  # five items, two of them tried again
    retried = [row for row in items_of(run) if row[3] > 1]
    assert retried and all(status == "succeeded" for _, _, status, _ in items_of(run))
    assert sum(attempt for *_, attempt in items_of(run)) == 7


def test_fail_fast_fails_the_map_and_cancels_the_rest(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            map_node(
                "m",
                [1, 0, 2, 3],
                {"type": "transform", "output": "{{ 10 // item }}"},
                max_concurrency=1,
            ),
            transform("after", 1, "m"),
        ],
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "failed"
    m = run.steps.get(node_id="m")
    assert m.error["type"] == "item_failed" and m.error["item_index"] == 1
    assert m.error["message"].startswith("Item 1 of map 'm' failed:")
    assert run.error["step"] == "m"
    assert [row[2] for row in items_of(run)] == ["succeeded", "failed", "cancelled", "cancelled"]
    assert run.steps.get(node_id="after").status == "cancelled"


def test_collect_runs_every_item_and_leaves_null_for_the_failed(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            map_node(
                "m",
                [1, 0, 5],
                {"type": "transform", "output": "{{ 10 // item }}"},
                on_item_failure="collect",
            )
        ],
        output="{{ steps.m.output }}",
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "succeeded", run.error
    assert run.output == [10, None, 2]
    assert [row[2] for row in items_of(run)] == ["succeeded", "failed", "succeeded"]
    done = [e.payload for e in events_of(run, "step.status", "m")][-1]
    assert done == {"status": "succeeded", "items": 3, "failed_items": 1}


def test_the_item_limit(cast, settings):
    settings.SPARKOPS_MAP_MAX_ITEMS = 3
    with pytest.raises(InvalidInput) as exc_info:
        make_workflow(
            cast.project,
            cast.owner,
            [map_node("m", [1, 2, 3, 4], {"type": "transform", "output": "{{ item }}"})],
        )
    assert exc_info.value.errors == {
        "definition.nodes[0].items": [
            "Map 'm' has 4 items; at most 3 are allowed (SPARKOPS_MAP_MAX_ITEMS)."
        ]
    }
    wf = make_workflow(
        cast.project,
        cast.owner,
        [map_node("m", "{{ input.xs }}", {"type": "transform", "output": "{{ item }}"})],
    )
    run = wait_for_run(start(wf, cast.owner, {"xs": [1, 2, 3, 4]}).pk)
    assert run.status == "failed"
    assert run.error["step_error"] == {
        "type": "too_many_items",
        "message": "Map 'm' has 4 items; at most 3 are allowed (SPARKOPS_MAP_MAX_ITEMS).",
    }
    assert items_of(run) == []
    not_a_list = wait_for_run(start(wf, cast.owner, {"xs": "abc"}).pk)
    assert not_a_list.error["step_error"]["type"] == "map_items"


def test_cancel_stops_the_items_in_flight(cast, tool_server):
    release = threading.Event()
    http_tool(
        cast.project, cast.owner, "slow", tool_server.route("/slow", tool_server.slow(20, release))
    )
    wf = make_workflow(
        cast.project,
        cast.owner,
        [map_node("m", [1, 2, 3, 4], {"type": "tool", "tool": "slow"}, max_concurrency=2)],
    )
    run = start(wf, cast.owner)
    wait_until(lambda: len(tool_server.calls("/slow")) == 2, what="two items calling")
    services.run_cancel(run=run, actor=cast.owner)
    release.set()
    run = Run.objects.get(pk=run.pk)
    assert run.status == "cancelled"
    assert [row[2] for row in items_of(run)] == ["cancelled"] * 4
    assert run.steps.get(node_id="m").status == "cancelled"
    assert len(tool_server.calls("/slow")) == 2


def test_resume_from_failure_reruns_only_the_failed_items(cast, tool_server):
    seen = []

    def handler(hit):
        n = hit.body["n"]
        seen.append(n)
        if n == 2 and seen.count(2) == 1:  # the first call for item 1 fails for good
            tool_server.hold(0.3)
            return 404, {"error": "not yet"}
        return 200, {"n": n}

    http_tool(cast.project, cast.owner, "echo-n", tool_server.route("/n", handler))
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            map_node(
                "m",
                "{{ input.ns }}",
                {"type": "tool", "tool": "echo-n", "args": {"n": "{{ item }}"}},
                max_concurrency=3,
            ),
            transform("after", "{{ steps.m.output | length }}", "m"),
        ],
        output="{{ steps.after.output }}",
    )
    failed = wait_for_run(start(wf, cast.owner, {"ns": [1, 2, 3]}).pk)
    assert failed.status == "failed"
    assert [row[2] for row in items_of(failed)] == ["succeeded", "failed", "succeeded"]
    retried = wait_for_run(services.run_retry(run=failed, actor=cast.owner, from_failure=True).pk)
    assert retried.status == "succeeded", retried.error
    assert retried.output == 3
    assert sorted(seen) == [1, 2, 2, 3]  # only the failed item called again
    reused = retried.steps.filter(item_index__isnull=False, reused_from__isnull=False)
    assert sorted(reused.values_list("item_index", flat=True)) == [0, 2]
    assert retried.steps.get(node_id="m").input == {"items": 3, "reused": 2}
    assert retried.steps.get(node_id="m").output == [{"n": 1}, {"n": 2}, {"n": 3}]
    reused_event = {"status": "succeeded", "reused_from": str(failed.pk)}
    assert [e.payload for e in events_of(retried, "step.status", "m[0]")] == [reused_event]
    assert [e.payload["status"] for e in events_of(retried, "step.status", "m[1]")] == [
        "queued",
        "running",
        "succeeded",
    ]
