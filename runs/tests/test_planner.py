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
