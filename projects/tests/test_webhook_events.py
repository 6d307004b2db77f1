"""Every event type an endpoint can subscribe to is delivered: one real run per type, on the
real engine, to a receiving HTTP server on 127.0.0.1 subscribed to that type alone."""

from __future__ import annotations

from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from policies.tests.factories import agent_workflow, looping_agent, make_budget
from projects import webhooks
from projects.models import WebhookDelivery, WebhookEndpoint
from projects.tests.receiver import Receiver
from runs import services as run_services
from runs.tests.conftest import builtin_tool, http_tool, tool_node
from runs.tests.factories import make_workflow, transform
from sparkops.testing.engine import wait_for_run, wait_until

pytestmark = pytest.mark.usefixtures("engine")


def _succeeding(cast: Any) -> Any:
    workflow = make_workflow(cast.project, cast.owner, [transform("a", {"ok": True})])
    return wait_for_run(run_services.run_create(workflow=workflow, input={}, actor=cast.owner).pk)


def _failing(cast: Any) -> Any:
    builtin_tool(cast.project, cast.owner, "calc", "calculator")
    workflow = make_workflow(
        cast.project, cast.owner, [tool_node("divide", "calc", {"expression": "1/0"})]
    )
    return wait_for_run(run_services.run_create(workflow=workflow, input={}, actor=cast.owner).pk)


def _cancelled(cast: Any) -> Any:
    workflow = make_workflow(cast.project, cast.owner, [{"id": "ok", "type": "approval"}])
    run = run_services.run_create(workflow=workflow, input={}, actor=cast.owner)
    wait_for_run(run.pk, statuses=("waiting_approval",))
    run_services.run_cancel(run=run, actor=cast.owner)
    return wait_for_run(run.pk)


def _timed_out(cast: Any) -> Any:
    with Receiver(delay=20) as slow:  # an HTTP tool that answers long after the deadline
        http_tool(cast.project, cast.owner, "slow", slow.url)
        workflow = make_workflow(
            cast.project, cast.owner, [tool_node("call", "slow")], timeout_seconds=1
        )
        run = run_services.run_create(workflow=workflow, input={}, actor=cast.owner)
        return wait_for_run(run.pk, timeout=15)


def _approval(cast: Any) -> Any:
    workflow = make_workflow(cast.project, cast.owner, [{"id": "ok", "type": "approval"}])
    run = run_services.run_create(workflow=workflow, input={}, actor=cast.owner)
    return wait_for_run(run.pk, statuses=("waiting_approval",))


def _budget_threshold(cast: Any) -> Any:
    # two paid calls of 0.003 USD: the second crosses 80 % of 0.0070 (0.0056)
    looping_agent(cast, calls=2)
    make_budget(cast.project, cast.owner, limit="0.0070", name="Soft", soft_threshold=80)
    run = run_services.run_create(
        workflow=agent_workflow(cast), input={"topic": "x"}, actor=cast.owner
    )
    return wait_for_run(run.pk)


SCENARIOS = {
    "run.started": (_succeeding, "succeeded"),
    "run.succeeded": (_succeeding, "succeeded"),
    "run.failed": (_failing, "failed"),
    "run.cancelled": (_cancelled, "cancelled"),
    "run.timed_out": (_timed_out, "timed_out"),
    "approval.requested": (_approval, "waiting_approval"),
    "budget.threshold": (_budget_threshold, "succeeded"),
}


def test_every_subscribable_event_type_has_a_scenario():
    assert set(SCENARIOS) == set(WebhookEndpoint.EVENTS)


@pytest.mark.parametrize("event_type", WebhookEndpoint.EVENTS)
def test_each_event_type_is_delivered_to_an_endpoint_subscribed_to_it(cast, event_type):
    scenario, status = SCENARIOS[event_type]
    with Receiver() as receiver:
        _, secret = webhooks.endpoint_create(
            actor=cast.admin, project=cast.project, url=receiver.url, events=[event_type]
        )
        run = scenario(cast)
        assert run.status == status, run.error
        wait_until(
            lambda: WebhookDelivery.objects.filter(status="delivered").exists(),
            what=f"a {event_type} delivery",
            timeout=30,
        )

    assert list(WebhookDelivery.objects.values_list("event_type", flat=True)) == [event_type]
    (request,) = receiver.requests
    message = Webhook(secret).verify(request.raw, request.headers)
    assert message["type"] == event_type
    assert message["data"]["run"]["id"] == str(run.pk)
    assert message["data"]["project"]["id"] == str(cast.project.pk)
    if event_type.startswith("run."):
        assert message["data"]["run"]["status"] == event_type.removeprefix("run.").replace(
            "started", "running"
        )
    if event_type == "budget.threshold":
        budget = message["data"]["budget"]
        assert (budget["name"], budget["soft_threshold"]) == ("Soft", 80)
        assert (budget["spent"], budget["limit"]) == ("0.006000", "0.007000")
        assert "passed 80% of its limit" in message["data"]["message"]
        assert message["data"]["step"] == "think"
