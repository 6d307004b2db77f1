"""Every metric the README lists moves: for each row of README's "What is measured" table, a
real scenario that should move it (a run on the real worker, a webhook to a receiving server,
a refused stream, an unreachable Redis...), with /metrics scraped before and after."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.utils import timezone
from prometheus_client import Counter, Histogram

from agents.tests.factories import remote_agent
from policies.tests.factories import agent_workflow, make_agent, make_policy
from projects import webhooks
from projects.models import WebhookDelivery
from projects.tests.receiver import Receiver
from runs import services as run_services
from runs.models import RunStep
from runs.tests.factories import finished_run, metered_workflow
from sparkops import cache, metrics
from sparkops.testing.engine import wait_for_run, wait_until
from sparkops.testing.fake_llm import FakeLLMServer
from sparkops.testing.processes import free_port
from sparkops.testing.scraping import scrape, total

pytestmark = pytest.mark.usefixtures("metrics_token", "engine")

ROW = re.compile(r"^\| `(sparkops_\w+)` \| (counter|histogram|gauge) \|")


def readme_metrics() -> dict[str, str]:
    """{name: type} of the README's "What is measured" table."""
    text = (Path(django_settings.BASE_DIR) / "README.md").read_text()
    table = text.split("#### What is measured", 1)[1].split("\n\n", 2)[1]
    return {m[1]: m[2] for line in table.splitlines() if (m := ROW.match(line))}


README_METRICS = readme_metrics()


# --- scenarios -----------------------------------------------------------------------------------


def priced_agent_run(cast: Any, settings: Any) -> None:
    """An agent that calls a tool once, then a tool step: runs, steps, model and tool calls."""
    run = run_services.run_create(workflow=metered_workflow(cast), input={}, actor=cast.owner)
    assert wait_for_run(run.pk).status == "succeeded"


def unpriced_agent_run(cast: Any, settings: Any) -> None:
    make_agent(cast, model="sim-unpriced")
    run = run_services.run_create(
        workflow=agent_workflow(cast), input={"topic": "otters"}, actor=cast.owner
    )
    assert wait_for_run(run.pk).status == "succeeded"


def failing_model_run(cast: Any, settings: Any) -> None:
    with FakeLLMServer() as llm:
        remote_agent(cast, slug="bot", base_url=llm.openai_base_url, key="sk")
        llm.enqueue("openai", {"status": 401})
        run = run_services.run_create(
            workflow=agent_workflow(cast), input={"topic": "x"}, actor=cast.owner
        )
        assert wait_for_run(run.pk).status == "failed"


def denied_model_run(cast: Any, settings: Any) -> None:
    make_agent(cast, model="sim-2")
    make_policy(cast.project, cast.owner, "allowed_models", {"models": ["simulated/sim-1"]})
    run = run_services.run_create(
        workflow=agent_workflow(cast), input={"topic": "x"}, actor=cast.owner
    )
    assert wait_for_run(run.pk).status == "failed"


def webhook_delivery(cast: Any, settings: Any) -> None:
    """The session worker sends it (the outbox task goes out as the emit commits)."""
    with Receiver() as receiver:
        webhooks.endpoint_create(actor=cast.admin, project=cast.project, url=receiver.url)
        (delivery,) = webhooks.event_emit(
            project_id=cast.project.pk, event_type="run.succeeded", data={"run": {"id": "r"}}
        )
        wait_until(
            lambda: WebhookDelivery.objects.filter(pk=delivery.pk, status="delivered").exists(),
            what="the delivery",
        )


def refused_stream(cast: Any, settings: Any) -> None:
    run = finished_run(cast, status="running")
    settings.SPARKOPS_STREAMS_PER_USER = 1
    url = f"/api/v1/runs/{run.pk}/stream"
    held = cast.client("viewer").get(url)
    try:
        assert cast.client("viewer").get(url).status_code == 429
    finally:
        held.close()


def unreachable_cache(cast: Any, settings: Any) -> None:
    """Our cache backend against an address nothing listens on."""
    backend = cache.ResilientRedisCache(f"redis://127.0.0.1:{free_port()}/0", {})
    try:
        assert backend.get("key", "missed") == "missed"
    finally:
        cache.reset()  # the outage state is per process: don't leave it tripped


def active_run(cast: Any, settings: Any) -> None:
    finished_run(cast, status="queued")


def queued_step(cast: Any, settings: Any) -> None:
    run = finished_run(cast, status="running")
    RunStep.objects.create(
        run=run,
        node_id="later",
        type="transform",
        status="queued",
        queued_at=timezone.now() - timedelta(seconds=30),
    )


RUN = priced_agent_run
SCENARIOS: dict[str, Callable[[Any, Any], None]] = {
    "sparkops_runs_created_total": RUN,
    "sparkops_runs_started_total": RUN,
    "sparkops_runs_finished_total": RUN,
    "sparkops_run_duration_seconds": RUN,
    "sparkops_run_queue_wait_seconds": RUN,
    "sparkops_step_duration_seconds": RUN,
    "sparkops_step_queue_wait_seconds": RUN,
    "sparkops_model_calls_total": RUN,
    "sparkops_model_call_errors_total": failing_model_run,
    "sparkops_model_tokens_total": RUN,
    "sparkops_model_cost_usd_total": RUN,
    "sparkops_model_call_duration_seconds": RUN,
    "sparkops_model_calls_unpriced_total": unpriced_agent_run,
    "sparkops_tool_calls_total": RUN,
    "sparkops_tool_call_duration_seconds": RUN,
    "sparkops_policy_denials_total": denied_model_run,
    "sparkops_spend_usd_total": RUN,
    "sparkops_webhook_deliveries_total": webhook_delivery,
    "sparkops_streams_refused_total": refused_stream,
    "sparkops_cache_errors_total": unreachable_cache,
    "sparkops_runs_active": active_run,
    "sparkops_steps_queued": queued_step,
    "sparkops_steps_queued_oldest_age_seconds": queued_step,
}


def test_the_readme_table_and_the_metric_objects_agree():
    assert len(README_METRICS) >= 20
    assert set(SCENARIOS) == set(README_METRICS)
    defined = {
        obj._name + ("_total" if isinstance(obj, Counter) else "")
        for obj in vars(metrics).values()
        if isinstance(obj, Counter | Histogram)
    }
    assert defined <= set(README_METRICS), defined - set(README_METRICS)


@pytest.mark.parametrize("name", sorted(README_METRICS))
def test_each_readme_metric_moves(cast, settings, name):
    scenario = SCENARIOS[name]
    before = total(scrape(), name)
    scenario(cast, settings)  # the pytest-django fixture: changes are undone after

    # Engine metrics are recorded after commit in the worker thread: scrape until they move.
    def moved() -> float | None:
        now = total(scrape(), name)
        return now if now != before else None

    after = wait_until(moved, what=f"{name} to move", timeout=15)
    if README_METRICS[name] != "gauge":
        assert after > before
