"""Stream limits in process (tests/test_stream_limits.py runs them under gunicorn): slots are
given back however a response ends, the per-process cap follows the server's threads, streams
end after their lifetime, and a Redis outage lifts only the per-user cap."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from django.db import transaction
from rest_framework.exceptions import Throttled

from runs import streams
from runs.models import Run, RunEvent
from runs.tests.factories import active_run
from sparkops import cache as cache_state
from sparkops.testing.engine import wait_until
from sparkops.testing.processes import RedisServer
from sparkops.testing.scraping import delta, scrape

# Streams run outside a transaction in production (and close connections when they end).
# /metrics is closed without a token; `scrape` sends the one `metrics_token` sets.
pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("metrics_token", "no_stream_left_open"),
]


@pytest.fixture
def run(cast: Any) -> Run:
    return active_run(cast)


def url(run: Run) -> str:
    return f"/api/v1/runs/{run.pk}/stream"


def test_a_response_closed_unread_gives_its_slot_back(cast: Any, run: Run, settings: Any) -> None:
    settings.SPARKOPS_STREAMS_PER_USER = 1
    viewer = cast.client("viewer")
    first = viewer.get(url(run))
    assert first.status_code == 200
    # What an EventSource sends: the error is JSON all the same.
    refused = viewer.get(url(run), HTTP_ACCEPT="text/event-stream")
    assert refused.status_code == 429
    assert refused["Content-Type"] == "application/json"
    assert refused.json()["type"] == "throttled"
    assert int(refused["Retry-After"]) > 0
    first.close()  # what the WSGI server does when the client is gone
    again = viewer.get(url(run))
    assert again.status_code == 200
    again.close()


def test_an_outsider_gets_404_and_takes_no_slot(cast: Any, run: Run, settings: Any) -> None:
    settings.SPARKOPS_STREAMS_PER_USER = 1
    outsider = cast.client("outsider")
    before = streams.open_streams()
    for _ in range(2):
        response = outsider.get(url(run), HTTP_ACCEPT="text/event-stream")
        assert response.status_code == 404
        assert response.json()["type"] == "not_found"
    assert streams.open_streams() == before
    streams.acquire(cast.outsider.pk).release()  # their one slot is still free


def test_refusals_are_counted_by_limit(cast: Any, run: Run, settings: Any) -> None:
    settings.SPARKOPS_STREAMS_PER_USER = 1
    settings.SPARKOPS_STREAMS_PER_PROCESS = 10_000  # whatever earlier tests left open
    before = scrape()
    held = cast.client("viewer").get(url(run))
    try:
        assert cast.client("viewer").get(url(run)).status_code == 429
        # The process full (set to none, not counted from the streams other tests may have
        # open: one of those ending meanwhile would free a slot).
        settings.SPARKOPS_STREAMS_PER_PROCESS = 0
        developer = cast.client("developer").get(url(run))
        developer.close()
        assert developer.status_code == 429
        assert "server" in developer.json()["detail"]
    finally:
        held.close()
    after = scrape()
    assert delta(before, after, "sparkops_streams_refused_total", limit="user") == 1
    assert delta(before, after, "sparkops_streams_refused_total", limit="process") == 1


@pytest.mark.parametrize(
    ("threads", "configured", "limit"),
    [(32, 16, 16), (32, 32, 24), (4, 16, 3), (2, 16, 1), (1, 16, 0), (None, 16, 16)],
)
def test_the_process_cap_leaves_a_quarter_of_the_threads(
    settings: Any, monkeypatch: pytest.MonkeyPatch, threads: Any, configured: int, limit: int
) -> None:
    settings.SPARKOPS_STREAMS_PER_PROCESS = configured
    monkeypatch.setattr(streams._process, "threads", threads)
    assert streams.process_limit() == limit


def read_all(response: Any, limit: float = 30.0) -> str:
    """The whole stream, failing (not hanging) if it has not ended after `limit` seconds;
    keep-alives every 0.1 s hand control back here."""
    deadline, text = time.monotonic() + limit, ""
    for chunk in response.streaming_content:
        text += chunk.decode()
        if time.monotonic() > deadline:
            response.close()
            raise AssertionError(f"the stream did not end: {text[-500:]}")
    return text


def test_a_stream_ends_after_its_lifetime_and_resumes(cast: Any, run: Run, settings: Any) -> None:
    settings.SPARKOPS_STREAM_MAX_SECONDS = 0.3
    settings.SPARKOPS_STREAM_KEEPALIVE_SECONDS = 0.1
    settings.SPARKOPS_STREAM_POLL_SECONDS = 0.02
    for seq in (1, 2):
        RunEvent.objects.create(run=run, seq=seq, type="run.status", payload={"n": seq})
    # The run is still running: without a lifetime this would never end.
    text = read_all(cast.client("viewer").get(url(run)))
    assert "id: 1\n" in text and "id: 2\n" in text
    assert "event: end" not in text
    RunEvent.objects.create(run=run, seq=3, type="run.status", payload={"n": 3})
    resumed = cast.client("viewer").get(url(run), HTTP_LAST_EVENT_ID="2")
    text = read_all(resumed)
    assert "id: 3\n" in text and "id: 2\n" not in text


def test_a_redis_outage_lifts_the_user_cap_not_the_process_cap(
    cast: Any, run: Run, settings: Any
) -> None:
    server = RedisServer()
    server.start()
    settings.CACHES = {
        "default": {"BACKEND": "sparkops.cache.ResilientRedisCache", "LOCATION": server.url}
    }
    settings.SPARKOPS_STREAMS_PER_USER = 1
    settings.SPARKOPS_STREAMS_PER_PROCESS = streams.open_streams() + 3
    cache_state.reset()
    opened = []
    try:
        server.stop()
        viewer = cast.client("viewer")
        opened = [viewer.get(url(run)) for _ in range(4)]
        assert [r.status_code for r in opened] == [200, 200, 200, 429]
        assert "server" in opened[3].json()["detail"]
    finally:
        for response in opened:
            response.close()
        server.close()
        cache_state.reset()


def test_slots_of_a_dead_process_expire(cast: Any, settings: Any) -> None:
    settings.SPARKOPS_STREAMS_PER_USER = 1
    settings.SPARKOPS_STREAM_KEEPALIVE_SECONDS = 0.1  # slots live 3 s without a refresh
    streams.acquire(cast.viewer.pk)  # a process takes the slot, then dies: never released
    with streams._process.lock:  # its process count went with it
        streams._process.open -= 1
    with pytest.raises(Throttled):
        streams.acquire(cast.viewer.pk)

    def acquired() -> Any:
        try:
            return streams.acquire(cast.viewer.pk)
        except Throttled:
            return None

    slot = wait_until(acquired, timeout=20, interval=0.2, what="the dead slot to expire")
    slot.release()


def test_the_worker_warns_when_its_threads_lower_the_cap(
    settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings.SPARKOPS_STREAMS_PER_PROCESS = 32
    monkeypatch.setattr(streams._process, "threads", None)
    with caplog.at_level(logging.WARNING, logger="runs.streams"):
        streams.set_server_threads(32)
    assert streams.process_limit() == 24
    assert "limited to 24 per process" in caplog.text


def test_a_stream_closed_inside_another_transaction_leaves_it_working(
    cast: Any, run: Run, settings: Any
) -> None:
    """An abandoned stream is closed whenever the garbage collector gets to it, in whatever
    thread runs then, perhaps in the middle of that one's transaction: the transaction goes on."""
    settings.SPARKOPS_STREAM_POLL_SECONDS = 0.01
    response = cast.client("viewer").get(url(run))
    chunks = iter(response.streaming_content)
    assert next(chunks).decode().startswith("retry:")
    RunEvent.objects.create(run=run, seq=1, type="run.status", payload={})
    assert b"event: run.status" in next(chunks)
    with transaction.atomic():
        workflow = Run.objects.get(pk=run.pk).workflow
        # What the collector does to an abandoned stream, whenever it runs: the generator is
        # closed (here the test client's wrapper, which closes the response and the view's).
        response._iterator.close()
        workflow.name = "renamed"
        workflow.save(update_fields=["name"])
    assert Run.objects.get(pk=run.pk).workflow.name == "renamed"


def test_the_default_cap_is_lowered_quietly(
    settings: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """`make run`'s gunicorn has 16 threads: the default 16 streams become 12 with no warning
    on every start (only an operator's own setting lowered is worth one)."""
    settings.SPARKOPS_STREAMS_PER_PROCESS = None
    monkeypatch.setattr(streams._process, "threads", None)
    assert streams.process_limit() == 16
    with caplog.at_level(logging.INFO, logger="runs.streams"):
        streams.set_server_threads(16)
    assert streams.process_limit() == 12
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
