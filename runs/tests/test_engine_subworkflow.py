"""`workflow` nodes on a real Celery worker: a child run of another workflow of the project,
linked to the parent step, with input and output mapping; failure, cancel both ways, the
depth limit and a resume from failure."""

from __future__ import annotations

import pytest

from runs import services
from runs.models import Run
from runs.tests.conftest import events_of, http_tool, tool_node
from runs.tests.factories import make_workflow, transform
from sparkops.errors import InvalidInput
from sparkops.testing.engine import wait_for_run, wait_until
from workflows import services as workflow_services

pytestmark = pytest.mark.usefixtures("engine")


def start(workflow, actor, input=None):
    return services.run_create(workflow=workflow, input=input or {}, actor=actor)


def sub(id, workflow, *depends_on, **fields):
    return {
        "id": id,
        "type": "workflow",
        "workflow": workflow,
        "depends_on": list(depends_on),
        **fields,
    }


def child_of(run, node_id="sub"):
    return Run.objects.get(parent_step__run=run, parent_step__node_id=node_id)


def test_a_child_run_gets_the_mapped_input_and_gives_the_mapped_output(cast):
    child_wf = make_workflow(
        cast.project,
        cast.owner,
        [transform("double", "{{ input.n * 2 }}")],
        name="child",
        output={"doubled": "{{ steps.double.output }}"},
    )
    parent_wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("a", "{{ input.n + 1 }}"),
            sub(
                "sub",
                "child",
                "a",
                input={"n": "{{ steps.a.output }}"},
                output="{{ child.output.doubled + 1 }}",
            ),
            transform("after", "{{ steps.sub.output }}", "sub"),
        ],
        output="{{ steps.after.output }}",
        name="parent",
    )
    run = wait_for_run(start(parent_wf, cast.owner, {"n": 4}).pk)
    assert run.status == "succeeded", run.error
    assert run.output == 11  # (4 + 1) * 2 + 1
    child = child_of(run)
    assert (child.status, child.input, child.output) == ("succeeded", {"n": 5}, {"doubled": 10})
    assert (child.trigger, child.chain_depth) == ("workflow", 1)
    assert child.version_id == child_wf.current_version.pk  # its active version, pinned
    from conftest import client_for

    api = client_for(cast.owner)
    assert api.get(f"/api/v1/runs/{child.pk}").json()["parent_step"] == child.parent_step_id
    step = run.steps.get(node_id="sub")
    assert step.input == {"workflow": "child", "child_run": str(child.pk), "input": {"n": 5}}
    statuses = [e.payload for e in events_of(run, "step.status", "sub")]
    assert [p["status"] for p in statuses] == ["running", "running", "succeeded"]
    assert statuses[-1]["child_run"] == str(child.pk)


def test_an_unknown_workflow_is_a_400_naming_the_node(cast):
    with pytest.raises(InvalidInput) as exc_info:
        make_workflow(cast.project, cast.owner, [sub("sub", "nowhere")])
    assert exc_info.value.errors == {
        "definition.nodes[0].workflow": [
            "Node 'sub' runs unknown workflow 'nowhere' (not in this project)."
        ]
    }


def test_another_projects_workflow_is_unknown_at_save_and_at_run_time(cast):
    make_workflow(cast.other_project, cast.outsider, [transform("x", "secret")], name="theirs")
    with pytest.raises(InvalidInput) as exc_info:
        make_workflow(cast.project, cast.owner, [sub("sub", "theirs")])
    assert "unknown workflow 'theirs'" in exc_info.value.errors["definition.nodes[0].workflow"][0]
    # a workflow of this project named so, deleted after the save: the run does not cross over
    mine = make_workflow(cast.project, cast.owner, [transform("x", 1)], name="theirs")
    parent_wf = make_workflow(cast.project, cast.owner, [sub("sub", "theirs")], name="p")
    workflow_services.workflow_delete(workflow=mine, actor=cast.owner)
    run = wait_for_run(start(parent_wf, cast.owner).pk)
    assert run.status == "failed"
    error = run.steps.get(node_id="sub").error
    assert error == {
        "type": "child_start",
        "message": "Cannot start workflow 'theirs': No workflow 'theirs' in this project.",
    }
    assert not Run.objects.filter(project=cast.other_project).exists()


def test_a_failed_child_fails_the_step_and_the_parent(cast):
    make_workflow(cast.project, cast.owner, [transform("x", "{{ input.a.b }}")], name="broken")
    parent_wf = make_workflow(
        cast.project, cast.owner, [sub("sub", "broken"), transform("after", 1, "sub")], name="p"
    )
    run = wait_for_run(start(parent_wf, cast.owner).pk)
    assert run.status == "failed"
    error = run.steps.get(node_id="sub").error
    assert error["type"] == "child_failed"
    assert error["message"].startswith("Child run of workflow 'broken' failed: Step 'x' failed")
    assert error["child_run"] == str(child_of(run).pk)
    assert run.steps.get(node_id="after").status == "cancelled"


def test_cancelling_the_parent_cancels_the_child(cast):
    make_workflow(cast.project, cast.owner, [{"id": "wait", "type": "approval"}], name="waits")
    parent_wf = make_workflow(cast.project, cast.owner, [sub("sub", "waits")], name="p")
    run = start(parent_wf, cast.owner)
    child = wait_until(lambda: Run.objects.filter(parent_step__run=run).first(), what="child")
    wait_for_run(child.pk, ("waiting_approval",))
    services.run_cancel(run=run, actor=cast.owner)
    child = wait_for_run(child.pk, ("cancelled",))
    assert child.error["message"] == "Cancelled by the parent run."
    assert Run.objects.get(pk=run.pk).status == "cancelled"


def test_cancelling_the_child_fails_the_parent(cast):
    make_workflow(cast.project, cast.owner, [{"id": "wait", "type": "approval"}], name="waits")
    parent_wf = make_workflow(cast.project, cast.owner, [sub("sub", "waits")], name="p")
    run = start(parent_wf, cast.owner)
    child = wait_until(lambda: Run.objects.filter(parent_step__run=run).first(), what="child")
    wait_for_run(child.pk, ("waiting_approval",))
    services.run_cancel(run=child, actor=cast.owner)
    run = wait_for_run(run.pk)
    assert run.status == "failed"
    assert run.steps.get(node_id="sub").error["type"] == "child_cancelled"


def test_the_depth_limit_stops_a_chain_of_children_too_deep(cast, settings):
    settings.SPARKOPS_MAX_CHAIN_DEPTH = 2
    make_workflow(cast.project, cast.owner, [transform("a", 1)], name="leaf")
    make_workflow(cast.project, cast.owner, [sub("sub", "leaf")], name="three")
    make_workflow(cast.project, cast.owner, [sub("sub", "three")], name="two")
    wf = make_workflow(cast.project, cast.owner, [sub("sub", "two")], name="one")
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "failed"
    depth1 = child_of(run)
    depth2 = wait_for_run(child_of(depth1).pk)
    assert [r.chain_depth for r in (run, depth1, depth2)] == [0, 1, 2]
    assert not Run.objects.filter(parent_step__run=depth2).exists()
    assert depth2.steps.get(node_id="sub").error == {
        "type": "depth_limit",
        "message": "Workflow 'leaf' would run at depth 3, past SPARKOPS_MAX_CHAIN_DEPTH (2).",
    }
    assert run.steps.get(node_id="sub").error["type"] == "child_failed"


def test_a_workflow_that_would_run_itself_is_refused_when_saved(cast):
    """Directly, or through the workflows it runs (a loop's workflow body too): a 400 naming
    the node and the cycle, on update and on rollback; nothing is saved."""
    again = make_workflow(cast.project, cast.owner, [transform("a", 1)], name="again")
    client = cast.client("developer")
    url = f"/api/v1/workflows/{again.pk}/"
    itself = {"nodes": [transform("a", 1), sub("sub", "again", "a")]}
    response = client.patch(url, {"definition": itself}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {
        "definition.nodes[1].workflow": [
            "Workflow 'again' would run itself as a child run: again → again."
        ]
    }

    middle = make_workflow(cast.project, cast.owner, [sub("sub", "again")], name="middle")
    looped = {
        "nodes": [
            {
                "id": "repeat",
                "type": "loop",
                "node": {"type": "workflow", "workflow": "middle"},
                "until": "{{ iteration >= 1 }}",
                "max_iterations": 2,
            }
        ]
    }
    response = client.patch(url, {"definition": looped}, format="json")
    assert response.status_code == 400
    assert response.json()["errors"] == {
        "definition.nodes[0].node.workflow": [
            "Workflow 'again' would run itself as a child run: again → middle → again."
        ]
    }
    again.refresh_from_db()
    assert again.version == 1 and again.definition["nodes"] == [transform("a", 1)]

    # A chain without a cycle is fine; a rollback that would close one is refused too.
    ok = client.patch(
        f"/api/v1/workflows/{middle.pk}/",
        {"definition": {"nodes": [transform("b", 2)]}},
        format="json",
    )
    assert ok.status_code == 200, ok.json()
    assert client.patch(url, {"definition": looped}, format="json").status_code == 200
    back = client.post(f"/api/v1/workflows/{middle.pk}/rollback", {"version": 1}, format="json")
    assert back.status_code == 400
    assert "middle → again → middle" in str(back.json()["errors"])


def test_resume_from_failure_runs_a_new_child_and_reuses_the_rest(cast, tool_server):
    http_tool(
        cast.project, cast.owner, "once", tool_server.route("/once", tool_server.failing(1, 404))
    )
    make_workflow(cast.project, cast.owner, [tool_node("call", "once")], name="flaky")
    parent_wf = make_workflow(
        cast.project,
        cast.owner,
        [transform("a", "{{ run.id }}"), sub("sub", "flaky", "a")],
        name="p",
    )
    failed = wait_for_run(start(parent_wf, cast.owner).pk)
    assert failed.status == "failed"
    retried = wait_for_run(services.run_retry(run=failed, actor=cast.owner, from_failure=True).pk)
    assert retried.status == "succeeded", retried.error
    assert retried.steps.get(node_id="a").reused_from.run_id == failed.pk
    assert child_of(retried).status == "succeeded"
    assert child_of(retried).pk != child_of(failed).pk
    assert len(tool_server.calls("/once")) == 2


def test_the_sweeper_sends_a_lost_child_start_again(cast):
    from datetime import timedelta

    from django.utils import timezone

    from runs.tests.conftest import sends_lost

    make_workflow(
        cast.project, cast.owner, [transform("x", 7)], name="child", output="{{ steps.x.output }}"
    )
    parent_wf = make_workflow(cast.project, cast.owner, [sub("sub", "child")], name="p")
    with sends_lost():
        run = start(parent_wf, cast.owner)
    with sends_lost():
        services.run_advance(run_id=run.pk)  # the step runs; its child_start message is lost
    step = run.steps.get(node_id="sub")
    assert step.status == "running" and not Run.objects.filter(parent_step=step).exists()
    ago = timezone.now() - timedelta(minutes=2)
    type(step).objects.filter(pk=step.pk).update(started_at=ago)
    Run.objects.filter(pk=run.pk).update(started_at=ago, queued_at=ago)
    assert services.sweep()["steps_resent"] == 1
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.steps.get(node_id="sub").output == 7
    assert services.sweep()["steps_resent"] == 0


def test_a_failed_child_is_retried_as_a_new_child_under_the_nodes_retry(cast, tool_server):
    http_tool(
        cast.project, cast.owner, "once", tool_server.route("/once", tool_server.failing(1, 404))
    )
    make_workflow(
        cast.project,
        cast.owner,
        [tool_node("call", "once")],
        name="flaky",
        output="{{ steps.call.output }}",
    )
    retry = {"max_attempts": 2, "backoff_seconds": 0.05}
    parent_wf = make_workflow(
        cast.project, cast.owner, [sub("sub", "flaky", retry=retry)], name="p"
    )
    run = wait_for_run(start(parent_wf, cast.owner).pk)
    assert run.status == "succeeded", run.error
    step = run.steps.get(node_id="sub")
    first, second = Run.objects.filter(parent_step=step).order_by("created_at")
    assert (first.status, second.status) == ("failed", "succeeded")
    assert (step.attempt, step.failures) == (2, 1)
    assert step.input["child_run"] == str(second.pk)
    assert step.output == second.output
    (retried,) = [e for e in events_of(run, "step.status") if e.payload.get("retry")]
    assert retried.node_id == "sub" and retried.payload["error"]["child_run"] == str(first.pk)
    assert len(tool_server.calls("/once")) == 2


def test_a_child_failing_every_attempt_fails_the_step_after_the_last(cast, tool_server):
    http_tool(
        cast.project, cast.owner, "never", tool_server.route("/n", tool_server.failing(9, 404))
    )
    make_workflow(cast.project, cast.owner, [tool_node("call", "never")], name="broken")
    retry = {"max_attempts": 3, "backoff_seconds": 0.05}
    parent_wf = make_workflow(
        cast.project, cast.owner, [sub("sub", "broken", retry=retry)], name="p"
    )
    run = wait_for_run(start(parent_wf, cast.owner).pk)
    assert run.status == "failed"
    step = run.steps.get(node_id="sub")
    children = list(Run.objects.filter(parent_step=step).order_by("created_at"))
    assert [child.status for child in children] == ["failed"] * 3
    assert (step.status, step.attempt, step.failures) == ("failed", 3, 3)
    assert step.error["child_run"] == str(children[-1].pk)


def test_a_cancelled_child_is_not_retried(cast):
    make_workflow(cast.project, cast.owner, [{"id": "wait", "type": "approval"}], name="waits")
    retry = {"max_attempts": 3, "backoff_seconds": 0.05}
    parent_wf = make_workflow(
        cast.project, cast.owner, [sub("sub", "waits", retry=retry)], name="p"
    )
    run = start(parent_wf, cast.owner)
    child = wait_until(lambda: Run.objects.filter(parent_step__run=run).first(), what="child")
    wait_for_run(child.pk, ("waiting_approval",))
    services.run_cancel(run=child, actor=cast.owner)
    run = wait_for_run(run.pk)
    assert run.status == "failed"
    assert run.steps.get(node_id="sub").error["type"] == "child_cancelled"
    assert Run.objects.filter(parent_step__run=run).count() == 1


# --- a map whose item is a workflow ---------------------------------------------------------------


def map_of_workflow(slug, items, **fields):
    return {
        "id": "each",
        "type": "map",
        "items": items,
        "node": {"type": "workflow", "workflow": slug, "input": {"n": "{{ item }}"}, **fields},
        "max_concurrency": 2,
    }


def test_a_map_of_workflows_runs_a_child_per_item_and_keeps_their_order(cast):
    make_workflow(
        cast.project,
        cast.owner,
        [transform("x", "{{ input.n * 2 }}")],
        name="double",
        output="{{ steps.x.output }}",
    )
    parent_wf = make_workflow(
        cast.project,
        cast.owner,
        [map_of_workflow("double", [1, 2, 3], output="{{ item }}:{{ child.output }}")],
        name="p",
    )
    run = wait_for_run(start(parent_wf, cast.owner).pk)
    assert run.status == "succeeded", run.error
    assert run.steps.get(node_id="each").output == ["1:2", "2:4", "3:6"]
    children = Run.objects.filter(parent_step__run=run).order_by("parent_step__item_index")
    assert [(c.parent_step.node_id, c.input, c.output) for c in children] == [
        ("each[0]", {"n": 1}, 2),
        ("each[1]", {"n": 2}, 4),
        ("each[2]", {"n": 3}, 6),
    ]
    assert {c.chain_depth for c in children} == {1}


def test_a_map_of_workflows_retries_the_item_whose_child_failed(cast, tool_server):
    failed = {"n": 0}

    def second_fails_once(hit):
        if hit.body["n"] == 2 and not failed["n"]:
            failed["n"] += 1
            return 404, {"error": "not yet"}
        return 200, {"n": hit.body["n"]}

    http_tool(cast.project, cast.owner, "check", tool_server.route("/c", second_fails_once))
    make_workflow(
        cast.project,
        cast.owner,
        [{**tool_node("call", "check"), "args": {"n": "{{ input.n }}"}}],
        name="checked",
        output="{{ steps.call.output.n }}",
    )
    retry = {"max_attempts": 2, "backoff_seconds": 0.05}
    parent_wf = make_workflow(
        cast.project,
        cast.owner,
        [{**map_of_workflow("checked", [1, 2, 3]), "retry": retry}],
        name="p",
    )
    run = wait_for_run(start(parent_wf, cast.owner).pk)
    assert run.status == "succeeded", run.error
    assert run.steps.get(node_id="each").output == [1, 2, 3]
    second = run.steps.get(node_id="each[1]")
    assert (second.attempt, second.failures) == (2, 1)
    assert Run.objects.filter(parent_step=second).count() == 2
    assert Run.objects.filter(parent_step__run=run).count() == 4


def test_cancelling_a_map_of_workflows_cancels_its_children(cast):
    make_workflow(cast.project, cast.owner, [{"id": "wait", "type": "approval"}], name="waits")
    parent_wf = make_workflow(
        cast.project, cast.owner, [map_of_workflow("waits", [1, 2])], name="p"
    )
    run = start(parent_wf, cast.owner)
    children = wait_until(
        lambda: (
            list(Run.objects.filter(parent_step__run=run, status="waiting_approval"))
            if Run.objects.filter(parent_step__run=run, status="waiting_approval").count() == 2
            else None
        ),
        what="both children waiting",
    )
    services.run_cancel(run=run, actor=cast.owner)
    assert wait_for_run(run.pk).status == "cancelled"
    for child in children:
        assert wait_for_run(child.pk).status == "cancelled"


def test_a_map_of_workflows_is_checked_when_saved(cast):
    with pytest.raises(InvalidInput) as exc_info:
        make_workflow(cast.project, cast.owner, [map_of_workflow("nowhere", [1])])
    assert list(exc_info.value.errors) == ["definition.nodes[0].node.workflow"]
    assert (
        "unknown workflow 'nowhere'"
        in exc_info.value.errors["definition.nodes[0].node.workflow"][0]
    )
    itself = make_workflow(cast.project, cast.owner, [transform("a", 1)], name="itself")
    with pytest.raises(InvalidInput) as exc_info:
        workflow_services.workflow_update(
            workflow=itself,
            actor=cast.owner,
            definition={"nodes": [map_of_workflow("itself", [1])]},
        )
    assert exc_info.value.errors == {
        "definition.nodes[0].node.workflow": [
            "Workflow 'itself' would run itself as a child run: itself → itself."
        ]
    }


def test_the_sweeper_sends_a_lost_retry_of_a_child_again(cast):
    """Attempt 1's child failed and the message starting attempt 2 was lost: the step has a
    child (the failed one) but none for this attempt, so the sweeper sends the start again."""
    from datetime import timedelta

    from django.utils import timezone

    from runs.tests.conftest import sends_lost

    child_wf = make_workflow(
        cast.project, cast.owner, [transform("x", 7)], name="child", output="{{ steps.x.output }}"
    )
    retry = {"max_attempts": 2, "backoff_seconds": 0.01}
    parent_wf = make_workflow(cast.project, cast.owner, [sub("sub", "child", retry=retry)])
    with sends_lost():
        run = start(parent_wf, cast.owner)
    with sends_lost():
        services.run_advance(run_id=run.pk)
        step = run.steps.get(node_id="sub")
        first = services.run_create(
            workflow=child_wf, input={}, actor=cast.owner, parent_step=step, chain_depth=1
        )
    Run.objects.filter(pk=first.pk).update(status="failed")
    ago = timezone.now() - timedelta(minutes=2)
    type(step).objects.filter(pk=step.pk).update(
        attempt=2, failures=1, input={}, started_at=ago, next_attempt_at=ago
    )
    Run.objects.filter(pk=run.pk).update(started_at=ago, queued_at=ago)
    assert services.sweep()["steps_resent"] == 1
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert Run.objects.filter(parent_step=step).count() == 2
    assert run.steps.get(node_id="sub").output == 7
    assert services.sweep()["steps_resent"] == 0
