"""Event triggers: a finished run starts another workflow of the project with its input mapped
from the source run; chains carry their depth and stop, recorded, past the limit."""

from __future__ import annotations

import pytest

from conftest import client_for
from runs import services as run_services
from runs.models import Run
from runs.tests.factories import make_workflow, transform
from sparkops.errors import InvalidInput
from sparkops.testing.engine import wait_for_run, wait_until
from workflows import event_triggers
from workflows.models import EventTriggerFire
from workflows.tests.factories import WorkflowFactory

URL = "/api/v1/event-triggers/"

NUMBER_SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def counter(cast, name):
    """A workflow whose output is {"n": input.n + 1}."""
    return make_workflow(
        cast.project,
        cast.owner,
        [transform("inc", {"n": "{{ input.n + 1 }}"})],
        input_schema=NUMBER_SCHEMA,
        output={"n": "{{ steps.inc.output.n }}"},
        name=name,
    )


# --- on the real engine ----------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
def test_a_succeeded_run_starts_the_next_workflow_with_mapped_input(cast):
    source = counter(cast, "first")
    target = counter(cast, "second")
    event_triggers.event_trigger_create(
        actor=cast.developer,
        source_workflow=source,
        target_workflow=target,
        name="then",
        statuses=["succeeded"],
        input_mapping={"n": "{{ output.n * 10 }}"},
    )
    first = run_services.run_create(workflow=source, input={"n": 1}, actor=cast.owner)
    assert wait_for_run(first.pk).status == "succeeded"
    fire = wait_until(lambda: EventTriggerFire.objects.filter(source_run=first).first())
    assert fire.status == "started" and fire.chain_depth == 1
    second = wait_for_run(fire.run_id)
    assert (second.workflow_id, second.trigger, second.chain_depth) == (target.pk, "event", 1)
    assert second.input == {"n": 20}
    assert second.output == {"n": 21}


@pytest.mark.usefixtures("engine")
def test_a_cycle_stops_at_the_chain_depth_limit_and_says_so(cast, settings):
    settings.SPARKOPS_MAX_CHAIN_DEPTH = 3
    loop = counter(cast, "loop")
    trigger = event_triggers.event_trigger_create(
        actor=cast.developer, source_workflow=loop, target_workflow=loop, name="again"
    )
    run_services.run_create(workflow=loop, input={"n": 0}, actor=cast.owner)
    refused = wait_until(
        lambda: EventTriggerFire.objects.filter(trigger=trigger, status="refused").first(),
        timeout=60,
    )
    assert refused.chain_depth == 4
    assert refused.reason.startswith("Chain depth 4 would exceed SPARKOPS_MAX_CHAIN_DEPTH (3)")
    runs = list(Run.objects.filter(workflow=loop).order_by("chain_depth"))
    assert [r.chain_depth for r in runs] == [0, 1, 2, 3]
    assert [r.output for r in runs] == [{"n": 1}, {"n": 2}, {"n": 3}, {"n": 4}]
    assert refused.source_run_id == runs[-1].pk and refused.run_id is None
    assert EventTriggerFire.objects.filter(trigger=trigger).count() == 4


# --- without a worker ------------------------------------------------------------------------


@pytest.mark.django_db
def test_status_filter_default_mapping_and_recorded_failures(cast):
    source = counter(cast, "source")
    target = counter(cast, "target")
    on_cancel = event_triggers.event_trigger_create(
        actor=cast.developer,
        source_workflow=source,
        target_workflow=target,
        name="on cancel",
        statuses=["cancelled"],
        input_mapping={"n": "{{ run.input.n }}"},
    )
    event_triggers.event_trigger_create(
        actor=cast.developer, source_workflow=source, target_workflow=target, name="on success"
    )
    # the source output is not a valid input for the target (default mapping: the output)
    broken = event_triggers.event_trigger_create(
        actor=cast.developer,
        source_workflow=source,
        target_workflow=target,
        name="broken",
        statuses=["cancelled"],
    )
    run = run_services.run_create(workflow=source, input={"n": 7}, actor=cast.owner)
    run_services.run_cancel(run=run, actor=cast.owner)
    started = EventTriggerFire.objects.get(trigger=on_cancel)
    assert started.status == "started"
    assert started.run.input == {"n": 7} and started.run.trigger == "event"
    failed = EventTriggerFire.objects.get(trigger=broken)
    assert failed.status == "failed"
    assert failed.reason == "Invalid run input. input.n: This field is required."
    assert EventTriggerFire.objects.count() == 2  # "on success" did not fire


@pytest.mark.django_db
def test_triggers_stay_inside_one_project(cast):
    source = counter(cast, "source")
    foreign = WorkflowFactory(project=cast.other_project, created_by=cast.outsider)
    with pytest.raises(InvalidInput) as exc:
        event_triggers.event_trigger_create(
            actor=cast.owner, source_workflow=source, target_workflow=foreign, name="x"
        )
    assert exc.value.errors == {
        "target_workflow": ["Must be in the project of the source workflow."]
    }


@pytest.mark.django_db
def test_api_crud_and_validation(cast):
    source = counter(cast, "source")
    target = counter(cast, "target")
    client = cast.client("developer")
    body = {"source_workflow": source.pk, "target_workflow": target.pk, "name": "then"}
    response = client.post(URL, body, format="json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["statuses"] == ["succeeded"] and data["project"] == str(cast.project.pk)

    bad = client.post(
        URL, {**body, "statuses": [], "input_mapping": {"n": "{{ steps.a }}"}}, format="json"
    )
    assert bad.status_code == 400
    errors = bad.json()["errors"]
    assert "statuses" in errors and "Unknown name(s) steps" in errors["input_mapping"][0]

    url = f"{URL}{data['id']}/"
    response = client.patch(url, {"statuses": ["failed", "timed_out"]}, format="json")
    assert response.status_code == 200 and response.json()["statuses"] == ["failed", "timed_out"]
    moved = client.patch(url, {"target_workflow": source.pk}, format="json")
    assert moved.status_code == 400
    assert cast.client("viewer").get(url).status_code == 200
    assert cast.client("viewer").delete(url).status_code == 403
    assert cast.client("outsider").get(url).status_code == 404
    assert client.delete(url).status_code == 204


@pytest.mark.django_db
def test_event_trigger_list_query_count_is_constant(cast, django_assert_num_queries):
    source = counter(cast, "source")
    target = counter(cast, "target")
    client = client_for(cast.viewer)

    def add():
        event_triggers.event_trigger_create(
            actor=cast.owner, source_workflow=source, target_workflow=target, name="t"
        )

    add()
    # auth user, count, page of triggers (project joined; workflows are plain ids)
    with django_assert_num_queries(3):
        assert client.get(URL).json()["count"] == 1
    for _ in range(10):
        add()
    with django_assert_num_queries(3):
        assert client.get(URL).json()["count"] == 11
