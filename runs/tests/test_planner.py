"""The planner's rules, without a database or Celery."""

from runs.engine.planner import NodeSpec, plan


def n(id, *deps, cof=False, type="tool"):
    return NodeSpec(id=id, type=type, depends_on=tuple(deps), continue_on_failure=cof)


DIAMOND = [n("a"), n("b", "a"), n("c", "a"), n("d", "b", "c")]


def test_roots_are_ready_first():
    result = plan(DIAMOND, dict.fromkeys("abcd", "pending"))
    assert result.ready == ["a"]
    assert result.run_status == "running"


def test_parallel_branches_are_ready_together():
    result = plan(DIAMOND, {"a": "succeeded", "b": "pending", "c": "pending", "d": "pending"})
    assert result.ready == ["b", "c"]


def test_join_waits_for_every_upstream():
    result = plan(DIAMOND, {"a": "succeeded", "b": "succeeded", "c": "running", "d": "pending"})
    assert result.ready == []
    assert result.run_status == "running"


def test_node_downstream_of_only_skipped_nodes_is_skipped_transitively():
    nodes = [n("a"), n("b", "a"), n("c", "b")]
    result = plan(nodes, {"a": "skipped", "b": "pending", "c": "pending"})
    assert result.skip == ["b", "c"]
    assert result.run_status == "succeeded"


def test_node_with_one_skipped_and_one_succeeded_upstream_runs():
    result = plan(DIAMOND, {"a": "succeeded", "b": "skipped", "c": "succeeded", "d": "pending"})
    assert result.skip == []
    assert result.ready == ["d"]


def test_failure_fails_the_run():
    result = plan(DIAMOND, {"a": "succeeded", "b": "failed", "c": "running", "d": "pending"})
    assert result.fatal == ["b"]
    assert result.run_status == "failed"
    assert result.ready == []


def test_continue_on_failure_lets_downstream_run():
    nodes = [n("a", cof=True), n("b", "a")]
    result = plan(nodes, {"a": "failed", "b": "pending"})
    assert result.fatal == []
    assert result.ready == ["b"]
    done = plan(nodes, {"a": "failed", "b": "succeeded"})
    assert done.run_status == "succeeded"


def test_waiting_approval_when_nothing_else_moves():
    nodes = [n("a"), n("review", "a", type="approval"), n("b")]
    result = plan(nodes, {"a": "succeeded", "review": "waiting_approval", "b": "running"})
    assert result.run_status == "running"
    result = plan(nodes, {"a": "succeeded", "review": "waiting_approval", "b": "succeeded"})
    assert result.run_status == "waiting_approval"


def test_all_finished_is_success():
    result = plan(DIAMOND, dict.fromkeys("abcd", "succeeded"))
    assert result.run_status == "succeeded"
    assert result.finished


# --- switch ---------------------------------------------------------------------------------

ROUTED = [
    NodeSpec(id="s", type="switch", branches=("x", "y")),
    NodeSpec(id="x", type="tool", depends_on=("s",)),
    NodeSpec(id="y", type="tool", depends_on=("s",)),
    n("after_y", "y"),
    n("join", "x", "y"),
]


def test_a_switch_skips_the_branches_it_did_not_pick_and_their_downstream():
    statuses = {"s": "succeeded", "x": "pending", "y": "pending", "after_y": "pending"}
    statuses["join"] = "pending"
    result = plan(ROUTED, statuses, {"s": "x"})
    assert result.skip == ["y", "after_y"]
    assert result.skip_reasons == {"y": "switch 's' took another branch"}
    assert result.ready == ["x"]


def test_branches_wait_for_the_switch_and_all_are_skipped_when_it_failed():
    pending = dict.fromkeys(["x", "y", "after_y", "join"], "pending")
    assert plan(ROUTED, {"s": "running", **pending}).ready == []
    assert plan(ROUTED, {"s": "pending", **pending}).ready == ["s"]
    failed = NodeSpec(id="s", type="switch", branches=("x", "y"), continue_on_failure=True)
    result = plan([failed, *ROUTED[1:]], {"s": "failed", **pending})
    assert result.skip == ["x", "y", "after_y", "join"]
    assert result.run_status == "succeeded"


def test_a_node_depending_on_a_switch_without_being_a_branch_runs():
    nodes = [*ROUTED, n("audit", "s")]
    statuses = {
        "s": "succeeded",
        **dict.fromkeys(["x", "y", "after_y", "join", "audit"], "pending"),
    }
    result = plan(nodes, statuses, {"s": "y"})
    assert result.skip == ["x"]
    assert result.ready == ["y", "audit"]
