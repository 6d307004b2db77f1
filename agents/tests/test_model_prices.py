"""Model prices: global rows (staff), per-project overrides (the project's admins), the lookup
that prefers a project's own row, the API, the admin, and a real run priced by an override."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from accounts.tests.factories import UserFactory
from agents import services
from agents.models import ModelPrice
from agents.pricing import price_for
from conftest import client_for
from policies.models import AuditEvent

URL = "/api/v1/model-prices/"


def body(**fields: Any) -> dict[str, Any]:
    return {
        "provider": "openai_compatible",
        "model_pattern": "llama3*",
        "input_per_million": "0.20",
        "output_per_million": "0.60",
        **fields,
    }


def price(actor: Any, project: Any = None, **fields: Any) -> ModelPrice:
    values = body(**fields)
    values["input_per_million"] = Decimal(values["input_per_million"])
    values["output_per_million"] = Decimal(values["output_per_million"])
    return services.model_price_create(actor=actor, project=project, **values)


@pytest.fixture
def staff(db: Any) -> Any:
    return UserFactory(is_staff=True)


# --- who writes what -----------------------------------------------------------------------------


@pytest.mark.django_db
def test_staff_create_global_prices_every_user_reads_them(cast, staff):
    response = client_for(staff).post(URL, body(), format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["project"] is None
    assert (created["input_per_million"], created["output_per_million"]) == ("0.200000", "0.600000")
    seen = cast.client("outsider").get(URL, {"is_global": "true", "search": "llama3"}).json()
    assert [row["id"] for row in seen["results"]] == [created["id"]]
    audit = AuditEvent.objects.get(action="model_price.create")
    assert audit.actor_id == staff.pk and audit.project_id is None


@pytest.mark.django_db
@pytest.mark.parametrize("who", ["owner", "admin", "developer"])
def test_members_cannot_write_global_prices(cast, staff, who):
    client = cast.client(who)
    response = client.post(URL, body(), format="json")
    assert response.status_code == 403
    assert "staff" in response.json()["detail"]
    row = price(staff)
    changed = client.patch(f"{URL}{row.pk}/", {"input_per_million": "0"}, format="json")
    assert changed.status_code == 403
    assert client.delete(f"{URL}{row.pk}/").status_code == 403
    row.refresh_from_db()
    assert row.input_per_million == Decimal("0.2")


@pytest.mark.django_db
def test_project_admins_write_their_projects_overrides(cast):
    admin = cast.client("admin")
    response = admin.post(URL, body(project=str(cast.project.pk)), format="json")
    assert response.status_code == 201, response.content
    pk = response.json()["id"]
    changed = admin.patch(f"{URL}{pk}/", {"output_per_million": "0.9"}, format="json")
    assert changed.status_code == 200, changed.content
    assert changed.json()["output_per_million"] == "0.900000"
    moved = admin.patch(f"{URL}{pk}/", {"project": str(cast.other_project.pk)}, format="json")
    assert moved.status_code == 400  # not a project of theirs: "does not exist"
    # members below admin read it; cannot write
    developer = cast.client("developer")
    assert developer.get(f"{URL}{pk}/").status_code == 200
    changed = developer.patch(f"{URL}{pk}/", {"output_per_million": "1"}, format="json")
    assert changed.status_code == 403
    assert developer.delete(f"{URL}{pk}/").status_code == 403
    refused = developer.post(URL, body(project=str(cast.project.pk)), format="json")
    assert refused.status_code == 403
    # outsiders neither see it nor write into the project
    outsider = cast.client("outsider")
    assert outsider.get(f"{URL}{pk}/").status_code == 404
    assert pk not in [row["id"] for row in outsider.get(URL).json()["results"]]
    into = outsider.post(URL, body(project=str(cast.project.pk)), format="json")
    assert into.status_code == 400 and "project" in into.json()["errors"]
    assert admin.delete(f"{URL}{pk}/").status_code == 204
    assert not ModelPrice.objects.filter(pk=pk).exists()


@pytest.mark.django_db
def test_bad_input_and_duplicates_are_clear_errors(cast):
    admin = cast.client("admin")
    project = str(cast.project.pk)
    negative = admin.post(URL, body(project=project, input_per_million="-1"), format="json")
    assert negative.status_code == 400 and "input_per_million" in negative.json()["errors"]
    blank = admin.post(URL, body(project=project, model_pattern="  "), format="json")
    assert blank.status_code == 400 and "model_pattern" in blank.json()["errors"]
    unknown = admin.post(URL, body(project=project, provider="acme"), format="json")
    assert unknown.status_code == 400 and "provider" in unknown.json()["errors"]
    at = "2026-01-01T00:00:00Z"
    first = admin.post(URL, body(project=project, valid_from=at), format="json")
    assert first.status_code == 201, first.content
    again = admin.post(URL, body(project=project, valid_from=at), format="json")
    assert again.status_code == 409
    assert again.json()["errors"] == {"model_pattern": ["Already priced from this valid_from."]}


# --- the lookup ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_projects_own_row_beats_every_global_row(cast, staff):
    price(staff, model_pattern="llama3-70b", input_per_million="1")  # exact, global
    price(cast.owner, cast.project, model_pattern="llama*", input_per_million="0.5")
    mine = price_for("openai_compatible", "llama3-70b", project_id=cast.project.pk)
    assert mine is not None and mine.input_per_million == Decimal("0.5")
    theirs = price_for("openai_compatible", "llama3-70b", project_id=cast.other_project.pk)
    assert theirs is not None and theirs.input_per_million == Decimal("1")
    assert price_for("openai_compatible", "llama3-70b").input_per_million == Decimal("1")
    assert price_for("openai_compatible", "mistral", project_id=cast.project.pk) is None


@pytest.mark.usefixtures("engine")
def test_an_override_prices_a_real_run(cast):
    from policies.tests.factories import agent_workflow, make_agent
    from runs import services as run_services
    from runs.models import RunEvent
    from sparkops.testing.engine import wait_for_run

    make_agent(cast, model="sim-own", mode="fixed", reply="ok", input_tokens=10, output_tokens=5)
    price(
        cast.admin,
        cast.project,
        provider="simulated",
        model_pattern="sim-own",
        input_per_million="100",
        output_per_million="1000",
    )
    run = run_services.run_create(
        workflow=agent_workflow(cast), input={"topic": "x"}, actor=cast.owner
    )
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.cost == Decimal("0.006")  # 10 * 100 / 1M + 5 * 1000 / 1M
    call = RunEvent.objects.get(run=run, type="llm.call").payload
    assert not call.get("price_unknown")


# --- list cost, admin ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_query_count_is_constant(cast, staff, django_assert_num_queries):
    client = cast.client("viewer")
    price(cast.owner, cast.project, model_pattern="a*")
    # auth user, count, page of prices (the project is an id: no join)
    with django_assert_num_queries(3):
        first = client.get(URL).json()["count"]
    for n in range(10):
        price(cast.owner, cast.project, model_pattern=f"m{n}*")
        price(staff, model_pattern=f"g{n}*")
    with django_assert_num_queries(3):
        assert client.get(URL).json()["count"] == first + 20


@pytest.mark.django_db
def test_operators_keep_prices_in_the_admin(cast):
    operator = Client()
    operator.force_login(UserFactory(is_staff=True, is_superuser=True))
    form = {
        "provider": "openai_compatible",
        "model_pattern": "phi-4*",
        "input_per_million": "0.1",
        "output_per_million": "0.3",
        "valid_from_0": "2026-01-01",
        "valid_from_1": "00:00:00",
    }
    response = operator.post("/admin/agents/modelprice/add/", form)
    assert response.status_code == 302, response.content.decode()[:2000]
    row = ModelPrice.objects.get(model_pattern="phi-4*")
    assert row.project is None and row.output_per_million == Decimal("0.3")
    again = operator.post("/admin/agents/modelprice/add/", form)
    assert again.status_code == 200
    assert b"Already priced from this valid_from." in again.content
    listing = operator.get("/admin/agents/modelprice/", {"q": "phi"})
    assert (
        listing.status_code == 200 and b"phi-4*" in listing.content and b"global" in listing.content
    )
    changed = operator.post(
        f"/admin/agents/modelprice/{row.pk}/change/", {**form, "output_per_million": "0.5"}
    )
    assert changed.status_code == 302
    row.refresh_from_db()
    assert row.output_per_million == Decimal("0.5")
