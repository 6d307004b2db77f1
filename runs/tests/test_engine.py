"""The engine on a real Celery worker: linear, parallel, skips, failures, approvals, cancel."""

from __future__ import annotations

import pytest

from runs import services
from runs.models import Run, RunEvent
from runs.tests.factories import make_workflow, transform
from sparkops.testing.engine import wait_for_run, wait_for_step

pytestmark = pytest.mark.usefixtures("engine")


def start(workflow, actor, input=None, **kwargs):
    return services.run_create(workflow=workflow, input=input or {}, actor=actor, **kwargs)


def assert_gap_free(run):
    seqs = list(RunEvent.objects.filter(run=run).order_by("seq").values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))


def test_linear_transform_chain_passes_outputs_along(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("a", {"n": "{{ input.n + 1 }}"}),
            transform("b", {"n": "{{ steps.a.output.n * 2 }}"}, "a"),
            transform("c", "{{ steps.b.output.n }}", "b"),
        ],
        input_schema={"type": "object", "properties": {"n": {"type": "integer"}}},
        output={"result": "{{ steps.c.output }}"},
    )
    run = wait_for_run(start(wf, cast.owner, {"n": 4}).pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"result": 10}
    steps = {s.node_id: s for s in run.steps.all()}
    assert [steps[n].status for n in "abc"] == ["succeeded"] * 3
    assert steps["a"].attempt == 1
    assert run.started_at <= run.finished_at and run.duration_ms is not None
    assert_gap_free(run)
    statuses = list(
        RunEvent.objects.filter(run=run, type="run.status").values_list(
            "payload__status", flat=True
        )
    )
    assert statuses == ["pending", "queued", "running", "succeeded"]


def test_when_false_skips_and_downstream_of_only_skipped_is_skipped(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("a", 1),
            transform("b", 2, "a", when="{{ steps.a.output > 5 }}"),
            transform("c", 3, "b"),
            transform("d", 4, "a"),
        ],
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "succeeded"
    statuses = dict(run.steps.values_list("node_id", "status"))
    assert statuses == {"a": "succeeded", "b": "skipped", "c": "skipped", "d": "succeeded"}


def test_failed_step_fails_the_run_and_cancels_the_rest(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [transform("a", "{{ input.missing.deeper }}"), transform("b", 1, "a")],
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "failed"
    assert run.error["step"] == "a"
    assert run.error["step_error"]["type"] == "template_error"
    assert dict(run.steps.values_list("node_id", "status")) == {"a": "failed", "b": "cancelled"}
    assert_gap_free(run)


def test_a_transform_of_300_big_values_fails_at_the_render_total(cast):
    # 9 KB of definition that rendered 300 MB before one size budget covered a whole step
    output = {f"k{i}": "{{ 'a' * (10**6) }}" for i in range(300)}
    wf = make_workflow(cast.project, cast.owner, [transform("big", output)])
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "failed"
    step_error = run.error["step_error"]
    assert step_error["type"] == "template_error"
    assert "characters in total" in step_error["message"], step_error
    assert run.steps.get(node_id="big").output is None


def test_continue_on_failure(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("a", "{{ input.missing.deeper }}", continue_on_failure=True),
            transform("b", "{{ steps.a.status }}", "a"),
        ],
    )
    run = wait_for_run(start(wf, cast.owner).pk)
    assert run.status == "succeeded"
    assert run.steps.get(node_id="b").output == "failed"


def test_approval_approve_and_reject(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [
            transform("draft", "text"),
            {
                "id": "review",
                "type": "approval",
                "depends_on": ["draft"],
                "message": "Publish {{ steps.draft.output }}?",
            },
            transform("publish", "done", "review"),
        ],
    )
    run = start(wf, cast.owner)
    wait_for_run(run.pk, ("waiting_approval",))
    step = wait_for_step(run.pk, "review", ("waiting_approval",))
    assert step.input == {"message": "Publish text?"}
    services.step_decide(
        run=run, node_id="review", actor=cast.developer, approve=True, comment="ok"
    )
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    assert run.steps.get(node_id="review").output["approved"] is True
    assert RunEvent.objects.filter(run=run, type="approval.decided").count() == 1

    rejected = start(wf, cast.owner)
    wait_for_run(rejected.pk, ("waiting_approval",))
    services.step_decide(
        run=rejected, node_id="review", actor=cast.developer, approve=False, comment="no"
    )
    rejected = wait_for_run(rejected.pk)
    assert rejected.status == "failed"
    assert rejected.steps.get(node_id="review").error["type"] == "rejected"
    assert rejected.steps.get(node_id="publish").status == "cancelled"


def test_cancel_while_waiting(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [{"id": "review", "type": "approval"}, transform("after", 1, "review")],
    )
    run = start(wf, cast.owner)
    wait_for_run(run.pk, ("waiting_approval",))
    services.run_cancel(run=run, actor=cast.owner)
    run = Run.objects.get(pk=run.pk)
    assert run.status == "cancelled"
    assert set(run.steps.values_list("status", flat=True)) == {"cancelled"}
    with pytest.raises(Exception, match="already finished"):
        services.run_cancel(run=run, actor=cast.owner)


def test_retry_from_failure_reuses_succeeded_steps(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [transform("a", "{{ run.id }}"), transform("b", "{{ input.x.y }}", "a")],
    )
    failed = wait_for_run(start(wf, cast.owner).pk)
    assert failed.status == "failed"
    retried = services.run_retry(run=failed, actor=cast.owner, from_failure=True)
    retried = wait_for_run(retried.pk)
    assert retried.parent_run_id == failed.pk
    a = retried.steps.get(node_id="a")
    assert a.reused_from.run_id == failed.pk
    assert a.output == str(failed.pk)  # the parent's output, not recomputed
    plain = wait_for_run(services.run_retry(run=failed, actor=cast.owner).pk)
    assert plain.steps.get(node_id="a").output == str(plain.pk)
