"""The runs API: start, list (cursor pages, filters), detail, steps, events, cancel, retry,
approvals and the Server-Sent Events stream; scoping by role; constant query counts.

Most tests drive the engine synchronously in the test's own thread (inside the test
transaction no `on_commit` fires, so no task is sent); the stream tests use the real worker."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from conftest import client_for
from runs import services
from runs.models import Run, RunEvent, RunStep
from runs.tests.conftest import drive
from runs.tests.factories import make_workflow, transform
from sparkops.testing.engine import wait_for_run
from workflows import services as workflow_services

URL = "/api/v1/runs/"

TOPIC_SCHEMA = {
    "type": "object",
    "properties": {"topic": {"type": "string"}, "n": {"type": "integer", "minimum": 0}},
    "required": ["topic"],
    "additionalProperties": False,
}


def detail(run, suffix=""):
    return f"{URL}{run.pk}/{suffix}"


def topic_workflow(cast, name="digest"):
    return make_workflow(
        cast.project,
        cast.owner,
        [transform("a", "{{ input.topic }}"), transform("b", "{{ steps.a.output }}!", "a")],
        input_schema=TOPIC_SCHEMA,
        name=name,
    )


def approval_workflow(cast):
    return make_workflow(
        cast.project,
        cast.owner,
        [
            transform("draft", "text"),
            {"id": "review", "type": "approval", "depends_on": ["draft"], "message": "Ok?"},
            transform("publish", "done", "review"),
        ],
        name="reviewed",
    )


def start(cast, workflow, input=None, **kwargs):
    return services.run_create(
        workflow=workflow, input=input or {"topic": "otters"}, actor=cast.owner, **kwargs
    )


# --- create ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_developer_starts_a_run(cast):
    wf = topic_workflow(cast)
    response = cast.client("developer").post(
        URL, {"workflow": wf.pk, "input": {"topic": "otters"}}, format="json"
    )
    assert response.status_code == 201, response.json()
    payload = response.json()
    run = Run.objects.get(pk=payload["id"])
    assert payload["status"] == "pending"
    assert payload["trigger"] == "api"
    assert payload["workflow"] == wf.pk
    assert payload["workflow_name"] == "digest"
    assert payload["version"] == 1
    assert payload["project"] == str(cast.project.pk)
    assert payload["input"] == {"topic": "otters"}
    assert payload["created_by"] == str(cast.developer.pk)
    assert [(s["node_id"], s["status"]) for s in payload["steps"]] == [
        ("a", "pending"),
        ("b", "pending"),
    ]
    assert run.created_by == cast.developer
    assert run.version == wf.current_version


@pytest.mark.django_db
def test_input_is_validated_against_the_input_schema(cast):
    wf = topic_workflow(cast)
    response = cast.client("developer").post(
        URL, {"workflow": wf.pk, "input": {"n": -1, "extra": True}}, format="json"
    )
    assert response.status_code == 400
    errors = response.json()["errors"]
    assert set(errors) >= {"input.topic", "input.n", "input.extra"}, errors
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_input_must_be_an_object(cast):
    wf = topic_workflow(cast)
    response = cast.client("developer").post(
        URL, {"workflow": wf.pk, "input": [1, 2]}, format="json"
    )
    assert response.status_code == 400
    assert "input" in response.json()["errors"]


@pytest.mark.django_db
def test_paused_workflow_is_409(cast):
    wf = topic_workflow(cast)
    workflow_services.workflow_set_status(workflow=wf, actor=cast.owner, status="paused")
    response = cast.client("developer").post(
        URL, {"workflow": wf.pk, "input": {"topic": "x"}}, format="json"
    )
    assert response.status_code == 409
    assert "paused" in response.json()["detail"]
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_viewer_cannot_start_a_run(cast):
    wf = topic_workflow(cast)
    response = cast.client("viewer").post(
        URL, {"workflow": wf.pk, "input": {"topic": "x"}}, format="json"
    )
    assert response.status_code == 403
    assert not Run.objects.exists()


@pytest.mark.django_db
def test_workflow_of_another_project_is_a_field_error(cast):
    theirs = make_workflow(cast.other_project, cast.outsider, [transform("a", 1)])
    response = cast.client("developer").post(URL, {"workflow": theirs.pk}, format="json")
    assert response.status_code == 400
    assert "workflow" in response.json()["errors"]
    missing = cast.client("developer").post(URL, {"input": {}}, format="json")
    assert missing.status_code == 400
    assert "workflow" in missing.json()["errors"]


@pytest.mark.django_db
def test_anonymous_is_401(cast):
    assert client_for(None).get(URL).status_code == 401


# --- list ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_is_cursor_paginated_newest_first(cast):
    wf = topic_workflow(cast)
    runs = [start(cast, wf, {"topic": f"t{i}"}) for i in range(5)]
    client = cast.client("viewer")
    seen = []
    url = f"{URL}?page_size=2"
    pages = 0
    while url:
        payload = client.get(url).json()
        assert "count" not in payload  # no COUNT(*) over a big table
        assert len(payload["results"]) <= 2
        seen += [item["id"] for item in payload["results"]]
        url = payload["next"]
        pages += 1
    assert pages == 3
    assert seen == [str(run.pk) for run in reversed(runs)]


@pytest.mark.django_db
def test_list_filters(cast):
    digest = topic_workflow(cast)
    other = topic_workflow(cast, name="other")
    old = start(cast, digest)
    Run.objects.filter(pk=old.pk).update(
        status="failed", created_at=timezone.now() - timedelta(days=3)
    )
    new = start(cast, other, trigger=Run.Trigger.SCHEDULE)
    manual = start(cast, digest, trigger=Run.Trigger.MANUAL)
    client = cast.client("viewer")

    def ids(query):
        response = client.get(f"{URL}?{query}")
        assert response.status_code == 200, response.json()
        return {item["id"] for item in response.json()["results"]}

    assert ids("status=failed") == {str(old.pk)}
    assert ids("status=pending") == {str(new.pk), str(manual.pk)}
    assert ids(f"workflow={other.pk}") == {str(new.pk)}
    assert ids("trigger=schedule") == {str(new.pk)}
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert ids(f"created_after={since.replace('+', '%2B')}") == {str(new.pk), str(manual.pk)}
    assert ids(f"project={cast.project.pk}") == {str(old.pk), str(new.pk), str(manual.pk)}
    assert client.get(f"{URL}?status=nonsense").status_code == 400


@pytest.mark.django_db
def test_list_is_scoped_to_the_callers_projects(cast):
    start(cast, topic_workflow(cast))
    theirs = make_workflow(cast.other_project, cast.outsider, [transform("a", 1)])
    their_run = services.run_create(workflow=theirs, input={}, actor=cast.outsider)
    assert [r["id"] for r in cast.client("outsider").get(URL).json()["results"]] == [
        str(their_run.pk)
    ]
    assert len(cast.client("viewer").get(URL).json()["results"]) == 1
    assert (
        cast.client("outsider").get(detail(Run.objects.exclude(pk=their_run.pk).get())).status_code
        == 404
    )


# --- detail, steps, events ------------------------------------------------------------------


@pytest.mark.django_db
def test_detail_has_step_summaries(cast):
    run = drive(start(cast, topic_workflow(cast)))
    assert run.status == "succeeded", run.error
    payload = cast.client("viewer").get(detail(run)).json()
    assert payload["status"] == "succeeded"
    assert payload["duration_ms"] is not None
    steps = {s["node_id"]: s for s in payload["steps"]}
    assert steps["a"]["status"] == steps["b"]["status"] == "succeeded"
    assert steps["b"]["attempt"] == 1
    assert set(steps["a"]) == {
        "node_id",
        "type",
        "status",
        "attempt",
        "started_at",
        "finished_at",
        "error",
        "input_tokens",
        "output_tokens",
        "cost",
    }


@pytest.mark.django_db
def test_steps_endpoint_has_inputs_and_outputs(cast):
    run = drive(start(cast, topic_workflow(cast)))
    response = cast.client("viewer").get(detail(run, "steps"))
    assert response.status_code == 200
    steps = response.json()
    assert [(s["node_id"], s["output"]) for s in steps] == [("a", "otters"), ("b", "otters!")]
    assert steps[0]["input"] == "{{ input.topic }}"
    assert all(s["worker"] for s in steps)


@pytest.mark.django_db
def test_events_after_n(cast):
    run = drive(start(cast, topic_workflow(cast)))
    client = cast.client("viewer")
    every = client.get(detail(run, "events")).json()["results"]
    assert [e["seq"] for e in every] == list(range(1, len(every) + 1))
    assert every[0]["type"] == "run.status"
    assert every[-1]["payload"]["status"] == "succeeded"
    later = client.get(detail(run, "events?after=4")).json()["results"]
    assert [e["seq"] for e in later] == list(range(5, len(every) + 1))
    assert later == every[4:]
    assert client.get(detail(run, "events?after=junk")).json()["results"] == every


@pytest.mark.django_db
def test_events_are_cursor_paginated(cast):
    run = drive(start(cast, topic_workflow(cast)))
    client = cast.client("viewer")
    total = RunEvent.objects.filter(run=run).count()
    seqs, url = [], detail(run, "events?page_size=3")
    while url:
        payload = client.get(url).json()
        seqs += [e["seq"] for e in payload["results"]]
        url = payload["next"]
    assert seqs == list(range(1, total + 1))


# --- cancel, retry ---------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("method", ["post", "patch"])
def test_cancel(cast, method):
    run = start(cast, approval_workflow(cast))
    drive(run)
    assert Run.objects.get(pk=run.pk).status == "waiting_approval"
    client = cast.client("developer")
    response = getattr(client, method)(detail(run, "cancel"))
    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "cancelled"
    assert {s["status"] for s in response.json()["steps"]} == {"succeeded", "cancelled"}
    again = getattr(client, method)(detail(run, "cancel"))
    assert again.status_code == 409
    assert "already finished" in again.json()["detail"]


@pytest.mark.django_db
def test_viewer_cannot_cancel(cast):
    run = start(cast, topic_workflow(cast))
    assert cast.client("viewer").post(detail(run, "cancel")).status_code == 403
    assert Run.objects.get(pk=run.pk).status == "pending"


@pytest.mark.django_db
def test_retry_creates_a_linked_run(cast):
    run = drive(start(cast, topic_workflow(cast)))
    response = cast.client("developer").post(detail(run, "retry"), {}, format="json")
    assert response.status_code == 201, response.json()
    payload = response.json()
    assert payload["parent_run"] == str(run.pk)
    assert payload["trigger"] == "retry"
    assert payload["reuse_succeeded"] is False
    assert payload["input"] == run.input
    assert payload["status"] == "pending"
    assert [s["status"] for s in payload["steps"]] == ["pending", "pending"]


@pytest.mark.django_db
def test_retry_from_failure_reuses_succeeded_steps(cast):
    wf = make_workflow(
        cast.project,
        cast.owner,
        [transform("a", "{{ input.topic }}"), transform("b", "{{ input.missing.x }}", "a")],
    )
    failed = drive(start(cast, wf))
    assert failed.status == "failed"
    client = cast.client("developer")
    response = client.post(detail(failed, "retry"), {"from_failure": True}, format="json")
    assert response.status_code == 201, response.json()
    payload = response.json()
    assert payload["reuse_succeeded"] is True
    assert {s["node_id"]: s["status"] for s in payload["steps"]} == {
        "a": "succeeded",
        "b": "pending",
    }
    retried = RunStep.objects.get(run_id=payload["id"], node_id="a")
    assert retried.reused_from == failed.steps.get(node_id="a")


@pytest.mark.django_db
def test_retry_conflicts(cast):
    succeeded = drive(start(cast, topic_workflow(cast)))
    client = cast.client("developer")
    response = client.post(detail(succeeded, "retry"), {"from_failure": True}, format="json")
    assert response.status_code == 409
    active = start(cast, topic_workflow(cast, name="again"))
    assert client.post(detail(active, "retry"), {}, format="json").status_code == 409
    assert cast.client("viewer").post(detail(succeeded, "retry"), {}).status_code == 403


# --- approvals -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_approve_and_reject(cast):
    client = cast.client("developer")
    approved = drive(start(cast, approval_workflow(cast)))
    assert approved.status == "waiting_approval"
    response = client.post(
        detail(approved, "steps/review/approve"), {"comment": "ship it"}, format="json"
    )
    assert response.status_code == 200, response.json()
    step = response.json()
    assert step["status"] == "succeeded"
    assert step["decision_comment"] == "ship it"
    assert step["decided_by"] == str(cast.developer.pk)
    assert step["output"]["approved"] is True
    assert Run.objects.get(pk=approved.pk).status == "running"  # publish is queued next
    again = client.post(detail(approved, "steps/review/approve"), {}, format="json")
    assert again.status_code == 409

    rejected = drive(start(cast, approval_workflow(cast)))
    response = client.post(detail(rejected, "steps/review/reject"), {"comment": "no"})
    assert response.status_code == 200
    assert response.json()["error"]["type"] == "rejected"
    rejected.refresh_from_db()
    assert rejected.status == "failed"
    assert rejected.error["step"] == "review"


@pytest.mark.django_db
def test_decisions_need_a_waiting_step(cast):
    run = drive(start(cast, approval_workflow(cast)))
    client = cast.client("developer")
    assert client.post(detail(run, "steps/draft/approve"), {}).status_code == 409
    assert client.post(detail(run, "steps/nope/approve"), {}).status_code == 404
    assert cast.client("viewer").post(detail(run, "steps/review/approve"), {}).status_code == 403
    assert RunStep.objects.get(run=run, node_id="review").status == "waiting_approval"


# --- Server-Sent Events ---------------------------------------------------------------------


def sse(response):
    """Parse an event stream into [(id or None, event, data)]."""
    text = b"".join(response.streaming_content).decode()
    parsed = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            name, _, value = line.partition(": ")
            fields[name] = value
        if "event" in fields:
            parsed.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
    return text, parsed


@pytest.mark.usefixtures("engine")
def test_stream_of_a_finished_run(cast):
    run = wait_for_run(start(cast, topic_workflow(cast)).pk)
    assert run.status == "succeeded"
    response = cast.client("viewer").get(detail(run, "stream"))
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    assert response["Cache-Control"] == "no-cache"
    text, events = sse(response)
    assert text.startswith("retry: ")
    total = RunEvent.objects.filter(run=run).count()
    assert [int(e[0]) for e in events[:-1]] == list(range(1, total + 1))
    assert [e[1] for e in events[:-1]] == list(
        RunEvent.objects.filter(run=run).order_by("seq").values_list("type", flat=True)
    )
    assert events[-1] == (None, "end", {})
    assert events[-2][2]["payload"]["status"] == "succeeded"

    resumed = cast.client("viewer").get(detail(run, "stream"), HTTP_LAST_EVENT_ID="5")
    _, later = sse(resumed)
    assert [int(e[0]) for e in later[:-1]] == list(range(6, total + 1))
    assert later[-1][1] == "end"


@pytest.mark.usefixtures("engine")
def test_stream_follows_a_live_run(cast, settings):
    settings.SPARKOPS_STREAM_POLL_SECONDS = 0.02
    run = start(cast, approval_workflow(cast))
    wait_for_run(run.pk, ("waiting_approval",))
    response = cast.client("viewer").get(detail(run, "stream"))
    stream = iter(response.streaming_content)
    seen = ""
    while "approval.requested" not in seen:
        seen += next(stream).decode()
    # The stream is open; the run moves on and the stream carries what follows.
    services.step_decide(run=run, node_id="review", actor=cast.developer, approve=True)
    rest, deadline = "", time.monotonic() + 30
    for chunk in stream:  # ends by itself once the run has finished
        rest += chunk.decode()
        assert time.monotonic() < deadline, rest
    assert "event: approval.decided" in rest
    assert rest.rstrip().endswith("event: end\ndata: {}")
    assert '"status": "succeeded"' in rest
    assert Run.objects.get(pk=run.pk).status == "succeeded"


# --- query counts ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_runs_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.viewer)
    wf = topic_workflow(cast)
    start(cast, wf)
    # auth user, the caller's project ids, page of runs (workflow name and version number
    # joined). The ids are a query of their own so that the page can use the
    # (project, -created_at) index: see test_runs_page_reads_an_index_range_per_project.
    with django_assert_num_queries(3):
        assert len(client.get(URL).json()["results"]) == 1
    for i in range(10):
        start(cast, wf if i % 2 else topic_workflow(cast, name=f"wf{i}"))
    with django_assert_num_queries(3):
        assert len(client.get(URL).json()["results"]) == 11


@pytest.mark.django_db
def test_events_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.viewer)
    run = start(cast, topic_workflow(cast))
    # auth user, the caller's project ids, run with its project, the caller's role (permission
    # check), page of events
    with django_assert_num_queries(5):
        assert len(client.get(detail(run, "events")).json()["results"]) == 1
    drive(run)
    with django_assert_num_queries(5):
        assert len(client.get(detail(run, "events")).json()["results"]) == 10


@pytest.mark.django_db
def test_steps_list_query_count_is_constant(cast, django_assert_num_queries):
    client = client_for(cast.viewer)
    small = start(cast, make_workflow(cast.project, cast.owner, [transform("a", 1)], name="s"))
    # auth user, the caller's project ids, run with its project, the caller's role (permission
    # check), steps
    with django_assert_num_queries(5):
        assert len(client.get(detail(small, "steps")).json()) == 1
    big = start(
        cast,
        make_workflow(
            cast.project, cast.owner, [transform(f"n{i}", i) for i in range(12)], name="b"
        ),
    )
    with django_assert_num_queries(5):
        assert len(client.get(detail(big, "steps")).json()) == 12
