"""Bad input the security review turned into 500s (issue #12): each answers 400 naming the
field, on PostgreSQL as on SQLite."""

from __future__ import annotations

from urllib.parse import quote

import pytest

pytestmark = pytest.mark.django_db


# --- datetime filters ------------------------------------------------------------------------
# PostgreSQL refuses UTC offsets beyond ±15:59 (Python accepts up to ±23:59), and moving year 1
# to UTC overflows in Python. One check in the filter backend covers every list's filters.

BAD_DATETIMES = [
    "2026-01-01T00:00:00+20:00",
    "2026-01-01T00:00:00-16:00",
    "2026-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00+05:00",
]


@pytest.mark.parametrize("value", BAD_DATETIMES)
@pytest.mark.parametrize(
    ("url", "field"),
    [
        ("/api/v1/runs/", "created_after"),
        ("/api/v1/runs/", "created_before"),
        ("/api/v1/projects/{project}/audit/", "since"),
        ("/api/v1/projects/{project}/audit/", "until"),
    ],
)
def test_a_datetime_filter_out_of_range_is_a_400_naming_it(cast, url, field, value):
    url = url.format(project=cast.project.pk)
    response = cast.client("owner").get(f"{url}?{field}={quote(value)}")
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["type"] == "validation_error"
    assert list(body["errors"]) == [field]


@pytest.mark.parametrize("value", ["2026-01-01T00:00:00+15:59", "2026-01-01T00:00:00-15:59"])
def test_the_widest_offsets_postgresql_takes_still_filter(cast, value):
    response = cast.client("owner").get(f"/api/v1/runs/?created_after={quote(value)}")
    assert response.status_code == 200, response.content


# --- agent base URLs -------------------------------------------------------------------------
# Numeric host forms the resolver reads as loopback (octal, hex, integer, zero-padded,
# full-width digits, IPv4-mapped IPv6): refused on save with a 400 naming `base_url`, and
# refused again by the egress client at call time without connecting.

LOOPBACK_FORMS = [
    "http://0177.0.0.1/v1",
    "http://127.000.000.001/v1",
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/v1",  # full-width digits
    "http://0x7f.1/v1",
    "http://0x7f000001/v1",
    "http://2130706433/v1",
    "http://127.1/v1",
    "http://017700000001/v1",
    "http://[::ffff:127.0.0.1]/v1",
    "http://[::ffff:7f00:1]/v1",
    "http://127.0.0.1./v1",
    "http://0/v1",
    "http://08.0.0.1/v1",  # not valid octal: a resolver would ask DNS
    "http://1.2.3.4.5/v1",
]


def agent_body(cast, **fields):
    return {
        "project": str(cast.project.pk),
        "name": "Local",
        "provider": "openai_compatible",
        "model": "m",
        **fields,
    }


@pytest.mark.parametrize("base_url", LOOPBACK_FORMS)
def test_a_base_url_the_egress_client_refuses_is_a_400_on_create(cast, base_url):
    from agents.models import Agent

    response = cast.client("developer").post(
        "/api/v1/agents/", agent_body(cast, base_url=base_url), format="json"
    )
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == ["base_url"], response.json()
    assert not Agent.objects.exists()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("base_url", LOOPBACK_FORMS[:3] + LOOPBACK_FORMS[8:9])
def test_a_base_url_the_egress_client_refuses_is_a_400_on_update(cast, base_url):
    from agents.tests.factories import AgentFactory

    agent = AgentFactory(
        project=cast.project, provider="openai_compatible", base_url="https://llm.example.com/v1"
    )
    response = cast.client("developer").patch(
        f"/api/v1/agents/{agent.pk}/", {"base_url": base_url}, format="json"
    )
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == ["base_url"], response.json()
    agent.refresh_from_db()
    assert agent.base_url == "https://llm.example.com/v1"


@pytest.mark.parametrize("base_url", LOOPBACK_FORMS)
def test_the_egress_client_refuses_them_at_call_time(base_url):
    from sparkops import egress

    with pytest.raises(egress.EgressDenied):
        egress.check_url(base_url + "/chat/completions")


@pytest.fixture
def connects(monkeypatch):
    """Every socket connect to port 80 (where the base URLs above point), refused and recorded;
    the database and Redis connect as usual."""
    import socket

    attempts = []
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def refused(address):
        if isinstance(address, tuple) and address[1] == 80:
            attempts.append(address)
            raise ConnectionRefusedError(111, "test network: no connections here")

    def connect(sock, address):
        refused(address)
        return real_connect(sock, address)

    def connect_ex(sock, address):
        refused(address)
        return real_connect_ex(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    return attempts


@pytest.mark.parametrize("base_url", LOOPBACK_FORMS)
def test_an_agent_saved_before_the_check_is_refused_at_call_time(cast, connects, base_url):
    from agents.tests.factories import AgentFactory
    from projects import services as project_services

    project_services.secret_set(project=cast.project, actor=cast.owner, name="K", value="sk-1")
    agent = AgentFactory(
        project=cast.project,
        provider="openai_compatible",
        model="m",
        base_url="https://llm.example.com/v1",
        credentials_secret="K",
        settings={"timeout_seconds": 5},
    )
    type(agent).objects.filter(pk=agent.pk).update(base_url=base_url)  # saved before the check
    response = cast.client("developer").post(
        f"/api/v1/agents/{agent.pk}/test", {"prompt": "hi"}, format="json"
    )
    assert 400 <= response.status_code < 500 or response.status_code == 502, response.content
    assert response.json()["type"] != "server_error"
    assert connects == []


# --- NUL characters --------------------------------------------------------------------------
# JSON allows "\u0000"; PostgreSQL's jsonb and text columns refuse it. The API's JSON parser
# refuses it anywhere in a body, naming the field; run_create refuses it in input that comes
# from elsewhere (webhooks, schedules). What tools and models return is stripped on write
# (runs/tests/test_engine_tools.py).


def nul_routes(cast):
    from runs.tests.factories import make_workflow, transform

    workflow = make_workflow(cast.project, cast.owner, [transform("a", 1)])
    project = f"/api/v1/projects/{cast.project.pk}/"
    tool = {"project": str(cast.project.pk), "kind": "http", "name": "t"}
    return [
        ("post", "/api/v1/runs/", {"workflow": workflow.pk, "input": {"q": "a\x00"}}, "input.q"),
        ("post", "/api/v1/runs/", {"workflow": workflow.pk, "input": {"k\x00": 1}}, "input.k"),
        ("patch", "/api/v1/auth/me", {"settings": {"theme": ["dark\x00"]}}, "settings.theme.0"),
        ("patch", project, {"metadata": {"team": "x\x00"}}, "metadata.team"),
        ("patch", project, {"name": "a\x00b"}, "name"),
        (
            "post",
            "/api/v1/tools/",
            {**tool, "config": {"method": "GET", "url": "https://e.example/\x00"}},
            "config.url",
        ),
    ]


@pytest.mark.parametrize("case", range(6))
def test_a_nul_character_in_a_json_body_is_a_400_naming_the_field(cast, case):
    from projects.models import Project
    from runs.models import Run

    method, url, body, field = nul_routes(cast)[case]
    response = getattr(cast.client("owner"), method)(url, body, format="json")
    assert response.status_code == 400, response.content
    errors = response.json()["errors"]
    assert [key.replace("\\u0000", "") for key in errors] == [field], errors
    assert not Run.objects.exists()
    assert Project.objects.get(pk=cast.project.pk).metadata == cast.project.metadata


def test_a_nul_character_in_a_form_field_is_a_400_naming_it(cast):
    # DRF's CharField refuses NUL itself (ProhibitNullCharactersValidator) for form bodies
    response = cast.client("owner").patch(
        f"/api/v1/projects/{cast.project.pk}/", {"name": "a\x00b"}, format="multipart"
    )
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == ["name"]


@pytest.mark.parametrize("fmt", ["multipart", "form"])
def test_an_escaped_nul_in_a_json_field_sent_as_a_form_is_a_400_naming_it(cast, fmt):
    # a JSONField's form input is JSON text, which the field decodes into a NUL
    client = cast.client("owner")
    url = f"/api/v1/projects/{cast.project.pk}/"
    value = '{"team": ["x\\u0000"]}'
    if fmt == "form":
        from urllib.parse import urlencode

        response = client.patch(
            url, urlencode({"metadata": value}), content_type="application/x-www-form-urlencoded"
        )
    else:
        response = client.patch(url, {"metadata": value}, format="multipart")
    assert response.status_code == 400, response.content
    assert list(response.json()["errors"]) == ["metadata.team.0"]


@pytest.mark.django_db(transaction=True)
def test_a_nul_character_in_a_webhook_body_is_refused_and_starts_no_run(cast):
    from rest_framework.test import APIClient

    from runs.models import Run
    from runs.tests.factories import make_workflow, transform
    from workflows import webhooks

    workflow = make_workflow(cast.project, cast.owner, [transform("a", 1)])
    _, token, _ = webhooks.webhook_trigger_create(actor=cast.owner, workflow=workflow, name="hook")
    response = APIClient().post(
        f"/api/v1/hooks/{token}", data=b'{"q": "a\\u0000"}', content_type="application/json"
    )
    assert response.status_code in (400, 422), response.content
    assert list(response.json()["errors"]) == ["input.q"]
    assert not Run.objects.exists()
