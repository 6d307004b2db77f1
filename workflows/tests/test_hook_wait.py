"""Inbound hooks that answer with the run's output (`?wait=N`, like n8n's "respond to
webhook"): 200 with status and output when the run ends within the wait, else 202 with its id
and URL; the wait is capped, bounded and holds no database connection. Runs on a real worker."""

from __future__ import annotations

import time

import pytest
from django.db import connection
from django.db.backends.signals import connection_created

from runs.models import Run
from runs.tests.factories import make_workflow, transform
from sparkops.testing.engine import wait_for_run
from workflows.tests.test_hooks import make_trigger, post

pytestmark = pytest.mark.usefixtures("engine")


@pytest.fixture
def greeter(cast):
    return make_workflow(
        cast.project,
        cast.owner,
        [transform("greet", "Hello {{ input.name }}")],
        output={"greeting": "{{ steps.greet.output }}"},
        name="greeter",
    )


@pytest.fixture
def approval(cast):
    # Waits for a person: never ends within a hook's wait.
    return make_workflow(
        cast.project, cast.owner, [{"id": "ok", "type": "approval", "message": "?"}], name="ask"
    )


def test_a_run_that_ends_within_the_wait_answers_200_with_its_output(cast, greeter):
    _, token, _ = make_trigger(greeter, cast.developer)
    response = post(token, {"name": "Ada"}, query="?wait=20")
    assert response.status_code == 200, response.content
    data = response.json()
    run = Run.objects.get(pk=data["run"])
    assert data == {
        "run": str(run.pk),
        "status": "succeeded",
        "replayed": False,
        "url": f"http://testserver/api/v1/runs/{run.pk}",
        "output": {"greeting": "Hello Ada"},
        "error": None,
    }


def test_a_failed_run_answers_200_with_its_error(cast):
    workflow = make_workflow(
        cast.project, cast.owner, [transform("bad", "{{ 1 / 0 }}")], name="divides"
    )
    _, token, _ = make_trigger(workflow, cast.developer)
    response = post(token, {}, query="?wait=20")
    assert response.status_code == 200, response.content
    data = response.json()
    assert data["status"] == "failed" and data["output"] is None
    assert data["error"]["step"] == "bad"


def test_a_run_still_going_after_the_wait_answers_202_with_its_url(cast, approval, settings):
    settings.SPARKOPS_HOOK_WAIT_POLL = 0.1
    _, token, _ = make_trigger(approval, cast.developer)
    started = time.monotonic()
    response = post(token, {}, query="?wait=0.5")
    elapsed = time.monotonic() - started
    assert response.status_code == 202, response.content
    data = response.json()
    assert data["url"] == f"http://testserver/api/v1/runs/{data['run']}"
    assert data["status"] == "pending" and data["replayed"] is False
    assert 0.5 <= elapsed < 5
    wait_for_run(data["run"], statuses=("waiting_approval",))


def test_the_wait_is_capped_by_the_setting(cast, approval, settings):
    settings.SPARKOPS_HOOK_MAX_WAIT = 0.3
    settings.SPARKOPS_HOOK_WAIT_POLL = 0.1
    _, token, _ = make_trigger(approval, cast.developer)
    started = time.monotonic()
    response = post(token, {}, query="?wait=3600")
    assert response.status_code == 202, response.content
    assert time.monotonic() - started < 3


def test_without_wait_the_answer_is_202_at_once(cast, greeter):
    _, token, _ = make_trigger(greeter, cast.developer)
    response = post(token, {"name": "Ada"})
    assert response.status_code == 202
    assert set(response.json()) == {"run", "status", "replayed", "url"}
    wait_for_run(response.json()["run"])


@pytest.mark.parametrize("wait", ["soon", "-1", "nan", "inf"])
def test_a_bad_wait_is_400_naming_it_and_starts_nothing(cast, greeter, wait):
    _, token, _ = make_trigger(greeter, cast.developer)
    response = post(token, {"name": "Ada"}, query=f"?wait={wait}")
    assert response.status_code == 400, response.content
    assert "wait" in response.json()["errors"]
    assert not Run.objects.exists()


def test_a_replayed_delivery_waits_for_the_same_run(cast, greeter):
    _, token, _ = make_trigger(greeter, cast.developer)
    first = post(token, {"name": "Ada"}, headers={"Idempotency-Key": "k1"}, query="?wait=20")
    again = post(token, {"name": "Ada"}, headers={"Idempotency-Key": "k1"}, query="?wait=20")
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["run"] == first.json()["run"] and again.json()["replayed"] is True
    assert again.json()["output"] == {"greeting": "Hello Ada"}


def test_the_wait_gives_the_database_connection_back_between_polls(cast, approval, settings):
    """Each poll is one short query on a connection taken for it: on PostgreSQL the connection
    goes back to the pool between polls (a new one is handed out for the next), so a held
    request holds none. SQLite holds no server resource and keeps its connection."""
    settings.SPARKOPS_HOOK_WAIT_POLL = 0.1
    _, token, _ = make_trigger(approval, cast.developer)
    opened = []

    def count(sender, connection, **kwargs):
        opened.append(connection.alias)

    connection_created.connect(count)
    try:
        response = post(token, {}, query="?wait=0.6")
    finally:
        connection_created.disconnect(count)
    assert response.status_code == 202
    if connection.vendor == "postgresql":
        assert len(opened) >= 4  # about one per poll: 0.6 s / 0.1 s
    else:
        assert opened == []
