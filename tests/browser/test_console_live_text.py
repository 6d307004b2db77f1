"""A run's page shows the model's text while an agent step runs: the real worker calls the fake
model through the openai SDK, the model streams its answer slowly and holds it half-sent, and
the page (following the run's console stream) shows the half it has, as text, before the step
has finished; the stored events on the stream bring the finished picture, and the panel goes.
Refused a stream, the page polls as before. Screenshot: test-artifacts/."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from runs import services as run_services
from runs.models import RunStep
from runs.tests.test_engine_agents import agent_workflow, make_agent
from sparkops.testing.engine import wait_for_run, wait_until
from sparkops.testing.fake_llm import FakeLLMServer
from tests.browser.conftest import log_in, shot

pytestmark = pytest.mark.usefixtures("engine")

WORDS = ["Otters", "hold", "<b>hands</b>", "while", "they", "sleep", "so", "they", "never", "drift"]
SENT = 6  # chunks sent before the model holds: the role chunk, then five words


def test_an_agent_steps_model_text_shows_while_the_step_runs(
    page, operator, cast, settings, tmp_path
):
    settings.SPARKOPS_STREAM_POLL_SECONDS = 0.05
    settings.VAR_DIR = tmp_path  # the embedded default's delta files: this test's own
    with FakeLLMServer() as llm:
        make_agent(cast, llm, "openai")
        answer = " ".join(WORDS)
        llm.enqueue("openai", {"content": answer, "chunk_delay": 0.05, "hold_after": SENT})
        llm.gate.clear()  # the model call waits until the page follows the run
        llm.hold.clear()
        run = run_services.run_create(
            workflow=agent_workflow(cast), input={"topic": "otters"}, actor=cast.owner
        )
        wait_until(lambda: llm.requests_for("openai"), timeout=30, what="the model call")

        log_in(page, operator)
        page.goto(f"/admin/runs/run/{run.pk}/change/")
        page.locator("#run-deltas[data-state=open]").wait_for(state="attached")
        opened = time.monotonic()  # from here the page polls every 30 s: the stream drives it
        llm.gate.set()

        text = page.locator("#run-deltas .console-delta[data-node=think] .console-delta-text")
        half = " ".join(WORDS[: SENT - 1]) + " "
        expect(text).to_have_text(re.compile("^" + re.escape(half) + "$"), timeout=20_000)
        # The model holds the rest: the step has not finished, its output is not stored.
        step = RunStep.objects.get(run=run, node_id="think")
        assert (step.status, step.output) == ("running", None)
        # The model's text is text, never markup.
        assert text.locator("b").count() == 0
        assert "the model is writing" in page.locator("#run-deltas .console-note").inner_text()
        shot(page, "run-live-text", "#content-main")

        llm.hold.set()
        page.locator("#run-live .console-run[data-status=succeeded]").wait_for(timeout=10_000)
        assert time.monotonic() - opened < 30, "too slow to tell the stream from the 30 s poll"
        expect(page.locator("#run-deltas .console-delta")).to_have_count(0)
    run = wait_for_run(run.pk)
    assert run.status == "succeeded", run.error
    assert run.output == {"answer": {"text": answer}}


def test_refused_a_stream_the_page_polls_as_before(page, operator, cast, settings):
    """No stream slot for the operator (SPARKOPS_STREAMS_PER_USER=0: the stream answers 429):
    the page shows no model text and still follows the run to its end by polling."""
    settings.SPARKOPS_STREAMS_PER_USER = 0
    with FakeLLMServer() as llm:
        make_agent(cast, llm, "openai")
        llm.enqueue("openai", {"content": " ".join(WORDS), "chunk_delay": 0.05})
        llm.gate.clear()
        run = run_services.run_create(
            workflow=agent_workflow(cast), input={"topic": "otters"}, actor=cast.owner
        )
        wait_until(lambda: llm.requests_for("openai"), timeout=30, what="the model call")
        log_in(page, operator)
        page.goto(f"/admin/runs/run/{run.pk}/change/")
        page.locator("#run-deltas[data-state=off]").wait_for(state="attached")
        llm.gate.set()
        page.locator("#run-live .console-run[data-status=succeeded]").wait_for(timeout=30_000)
        assert page.locator("#run-deltas .console-delta").count() == 0
    assert wait_for_run(run.pk).status == "succeeded"
