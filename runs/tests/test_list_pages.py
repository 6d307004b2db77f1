"""Run lists that stay flat as the table grows: the caller's projects are resolved first, a page
is read as one index range per project (merged), and a row loads only what the API shows."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conftest import client_for
from projects.models import Membership, Project, Role
from projects.tests.factories import ProjectFactory
from runs.models import Run, RunStep
from runs.tests.factories import finished_run, make_workflow, transform
from sparkops import models as sparkops_models

pytestmark = pytest.mark.django_db
URL = "/api/v1/runs/"


def add_runs(project: Any, count: int, start: Any, step: timedelta) -> None:
    """`count` finished runs of a new workflow of `project`, `step` apart from `start` on."""
    workflow = make_workflow(
        project, project.owner, [transform("a", 1)], name=f"wf-{Run.objects.count()}"
    )
    runs = [
        Run(
            project=project,
            workflow=workflow,
            version=workflow.current_version,
            status="failed" if i % 7 == 0 else "succeeded",
            input={"i": i},
            output={"text": "x" * 50},
            created_at=start + step * i,
        )
        for i in range(count)
    ]
    created_at = Run._meta.get_field("created_at")
    created_at.auto_now_add = False  # keep the given times
    try:
        Run.objects.bulk_create(runs, batch_size=2000)
    finally:
        created_at.auto_now_add = True


@pytest.fixture
def tenants(cast: Any) -> dict[str, Any]:
    """The viewer sees 3 projects it is a member of and one public project; another tenant's
    project holds runs it must never see. Runs of different projects interleave in time."""
    extra = []
    for name in ("beta", "gamma"):
        project = ProjectFactory(name=name, slug=name, owner=cast.owner)
        Membership.objects.create(project=project, user=cast.viewer, role=Role.VIEWER)  # type: ignore[misc]  # factory_boy returns the model
        extra.append(project)
    public = ProjectFactory(name="open", slug="open", owner=cast.outsider, is_public=True)
    visible = [cast.project, *extra, public]
    start = timezone.now() - timedelta(days=1)
    for n, project in enumerate(visible):
        add_runs(project, 30, start + timedelta(seconds=n), timedelta(seconds=5))
    add_runs(cast.other_project, 30, start, timedelta(seconds=3))
    return {"visible": visible}


def walk(client: Any, url: str) -> list[dict[str, Any]]:
    """Every row of a cursor-paginated list, following `next`."""
    rows: list[dict[str, Any]] = []
    while url:
        body = client.get(url).json()
        rows += body["results"]
        url = body["next"]
    return rows


def page_query(queries: list[dict[str, Any]]) -> str:
    return next(q["sql"] for q in queries if 'FROM "runs_run"' in q["sql"])


def test_ids_for_user_are_memberships_and_public_projects(cast, tenants):
    ids = Project.objects.ids_for_user(cast.viewer)
    assert set(ids) == {p.pk for p in tenants["visible"]}
    assert ids == sorted(ids)  # a stable SQL text for the same caller
    assert cast.other_project.pk not in Project.objects.ids_for_user(cast.viewer)
    from django.contrib.auth.models import AnonymousUser

    assert Project.objects.ids_for_user(AnonymousUser()) == []
    assert Project.objects.ids_for_user(None) == []


def test_merged_pages_list_every_visible_run_once_newest_first(cast, tenants):
    client = client_for(cast.viewer)
    rows = walk(client, f"{URL}?page_size=7")
    expected = Run.objects.filter(project__in=tenants["visible"]).order_by("-created_at")
    assert [r["id"] for r in rows] == [str(pk) for pk in expected.values_list("pk", flat=True)]
    assert len(rows) == 120
    # Back again through `previous` from the last page: the same rows.
    body = client.get(f"{URL}?page_size=7").json()
    while body["next"]:
        body = client.get(body["next"]).json()
    back = list(reversed(body["results"]))
    while body["previous"]:
        body = client.get(body["previous"]).json()
        back += reversed(body["results"])
    assert [r["id"] for r in back] == [r["id"] for r in reversed(rows)]


def test_merged_pages_keep_filters_and_runs_that_share_a_timestamp(cast, tenants):
    # Ten runs of three projects created in the same instant: the cursor's offset crosses them.
    same = timezone.now() - timedelta(hours=2)
    Run.objects.filter(
        pk__in=Run.objects.filter(project__in=tenants["visible"][:3]).values("pk")[:10]
    ).update(created_at=same)
    client = client_for(cast.viewer)
    rows = walk(client, f"{URL}?page_size=4")
    assert len({r["id"] for r in rows}) == len(rows) == 120
    stamps = [r["created_at"] for r in rows]
    assert stamps == sorted(stamps, reverse=True)
    failed = walk(client, f"{URL}?status=failed&page_size=3")
    expected = Run.objects.filter(project__in=tenants["visible"], status="failed")
    assert sorted(r["id"] for r in failed) == sorted(
        str(pk) for pk in expected.values_list("pk", flat=True)
    )
    one = walk(client, f"{URL}?project={cast.project.pk}&page_size=9")
    assert {r["project"] for r in one} == {str(cast.project.pk)} and len(one) == 30


def test_a_page_reads_one_index_range_per_project_not_the_table(cast, tenants):
    """The page is a UNION ALL of one `project_id = …` branch per visible project (PostgreSQL:
    a Merge Append of index scans that together read at most a page per project, however many
    runs the table holds); SQLite, which refuses a LIMIT inside a UNION, reads it plainly."""
    for project in tenants["visible"]:
        add_runs(project, 1500, timezone.now() - timedelta(days=30), timedelta(seconds=1))
    with CaptureQueriesContext(connection) as queries:
        assert len(client_for(cast.viewer).get(URL).json()["results"]) == 50
    sql = page_query(queries.captured_queries)
    if connection.vendor != "postgresql":
        assert "UNION" not in sql
        return
    assert sql.count("UNION ALL") == len(tenants["visible"]) - 1
    assert '"workflows_workflow"."definition"' not in sql
    assert '"workflows_workflowversion"."snapshot"' not in sql
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE runs_run")
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)
        plan = cursor.fetchone()[0]
    plan = json.loads(plan) if isinstance(plan, str) else plan
    scans = [node for node in nodes(plan[0]["Plan"]) if node.get("Relation Name") == "runs_run"]
    assert scans and all(node["Node Type"] != "Seq Scan" for node in scans), scans
    read = sum(node["Actual Rows"] * node["Actual Loops"] for node in scans)
    assert read <= len(tenants["visible"]) * 51, read  # of 6,150 runs in those projects


def nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += nodes(child)
    return found


def test_past_the_merge_limit_a_page_is_one_plain_query_with_the_same_rows(
    cast, tenants, monkeypatch
):
    client = client_for(cast.viewer)
    merged = walk(client, f"{URL}?page_size=11")
    monkeypatch.setattr(sparkops_models, "MAX_MERGED_PARTITIONS", 3)
    with CaptureQueriesContext(connection) as queries:
        plain = walk(client, f"{URL}?page_size=11")
    assert "UNION" not in page_query(queries.captured_queries)
    assert [r["id"] for r in plain] == [r["id"] for r in merged]


def test_lists_leave_out_the_big_columns_they_do_not_show(cast):
    run = finished_run(cast)
    RunStep.objects.filter(run=run).update(state={"messages": ["x" * 100]})
    client = client_for(cast.viewer)
    with CaptureQueriesContext(connection) as queries:
        listed = client.get(URL).json()["results"][0]
        shown = client.get(f"{URL}{run.pk}/").json()
        steps = client.get(f"{URL}{run.pk}/steps/").json()
    sql = "\n".join(q["sql"] for q in queries.captured_queries)
    assert '"workflows_workflow"."definition"' not in sql
    assert '"workflows_workflowversion"."snapshot"' not in sql
    assert '"runs_runstep"."state"' not in sql
    # The response shapes are those of before.
    assert set(listed) == {
        *("id", "project", "workflow", "workflow_name", "version", "status", "trigger"),
        *("input", "output", "error", "parent_run", "reuse_succeeded", "chain_depth"),
        "parent_step",  # a child run of a `workflow` step (#16)
        *("created_by", "created_at", "queued_at", "started_at", "finished_at", "deadline"),
        *("duration_ms", "input_tokens", "output_tokens", "cost"),
    }
    assert (listed["workflow_name"], listed["version"]) == (run.workflow.name, 1)
    assert set(shown) == {*listed, "steps"}
    assert shown["steps"][0]["node_id"] == "a" and "input" not in shown["steps"][0]
    assert steps[0]["output"] == 1 and "state" not in steps[0]
