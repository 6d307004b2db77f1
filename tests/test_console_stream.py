"""The run page's event stream (`/admin/runs/run/{id}/stream/`): the admin's checks instead of
project membership (a superuser of no project gets it, staff outside the project get 404, the
signed-out are sent to log in), the API stream's limits, and what it relays: the run's stored
events and the `llm.delta` pieces published through runs.deltas, over Redis pub/sub and over the
embedded default's files."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client

from accounts.tests.factories import UserFactory
from conftest import client_for
from projects.models import Role
from projects.tests.factories import MembershipFactory
from runs import deltas, streams
from runs.models import Run
from runs.services.events import event_append
from runs.tests.factories import active_run
from sparkops.testing.processes import RedisServer

# Streams run outside a transaction in production (and close connections when they end).
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("no_stream_left_open"),
]


@pytest.fixture
def run(cast: Any) -> Run:
    return active_run(cast)


def url(run: Run) -> str:
    return f"/admin/runs/run/{run.pk}/stream/"


def signed_in(user: Any) -> Client:
    client = Client()
    client.force_login(user)
    return client


def staff_of(project: Any, role: str = Role.VIEWER) -> Any:
    """A staff member of `project` with the admin's model permissions on runs."""
    user = UserFactory(is_staff=True)
    MembershipFactory(project=project, user=user, role=role)
    user.user_permissions.set(Permission.objects.filter(content_type__app_label="runs"))
    return user


def frames(response: Any, until: str = "end", limit: float = 30.0) -> list[tuple[str, Any]]:
    """(event, data) of each frame until the `until` event, failing (not hanging) after
    `limit` seconds; keep-alives and polls hand control back here."""
    buffer, found, deadline = "", [], time.monotonic() + limit
    for chunk in response.streaming_content:
        buffer += chunk.decode()
        while "\n\n" in buffer:
            frame, buffer = buffer.split("\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in frame.splitlines() if not line.startswith(":")
            )
            if "event" in fields:
                found.append((fields["event"], json.loads(fields["data"])))
                if fields["event"] == until:
                    return found
        if time.monotonic() > deadline:
            response.close()
            raise AssertionError(f"no {until!r} within {limit} s: {found}")
    return found


def opened(client: Client, run: Run, **headers: Any) -> Any:
    """A stream of `run` that has subscribed to the live tail (its first chunk is out)."""
    response = client.get(url(run), HTTP_ACCEPT="text/event-stream", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == "text/event-stream"
    assert next(iter(response.streaming_content)).decode().startswith("retry:")
    return response


def test_a_superuser_of_no_project_gets_the_stream_the_api_refuses(cast: Any, run: Run) -> None:
    boss = UserFactory(is_staff=True, is_superuser=True)
    response = opened(signed_in(boss), run)
    response.close()
    assert client_for(boss).get(f"/api/v1/runs/{run.pk}/stream").status_code == 404


def test_a_staff_member_of_the_project_gets_the_stream(cast: Any, run: Run) -> None:
    opened(signed_in(staff_of(cast.project)), run).close()


def test_staff_outside_the_project_gets_404_and_takes_no_slot(cast: Any, run: Run) -> None:
    before = streams.open_streams()
    response = signed_in(staff_of(cast.other_project)).get(url(run))
    assert response.status_code == 404
    assert streams.open_streams() == before


@pytest.mark.parametrize("who", ["anonymous", "member who is not staff"])
def test_the_signed_out_and_non_staff_are_sent_to_log_in(cast: Any, run: Run, who: str) -> None:
    client = Client() if who == "anonymous" else signed_in(cast.viewer)
    response = client.get(url(run), HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_beyond_a_users_streams_the_page_gets_429_json(cast: Any, run: Run, settings: Any) -> None:
    """The page's streams and the API's take the same slots (SPARKOPS_STREAMS_PER_USER)."""
    settings.SPARKOPS_STREAMS_PER_USER = 1
    member = staff_of(cast.project)
    api = client_for(member).get(f"/api/v1/runs/{run.pk}/stream")
    assert api.status_code == 200
    page = signed_in(member)
    refused = page.get(url(run), HTTP_ACCEPT="text/event-stream")
    assert refused.status_code == 429
    assert refused["Content-Type"] == "application/json"
    assert refused.json()["type"] == "throttled"
    assert int(refused["Retry-After"]) > 0
    api.close()
    opened(page, run).close()


@pytest.fixture(params=["redis", "files"])
def transport(request: Any, settings: Any, tmp_path: Any) -> Iterator[str]:
    """The live tail over Redis pub/sub (REDIS_URL's server, or one of the test's own on the
    embedded default) or over the embedded default's files under VAR_DIR/deltas."""
    server = None
    if request.param == "redis" and not settings.REDIS_URL:
        server = RedisServer()
        server.start()
        settings.REDIS_URL = server.url
    elif request.param == "files":
        settings.REDIS_URL = ""
        settings.VAR_DIR = tmp_path
    try:
        yield request.param
    finally:
        if server is not None:
            server.close()


def test_the_stream_relays_stored_events_and_published_deltas(
    cast: Any, run: Run, settings: Any, transport: str
) -> None:
    settings.SPARKOPS_STREAM_POLL_SECONDS = 0.05
    settings.SPARKOPS_STREAM_MAX_SECONDS = 30  # a broken stream fails the test, not hangs it
    event_append(run.pk, "step.status", {"status": "running"}, node_id="think", attempt=1)
    boss = signed_in(UserFactory(is_staff=True, is_superuser=True))
    response = opened(boss, run)
    try:
        words = ["Otters ", "hold ", "hands."]
        for index, text in enumerate(words):
            piece = {"run": run.pk, "step": 1, "node_id": "think", "attempt": 1, "iteration": 1}
            deltas.publish(run.pk, {**piece, "index": index, "text": text})
        seen = frames(response, until="llm.delta")
        while sum(name == "llm.delta" for name, _ in seen) < len(words):
            seen += frames(response, until="llm.delta")
        event_append(run.pk, "llm.call", {"output_tokens": 3}, node_id="think", attempt=1)
        Run.objects.filter(pk=run.pk).update(status=Run.Status.SUCCEEDED)  # the engine's doing
        seen += frames(response)
    finally:
        response.close()

    names = [name for name, _ in seen]
    # the event stored before the page opened the stream, the one after, then the end
    assert [name for name in names if name != "llm.delta"] == ["step.status", "llm.call", "end"]
    pieces = [data for name, data in seen if name == "llm.delta"]
    assert "".join(p["text"] for p in pieces) == "Otters hold hands."
    assert {(p["node_id"], p["run"]) for p in pieces} == {("think", str(run.pk))}
    assert names.index("llm.call") > max(i for i, n in enumerate(names) if n == "llm.delta")
    # A page that reconnects after the llm.call (Last-Event-ID) gets only the end.
    resumed = opened(boss, run, HTTP_LAST_EVENT_ID="2")
    try:
        assert [name for name, _ in frames(resumed)] == ["end"]
    finally:
        resumed.close()
