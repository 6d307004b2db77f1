"""`llm.delta`: an agent step's streamed answer reaches the run's event stream piece by piece,
through the real SDKs, the fake model server streaming SSE, a real worker and Redis pub/sub
(or the embedded default's file), and is never stored; the recorded `llm.call` follows it with
the tokens and cost the unstreamed answer had."""

from __future__ import annotations

import json
import os
import time
import uuid
from decimal import Decimal

import pytest

from runs import services
from runs.models import Run, RunEvent
from runs.tests.conftest import events_of
from runs.tests.test_engine_agents import agent_workflow, make_agent, priced  # noqa: F401
from sparkops.testing.engine import wait_for_run

pytestmark = pytest.mark.usefixtures("engine", "priced")

ANSWER = "Otters hold hands while they sleep."


def frames(chunks, until="end"):
    """(event, data) of each SSE frame read from `chunks` until the `until` event."""
    buffer, found, deadline = "", [], time.monotonic() + 30
    for chunk in chunks:
        buffer += chunk.decode()
        while "\n\n" in buffer:
            frame, buffer = buffer.split("\n\n", 1)
            fields = dict(
                line.split(": ", 1) for line in frame.splitlines() if not line.startswith(":")
            )
            if fields.get("event") == "llm.delta":
                assert "id" not in fields  # not stored: nothing to resume from
            if "event" in fields:
                found.append((fields["event"], json.loads(fields["data"])))
                if fields["event"] == until:
                    return found
        assert time.monotonic() < deadline, found
    return found


def open_stream(cast, run):
    response = cast.client("viewer").get(f"/api/v1/runs/{run.pk}/stream")
    assert response.status_code == 200
    chunks = iter(response.streaming_content)
    assert next(chunks).decode().startswith("retry:")  # subscribed from here on
    return chunks


def start_held(cast, fake_llm, kind):
    """A run whose model call waits at the fake server's gate until the test opens it."""
    make_agent(cast, fake_llm, kind)
    fake_llm.gate.clear()
    run = services.run_create(
        workflow=agent_workflow(cast), input={"topic": "otters"}, actor=cast.owner
    )
    deadline = time.monotonic() + 30
    while not fake_llm.requests_for(kind):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    return run


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
def test_stream_carries_the_deltas_in_order_then_the_recorded_call(cast, fake_llm, kind, settings):
    settings.SPARKOPS_STREAM_POLL_SECONDS = 0.05
    fake_llm.enqueue(
        kind, {"content": ANSWER, "input_tokens": 40, "output_tokens": 9, "chunk_delay": 0.02}
    )
    run = start_held(cast, fake_llm, kind)
    chunks = open_stream(cast, run)
    fake_llm.gate.set()

    seen = frames(chunks)
    names = [name for name, _ in seen]
    pieces = [data for name, data in seen if name == "llm.delta"]
    assert len(pieces) == 6
    assert "".join(p["text"] for p in pieces) == ANSWER
    assert [p["index"] for p in pieces] == list(range(6))
    assert {(p["node_id"], p["iteration"], p["run"]) for p in pieces} == {("think", 1, str(run.pk))}
    assert names.index("llm.call") > max(i for i, n in enumerate(names) if n == "llm.delta")
    (call,) = [data for name, data in seen if name == "llm.call"]
    assert (call["payload"]["input_tokens"], call["payload"]["output_tokens"]) == (40, 9)
    # 40 input and 9 output tokens at 1000 / 2000 per million
    assert Decimal(call["payload"]["cost"]) == Decimal("0.058")
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    assert run.output == {"answer": {"text": ANSWER}}
    assert (run.input_tokens, run.output_tokens, run.cost) == (40, 9, Decimal("0.058"))
    # the deltas were never stored
    assert not RunEvent.objects.filter(run=run, type="llm.delta").exists()
    assert len(events_of(run, "llm.call")) == 1
    assert fake_llm.requests_for(kind)[0].body["stream"] is True


def test_a_late_joiner_gets_the_stored_events_then_the_live_tail(cast, fake_llm, settings):
    settings.SPARKOPS_STREAM_POLL_SECONDS = 0.05
    words = [f"w{n}" for n in range(20)]
    fake_llm.enqueue("openai", {"content": " ".join(words), "chunk_delay": 0.1})
    run = start_held(cast, fake_llm, "openai")
    early = open_stream(cast, run)
    fake_llm.gate.set()
    # The early client has seen some pieces when the late one joins.
    seen_early: list[dict] = []
    while len(seen_early) < 5:
        seen_early += [d for n, d in frames(early, until="llm.delta") if n == "llm.delta"]
    late = open_stream(cast, run)
    late_seen = frames(late)
    early_rest = frames(early)

    names = [name for name, _ in late_seen]
    stored = [name for name in names if name != "llm.delta"]
    # what happened before it joined, from the database, then the live pieces, then the call
    assert names.index("step.status") < names.index("llm.delta")
    assert names.index("llm.call") > max(i for i, n in enumerate(names) if n == "llm.delta")
    assert stored[-1] == "end"
    late_pieces = [d["index"] for name, d in late_seen if name == "llm.delta"]
    # only pieces sent after it joined, in order, through the last one
    assert late_pieces == list(range(late_pieces[0], 20))
    assert late_pieces[0] >= 5
    early_pieces = [d["index"] for d in seen_early] + [
        d["index"] for name, d in early_rest if name == "llm.delta"
    ]
    assert early_pieces == list(range(20))
    assert Run.objects.get(pk=run.pk).output == {"answer": {"text": " ".join(words)}}
    assert not RunEvent.objects.filter(run=run, type="llm.delta").exists()


def test_embedded_default_without_redis_streams_through_files(cast, fake_llm, settings, tmp_path):
    """No REDIS_URL: the worker (a thread of this process in tests, sharing these settings)
    appends to a file the stream reads."""
    settings.SPARKOPS_STREAM_POLL_SECONDS = 0.05
    settings.REDIS_URL = ""
    settings.VAR_DIR = tmp_path
    fake_llm.enqueue("anthropic", {"content": ANSWER, "chunk_delay": 0.02})
    run = start_held(cast, fake_llm, "anthropic")
    chunks = open_stream(cast, run)
    fake_llm.gate.set()

    seen = frames(chunks)
    assert "".join(d["text"] for name, d in seen if name == "llm.delta") == ANSWER
    assert (tmp_path / "deltas" / f"{run.pk}.jsonl").exists()


def test_the_sweeper_prunes_delta_files_no_stream_needs(cast, fake_llm, settings, tmp_path):
    """The embedded default's files: an active run's stays (until a day old), a finished
    run's goes once untouched for SPARKOPS_DELTA_FILE_GRACE, a deleted run's too."""
    settings.REDIS_URL = ""
    settings.VAR_DIR = tmp_path
    settings.SPARKOPS_DELTA_FILE_GRACE = 60
    folder = tmp_path / "deltas"
    folder.mkdir()

    def aged(name, seconds):
        path = folder / f"{name}.jsonl"
        path.write_text('{"text": "x"}\n')
        then = time.time() - seconds
        os.utime(path, (then, then))
        return path

    fake_llm.enqueue("openai", {"content": ANSWER, "chunk_delay": 0.01})
    run = start_held(cast, fake_llm, "openai")  # active: its model call waits at the gate
    mine = aged(run.pk, 120)
    gone = aged(uuid.uuid4(), 120)  # a run deleted meanwhile
    old = aged(uuid.uuid4(), 2 * 86400)
    assert services.sweep()["delta_files_pruned"] == 2
    assert mine.exists() and not gone.exists() and not old.exists()

    fake_llm.gate.set()
    assert wait_for_run(run.pk).status == "succeeded"
    assert mine.exists()  # the worker appended to it just now: within the grace
    assert services.sweep()["delta_files_pruned"] == 0
    then = time.time() - 61
    os.utime(mine, (then, then))
    assert services.sweep()["delta_files_pruned"] == 1
    assert not mine.exists()


@pytest.mark.parametrize(
    ("agent_stream", "setting", "streamed"),
    [(False, True, False), (None, False, False), (True, False, True)],
)
def test_streaming_can_be_turned_off_per_agent_or_for_all(
    cast, fake_llm, settings, agent_stream, setting, streamed
):
    """`settings.stream` on the agent wins over SPARKOPS_STREAM_DELTAS (read by the worker at
    the call); off, the SDK is called without `stream` and no `llm.delta` reaches a client,
    while the recorded answer, tokens and cost are the streamed call's."""
    settings.SPARKOPS_STREAM_POLL_SECONDS = 0.05
    settings.SPARKOPS_STREAM_DELTAS = setting
    agent_settings = {} if agent_stream is None else {"stream": agent_stream}
    make_agent(cast, fake_llm, "openai", settings=agent_settings)
    fake_llm.enqueue(
        "openai", {"content": ANSWER, "input_tokens": 40, "output_tokens": 9, "chunk_delay": 0.01}
    )
    fake_llm.gate.clear()
    run = services.run_create(
        workflow=agent_workflow(cast), input={"topic": "otters"}, actor=cast.owner
    )
    deadline = time.monotonic() + 30
    while not fake_llm.requests_for("openai"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    chunks = open_stream(cast, run)
    fake_llm.gate.set()
    names = [name for name, _ in frames(chunks)]

    assert ("llm.delta" in names) is streamed
    assert bool(fake_llm.requests_for("openai")[0].body.get("stream")) is streamed
    run = wait_for_run(run.pk)
    assert run.status == "succeeded"
    assert run.output == {"answer": {"text": ANSWER}}
    assert (run.input_tokens, run.output_tokens, run.cost) == (40, 9, Decimal("0.058"))


def test_the_stream_setting_must_be_a_boolean(cast):
    response = cast.client("owner").post(
        "/api/v1/agents/",
        {
            "project": str(cast.project.pk),
            "name": "Chatty",
            "provider": "simulated",
            "model": "sim-1",
            "settings": {"stream": "no"},
        },
        format="json",
    )
    assert response.status_code == 400
    assert "stream must be true or false." in str(response.json())


def test_the_pieces_go_through_one_redis_client_per_process(settings):
    """Not one per thread: under the steps worker's gevent pool a thread-local is a greenlet
    local, and every model call opened a Redis connection of its own."""
    import threading

    from runs import deltas

    settings.REDIS_URL = "redis://127.0.0.1:6379/15"
    seen = []
    threads = [threading.Thread(target=lambda: seen.append(deltas._redis())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(client) for client in seen}) == 1
    assert seen[0] is deltas._redis()
